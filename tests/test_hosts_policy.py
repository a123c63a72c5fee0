"""The host table (bounds, history, waiting) and the policy (scores, errors)."""

from __future__ import annotations

import threading

import pytest

from fingerprintd.hosts import AddressError, host_table, normalize_ip
from fingerprintd.matcher import PerFingerprint
from fingerprintd.nat import NatRecord, Uptime
from fingerprintd.policy import PolicyError, load_policy, parse_policy
from tests.conftest import ROOT, assert_fails_at
from tests.observed import observe

POLICY = load_policy(ROOT / "signatures" / "policy.toml")


def same_syn(got, obs) -> bool:
    """The table's record of a SYN carries what a lookup answers with: addresses, ports, time, TTL, verdict."""
    want, have = obs.pkt, got.pkt
    return (got.mod, got.linktype, got.fp) == (obs.mod, obs.linktype, obs.fp) and \
        (have.ts, have.src, have.sport, have.dst, have.dport, have.ttl, have.ip_ver) == \
        (want.ts, want.src, want.sport, want.dst, want.dport, want.ttl, want.ip_ver) and got.server == obs.server


@pytest.mark.parametrize("text,want", [
    ("192.0.2.1", "192.0.2.1"), ("::ffff:192.0.2.1", "192.0.2.1"), ("IPv6:2001:db8::1", "2001:db8::1"),
    ("ipv6:::ffff:10.0.0.1", "10.0.0.1"), ("[2001:db8::1]", "2001:db8::1"), (" 2001:DB8::1 ", "2001:db8::1"),
])
def test_normalize_ip(text, want):
    import ipaddress

    assert normalize_ip(text) == ipaddress.ip_address(want).packed


@pytest.mark.parametrize("bad", ["", "1.2.3", "example.org", "1.2.3.4:25", "IPv6:", "::g"])
def test_normalize_ip_refuses(bad):
    with pytest.raises(AddressError):
        normalize_ip(bad)


def test_connection_and_latest_lookup():
    table = host_table()
    a = observe("linux", sport=40001)
    b = observe("win7", sport=40002, ts=1_700_000_001)
    table.add(a)
    table.add(b)
    ip = normalize_ip("203.0.113.7")
    assert same_syn(table.lookup(ip, 40001)[0], a)
    assert same_syn(table.lookup(ip, 40002)[0], b) and not same_syn(table.lookup(ip, 40002)[0], a)
    obs, host = table.lookup(ip, 0)
    assert same_syn(obs, b) and host.count == 2 and host.host_changed and host.os_names == ["Linux", "Windows"]
    assert len(host.signatures) == 2 and host.last_change == b.pkt.ts
    assert table.lookup(ip, 40003)[0] is None and table.lookup(ip, 40003)[1].count == 2
    assert table.lookup(normalize_ip("198.51.100.1"), 0) == (None, None)


def test_a_syn_keeps_the_host_records_it_set_off():
    """A lookup answers with the SYN's host-change and uptime records (nat.py), when it had any."""
    table = host_table()
    plain = observe("linux", sport=40001)
    rec, up = NatRecord("host change", "ttl tcp", (1, 0, 0, 0)), Uptime(90, 49, 100.0)
    marked = observe("win7", sport=40002)._replace(nat=rec, uptime=up)
    table.add(plain)
    table.add(marked)
    ip = plain.pkt.src
    got_plain, got_marked = table.lookup(ip, 40001)[0], table.lookup(ip, 40002)[0]
    assert (got_plain.nat, got_plain.uptime) == (None, None)
    assert (got_marked.nat, got_marked.uptime) == (rec, up) and same_syn(got_marked, marked)
    assert table.lookup(ip, 0)[0].nat == rec  # the latest from the address


def test_host_reads_the_history_without_counting_a_lookup():
    """HostTable.host (the Redis publisher's read): the address's history, not counted, for a host seen once
    (kept as its Syn) and for one seen twice."""
    table = host_table()
    once, first, second = observe("linux", "198.51.100.3"), observe("linux", sport=40001), observe("win7", sport=40002)
    for obs in (once, first, second):
        table.add(obs)
    seen_once, seen_twice = table.host(once.pkt.src), table.host(first.pkt.src)
    assert seen_once.count == 1 and seen_once.os_names == ["Linux"] and same_syn(seen_once.latest, once)
    assert seen_twice.count == 2 and seen_twice.os_names == ["Linux", "Windows"] and same_syn(seen_twice.latest, second)
    assert table.host(normalize_ip("192.0.2.99")) is None
    assert (table.lookups, table.hits) == (0, 0)
    table.lookup(first.pkt.src)
    assert (table.lookups, table.hits) == (1, 1)


def test_a_written_again_entry_is_the_newest():
    """The LRU order under a bound: a connection or host written again moves to the back, so the next
    eviction takes the entry written longest ago instead."""
    table = host_table(max_connections=2, max_hosts=2)
    a, b = observe("linux", "198.51.100.1", 40001), observe("linux", "198.51.100.2", 40002)
    table.add_batch([a, b, a._replace(pkt=a.pkt._replace(ts=a.pkt.ts + 1))])  # a again, in the same batch
    table.add(observe("linux", "198.51.100.4", 40004))  # evicts b (connection and host), not a
    assert table.lookup(a.pkt.src, 40001)[0] is not None and table.lookup(a.pkt.src)[1].count == 2
    assert table.lookup(b.pkt.src, 40002) == (None, None)


def test_ipv6_and_ipv4_compatible_addresses_are_different_entries():
    """Entries are keyed by the address as a number: ::203.0.113.7 must not be 203.0.113.7."""
    table = host_table()
    v4 = observe("linux", sport=40000)
    compat = bytes(12) + v4.pkt.src
    v6 = v4._replace(pkt=v4.pkt._replace(src=compat, ip_ver=6), fp=observe("win7").fp)
    table.add(v4)
    table.add(v6)
    got4, host4 = table.lookup(v4.pkt.src, 40000)
    got6, host6 = table.lookup(compat, 40000)
    assert same_syn(got4, v4) and same_syn(got6, v6)
    assert (got4.pkt.src, got4.pkt.ip_ver, got6.pkt.src, got6.pkt.ip_ver) == (v4.pkt.src, 4, compat, 6)
    assert host4.count == host6.count == 1 and host4.os_names == ["Linux"] and host6.os_names == ["Windows"]


def test_flood_stays_within_bound_oldest_go_first():
    table = host_table(max_connections=1000, max_hosts=500)
    base = observe("linux")
    for i in range(20_000):
        src = bytes([10, i >> 16 & 255, i >> 8 & 255, i & 255])
        table.add(base._replace(pkt=base.pkt._replace(src=src, sport=1024 + i % 60000)))
    sizes = table.sizes()
    assert sizes == {"connections": 1000, "hosts": 500}
    newest = bytes([10, 0, 78, 31])  # i = 19999
    assert table.lookup(newest, 1024 + 19999 % 60000)[0] is not None
    assert table.lookup(bytes([10, 0, 0, 1]), 0) == (None, None)


def test_entries_expire():
    now = [0.0]
    table = host_table(ttl=600, timer=lambda: now[0])
    obs = observe("linux")
    table.add(obs)
    now[0] = 599
    assert same_syn(table.lookup(obs.pkt.src, obs.pkt.sport)[0], obs)
    now[0] = 601
    assert table.lookup(obs.pkt.src, obs.pkt.sport) == (None, None)


def test_lookup_waits_for_a_syn_not_captured_yet():
    table = host_table()
    obs = observe("linux")
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(table.lookup(obs.pkt.src, obs.pkt.sport, wait=60.0)),
                              daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got  # still waiting: nothing has arrived
    table.add(obs)  # the SYN arrives from this thread
    waiter.join(20)  # woken by the arrival, long before its own 60 s: a hang guard, not a speed goal
    assert not waiter.is_alive()
    found = got[0][0]
    assert same_syn(found, obs)
    # Nothing arrives for another port: the wait ends, empty-handed.
    empty = threading.Thread(target=lambda: got.append(table.lookup(obs.pkt.src, 1, wait=0.1)), daemon=True)
    empty.start()
    empty.join(20)
    assert not empty.is_alive() and got[1][0] is None


@pytest.mark.parametrize("stack,score,rules,mail_class", [
    # Without the MTA's names (tests/test_scoring.py has them): only what the stack says alone.
    ("winxp", 2.3, ("windows-xp",), "desktop"), ("win7", 0.5, ("desktop-no-context",), "desktop"),
    ("unknown", 0.0, (), "unknown"), ("freebsd", 0.0, (), "server"),
    ("linux", 0.0, (), "server"), ("nmap", 2.5, ("scanner",), "scanner"),
    ("android", 0.5, ("mobile",), "mobile"), ("masscan", 2.5, ("scanner",), "scanner"),
])
def test_default_policy(stack, score, rules, mail_class):
    obs = observe(stack)
    assert obs.fp.mail_class == mail_class
    v = POLICY.verdict(obs.fp, obs.pkt.src)
    assert (v.score, v.rules, v.action) == (score, rules, "tag")
    assert v.header == (f"{obs.fp.os_text}; dist: {obs.fp.dist}; link: {obs.fp.link or '???'}; "
                        f"class: {mail_class}; rules: {','.join(rules) or 'none'}; id: {v.key}; score: {score:g}")
    assert v.key.endswith(f"/{mail_class}/nocontext")


def test_trusted_networks_score_nothing():
    obs = observe("winxp", src="192.168.1.20")
    v = POLICY.verdict(obs.fp, obs.pkt.src)
    assert (v.score, v.action, v.trusted) == (0.0, "accept", True)
    assert v.header.startswith("Windows XP; dist: ")


@pytest.mark.parametrize("ip,trusted", [("127.0.0.1", True), ("10.1.2.3", True), ("172.31.0.1", True),
                                        ("172.32.0.1", False), ("192.0.2.1", False), ("::1", True),
                                        ("fd00::5", True), ("2001:db8::1", False), ("::ffff:10.0.0.1", True)])
def test_trusted_network_membership(ip, trusted):
    assert POLICY.is_trusted(normalize_ip(ip)) is trusted


def test_rules_add_up_and_the_severest_action_wins():
    policy = parse_policy("""
[[rule]]
name = "far"
dist_min = 10
score = 0.5
action = "tempfail"
[[rule]]
name = "win"
os_class = "^win$"
generic = false
score = 1.0
[[rule]]
name = "never"
os_name = "^Linux$"
score = 9
action = "reject"
""")
    obs = observe("win7")
    v = policy.verdict(obs.fp, obs.pkt.src)
    assert (v.score, v.rules, v.action) == (1.5, ("far", "win"), "tempfail")
    near = obs.fp._replace(dist=3)
    assert policy.verdict(near, obs.pkt.src).rules == ("win",)


def test_rules_on_mail_classes():
    policy = parse_policy("""
[[rule]]
name = "handheld_or_box"
mail_class = ["mobile", "embedded"]
score = 2
[[rule]]
name = "desk"
mail_class = "desktop"
score = 1
""")
    scored = {s: policy.verdict(observe(s).fp, observe(s).pkt.src) for s in ("android", "win7", "linux", "unknown")}
    assert {s: (v.score, v.rules) for s, v in scored.items()} == {
        "android": (2.0, ("handheld_or_box",)), "win7": (1.0, ("desk",)), "linux": (0.0, ()), "unknown": (0.0, ())}
    assert "; class: mobile; rules: handheld_or_box; id: " in scored["android"].header
    assert scored["android"].header.endswith("; score: 2")


def test_per_fingerprint_makes_once_per_object_within_its_bound():
    made = []
    memo = PerFingerprint(lambda fp: made.append(fp) or len(made), size=2)
    a = observe("win7").fp
    twin = a._replace()  # equal, but another object: not the matcher's
    assert (memo(a), memo(a), memo(twin)) == (1, 1, 2)
    assert made == [a, twin] and made[1] is twin
    b = observe("linux").fp
    assert memo(b) == 3 and len(memo._memo) == 1  # full: cleared, then b
    assert memo(a) == 4


@pytest.mark.parametrize("text,line,needle", [
    ("[settings]\ntrusted_networks = ['not-a-net']\n", 2, "not a network"),
    ("[[rule]]\nname = 'a'\nos_name = '('\n", 3, "bad regular expression"),
    ("[[rule]]\nname = 'a'\n\n[[rule]]\nname = 'b'\nscore = 'high'\n", 6, "score must be a number"),
    ("[[rule]]\nname = 'a'\naction = 'drop'\n", 3, "action must be one of"),
    ("[[rule]]\nname = 'a'\nos = 'Linux'\n", 3, "unknown rule key 'os'"),
    ("[[rule]]\nscore = 1\n", 1, "every rule needs a name"),
    ("[settings]\nreject_message = 'go away'\n", 2, "SMTP reply"),
    ("[rules]\n", 1, "unknown table"),
    ("x = [\n", 1, "Invalid value"),
    ("[[rule]]\nname = 'a'\ndist_min = -1\n", 3, "whole number"),
    ("[[rule]]\nname = 'a'\nmail_class = 'laptop'\n", 3, "mail_class must be one of server, desktop"),
    ("[[rule]]\nname = 'a'\nmail_class = []\n", 3, "mail_class must be one of"),
])
def test_policy_errors_name_the_line(text, line, needle):
    assert_fails_at(lambda: parse_policy(text, "my.toml"), PolicyError, "my.toml", line, needle)
