"""Every memory bound holds: fed more than the bound, each structure stays at it.

A flood of spoofed sources or of junk option bytes must not grow memory past
these: p0f's flow books in replay (flows and hosts), the service's recent-SYN
book, the host table (connections, hosts, their expiry, the per-host
history), the matcher's verdict cache, the per-verdict memo, and the option
memo of the packet parser.  Sizes are read with len() on the structures.
"""

from __future__ import annotations

import struct

import pytest
from scapy.all import IP, TCP, Ether  # type: ignore[attr-defined]

from fingerprintd import packet
from fingerprintd.engine import Engine, live_books, p0f_books
from fingerprintd.flows import FlowLimits
from fingerprintd.hosts import MAX_SIGNATURES_PER_HOST, host_table
from fingerprintd.matcher import Matcher, PerFingerprint
from fingerprintd.mode import FIXED
from fingerprintd.packet import LINK_ETHERNET, Packet
from fingerprintd.signatures import load
from tests.conftest import OUR_DB

DB = load(OUR_DB)
T0 = 1_700_000_000
_TEMPLATE = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src="10.0.0.1", dst="192.0.2.25", ttl=57, flags="DF")
                  / TCP(sport=1024, dport=25, flags="S", seq=1, window=29200,
                        options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                                 ("WScale", 7)]))


def syn_frame(n: int, sport: int = 40000, win: int = 29200, seq: int = 1) -> bytes:
    """A Linux SYN to port 25 from 10.x.y.z (source n), sport, window and ISN patched in."""
    frame = bytearray(_TEMPLATE)
    frame[26:30] = struct.pack("!I", 0x0A000000 + n)
    struct.pack_into("!HHI", frame, 34, sport, 25, seq)
    struct.pack_into("!H", frame, 48, win)
    return bytes(frame)


def syn(n: int, sport: int = 40000, win: int = 29200, seq: int = 1, ts: float = T0) -> Packet:
    pkt = packet.parse(syn_frame(n, sport, win, seq), LINK_ETHERNET, ts)
    assert isinstance(pkt, Packet), pkt
    return pkt


def feed(engine: Engine, frames: list[bytes], sec: int = T0) -> list:
    out = []
    for i in range(0, len(frames), 500):
        out += engine.feed_batch([(sec, 0, f) for f in frames[i:i + 500]], LINK_ETHERNET)
    return out


# --- p0f's flow books (replay) ------------------------------------------------------------------

def test_flow_books_prune_hosts_at_their_cap():
    """p0f frees the oldest idle host when its host table is over the cap (process.c)."""
    engine = Engine(Matcher(DB), limits=FlowLimits(max_conn=50, max_hosts=100))
    assert len(feed(engine, [syn_frame(n) for n in range(2000)])) == 2000
    books = engine.flows
    assert isinstance(books, type(p0f_books()))  # p0f's books, of the implementation selected
    assert len(books.hosts) <= 100 + 1  # p0f checks before adding: one over at most
    assert len(books.flows) <= 50 + 1


def test_flow_books_prune_flows_at_their_cap():
    engine = Engine(Matcher(DB), limits=FlowLimits(max_conn=50, max_hosts=100_000))
    feed(engine, [syn_frame(n) for n in range(2000)])
    books = engine.flows
    assert isinstance(books, type(p0f_books()))  # p0f's books, of the implementation selected
    assert len(books.flows) <= 50 + 1
    # Pruned flows release their hosts (use counts), so expiry can free them later.
    assert sum(h.use_cnt for h in books.hosts.values()) == 2 * len(books.flows)


def test_recent_syns_keeps_only_the_last_size_syns():
    books = live_books(size=100, hosts=50)
    engine = Engine(Matcher(DB), flows=books)
    assert len(feed(engine, [syn_frame(n, seq=7) for n in range(1000)])) == 1000
    assert len(books.seen) == 100
    assert len(books.hosts) == 50  # the host-change book (nat.py) too
    # The newest are remembered (their retransmissions skipped), the oldest forgotten.
    again = feed(engine, [syn_frame(999, seq=7), syn_frame(0, seq=7)])
    assert [o.pkt.src for o in again] == [bytes([10, 0, 0, 0])]
    assert engine.skipped["retransmitted-syn"] == 1 and len(books.seen) == 100


# --- the host table ----------------------------------------------------------------------------

def _observations(count: int, hosts: int, seconds: float = 0.0) -> list:
    """`count` SYNs spread over `hosts` sources, one new connection (port) each."""
    engine = Engine(Matcher(DB), flows=live_books(size=10))
    return feed(engine, [syn_frame(i % hosts, sport=1024 + i // hosts) for i in range(count)])


@pytest.mark.parametrize("max_connections,max_hosts,count,hosts,want", [
    (100, 10_000, 2000, 10, {"connections": 100, "hosts": 10}),  # connections at their cap
    (10_000, 50, 2000, 2000, {"connections": 2000, "hosts": 50}),  # hosts at theirs
    (100, 50, 2000, 2000, {"connections": 100, "hosts": 50}),
])
def test_host_table_caps(max_connections, max_hosts, count, hosts, want):
    table = host_table(max_connections=max_connections, max_hosts=max_hosts)
    for obs in _observations(count, hosts):
        table.add(obs)
    assert (len(table.connections), len(table.hosts)) == (want["connections"], want["hosts"])
    assert table.sizes() == want


def test_host_table_expires_entries_while_writing():
    """A flood that stops being looked at still ages out: writes sweep the expired front."""
    now = [0.0]
    table = host_table(ttl=600, timer=lambda: now[0])
    obs = _observations(1300, 1300)
    for o in obs[:1000]:
        table.add(o)
    now[0] = 601.0
    for o in obs[1000:]:  # 300 writes: at least one bulk sweep (every 256)
        table.add(o)
    assert (len(table.connections), len(table.hosts)) == (300, 300)
    assert table.lookup(obs[0].pkt.src, obs[0].pkt.sport) == (None, None)
    now[0] = 1202.0
    assert table.sizes() == {"connections": 0, "hosts": 0}


def test_host_history_is_bounded():
    """One address with ever-new stacks (a NAT, or an attacker) keeps MAX_SIGNATURES_PER_HOST of them."""
    engine = Engine(Matcher(DB), flows=live_books())
    table = host_table()
    wins = [29200 + 8 * i for i in range(3 * MAX_SIGNATURES_PER_HOST)]
    for i, win in enumerate(wins):
        for obs in feed(engine, [syn_frame(1, sport=2000 + i, win=win)]):
            table.add(obs)
    _, host = table.lookup(bytes([10, 0, 0, 1]))
    assert host is not None and host.count == len(wins)
    assert len(host.signatures) == MAX_SIGNATURES_PER_HOST
    assert host.signatures[-1].split(":")[4].startswith(f"{wins[-1]},")  # the newest kept, the oldest gone


# --- memos ---------------------------------------------------------------------------------------

def test_match_cache_is_bounded_and_evicts_transparently():
    matcher = Matcher(DB, cache_size=100)
    pkts = [syn(1, win=1000 + i) for i in range(1000)]  # 1000 distinct stacks
    first = [matcher.fingerprint(p, True) for p in pkts]
    assert len(matcher.cache) <= 100
    assert matcher.cache_stats()["misses"] == 1000
    # After eviction the verdict is made again, the same as the uncached search says.
    again = matcher.fingerprint(pkts[0], True)
    assert matcher.cache_stats()["misses"] == 1001
    assert again == first[0] and (again.line, again.fuzzy, again.dist) == \
        ((lambda s, f, d: (s.line if s else 0, f, d))(*matcher.find(pkts[0], True)))


def test_per_fingerprint_memo_is_bounded():
    matcher = Matcher(DB, cache_size=10_000)
    made: list[int] = []
    memo = PerFingerprint(lambda fp: made.append(1) or fp.raw_sig, size=50)
    fps = [matcher.fingerprint(syn(1, win=1000 + i), True) for i in range(500)]
    assert [memo(fp) for fp in fps] == [fp.raw_sig for fp in fps]
    assert len(memo._memo) <= 50 and len(made) == 500
    assert memo(fps[-1]) == fps[-1].raw_sig and len(made) == 500  # the newest is still memoized


def test_option_memo_is_bounded():
    for memo in packet._option_memo.values():
        memo.clear()
    n = packet._OPTION_MEMO_MAX + 1000
    for mss in range(n):  # distinct option bytes: every MSS value
        opts = b"\x02\x04" + mss.to_bytes(2, "big") + b"\x01\x03\x03\x07"
        assert packet.options(opts) == packet._walk_options(opts, FIXED)
    assert 0 < len(packet._option_memo[False, False]) <= packet._OPTION_MEMO_MAX
