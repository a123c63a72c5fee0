"""Conformance with p0f 3.09b on SYNs and SYN+ACKs crafted from every signature.

Each [tcp:request] and [tcp:response] line of the database yields a packet
shaped for it (random MSS, TTL distance, window multiple and scale) and a
dozen mutations that walk the fuzzy, generic and unknown paths and set every
quirk.  The real p0f binary replays the capture and its log is the expected
output, line for line.  The crafted set holds none of the cases where we
deliberately differ from p0f; those have their own tests below.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from fingerprintd import packet
from fingerprintd.capture import open_offline
from fingerprintd.matcher import Matcher
from fingerprintd.mode import P0F_BUGS
from fingerprintd.signatures import load
from fingerprintd.stackrules import FALLBACK_FLAVOR, generated_line_numbers
from tests.conftest import OUR_DB, STOCK_DB, diff_report, flow_neutral, need, run_p0f, run_replay
from tests.craft import (
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    Shape,
    frame,
    mutations,
    shape_from_sig,
    write_pcap,
)

SERVER4, SERVER6 = "192.0.2.25", "2001:db8:25::25"


def _client(n: int, ver: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" if ver == 4 else f"2001:db8:1::{n:x}"


GENERATED_SAMPLE = 0.25  # the generated lines differ only in their multiplier: a quarter of them, seeded


def crafted_packets(db_path: Path, seed: int) -> tuple[list, dict[str, int]]:
    """Packets for every signature (a seeded quarter of the lines generated from the stack rules, which
    repeat one shape per multiplier) and its mutations; and counts by mutation."""
    db = load(db_path)
    rng = random.Random(seed)
    pick = random.Random(seed + 1)
    generated = generated_line_numbers(db_path.read_text(encoding="utf-8"))
    db.request = [s for s in db.request if s.line not in generated or pick.random() < GENERATED_SAMPLE]
    db.response = [s for s in db.response if s.line not in generated or pick.random() < GENERATED_SAMPLE]
    packets = []
    kinds: dict[str, int] = {}
    n = 0
    t0 = 1_700_000_000.0

    def add(pkt) -> None:
        pkt.time = t0 + len(packets) * 0.001
        packets.append(pkt)

    for sig in db.request:
        for kind, shape in mutations(shape_from_sig(sig, rng), sig, rng):
            n += 1
            kinds[kind] = kinds.get(kind, 0) + 1
            server = SERVER4 if shape.ver == 4 else SERVER6
            add(frame(shape, _client(n, shape.ver), server, 20000 + n % 40000, 25, rng,
                      seq=rng.randrange(1, 1 << 32)))
    for sig in db.response:
        syn_mss = rng.choice((1460, 1440, 1400, 1380, 1220))
        base = replace(shape_from_sig(sig, rng, syn_mss=syn_mss), synack=True)
        for kind, shape in mutations(base, sig, rng):
            n += 1
            kinds["synack-" + kind] = kinds.get("synack-" + kind, 0) + 1
            client, server = _client(n, shape.ver), SERVER4 if shape.ver == 4 else SERVER6
            syn = Shape(ver=shape.ver, mss=syn_mss, win=syn_mss * 20,
                        quirks=frozenset({"df", "id+"} if shape.ver == 4 else ()))
            seq = rng.randrange(1, 1 << 32)
            sport = 20000 + n % 40000
            add(frame(syn, client, server, sport, 25, rng, seq=seq))
            add(frame(shape, server, client, 25, sport, rng, seq=rng.randrange(1, 1 << 32), ack=seq + 1))
    return packets, kinds


@pytest.fixture(scope="module", params=["stock", "ours"])
def crafted(request, tmp_path_factory):
    db = STOCK_DB if request.param == "stock" else OUR_DB
    if request.param == "stock":
        need(STOCK_DB.exists(), "p0f's database is not installed (apt-get install p0f)")
    packets, kinds = crafted_packets(db, seed=20261129)
    path = tmp_path_factory.mktemp("crafted") / "crafted.pcap"
    write_pcap(path, packets)
    return db, path, kinds, len(packets)


def fallback_neutral(lines: list[str]) -> list[str]:
    """Our lines with each family-fallback verdict put back as p0f writes an unmatched SYN: os=???, the
    guessed distance raw_sig shows, no 'generic'.  Nothing else may differ (the mtu line, the SYN+ACK)."""
    out = []
    for ln in lines:
        if f" {FALLBACK_FLAVOR}|" in ln:
            head, rest = ln.split("|os=", 1)
            rest = rest.split("|dist=", 1)[1].split("|", 1)[1]  # params=...|raw_sig=...
            params = rest.split("params=", 1)[1].split("|", 1)[0]
            raw = rest.split("raw_sig=", 1)[1]
            guess = raw.split(":")[1].split("+")[1]
            kept = " ".join(p for p in params.split() if p != "generic") or "none"
            ln = f"{head}|os=???|dist={guess}|params={kept}|raw_sig={raw}"
        out.append(ln)
    return out


@pytest.mark.parametrize("p0f_bugs", [False, True], ids=["fixed", "p0f-bugs"])
def test_crafted_matches_p0f(p0f_bin, crafted, tmp_path, p0f_bugs):
    db, pcap, kinds, count = crafted
    expected = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log", db=db)
    args = ["--all-ports"] + (["--p0f-bugs"] if p0f_bugs else [])
    got = run_replay(pcap, tmp_path / "ours.log", *args, db=db)
    assert count > 2000 and len(expected) > 2000
    fallbacks = sum(f" {FALLBACK_FLAVOR}|" in ln for ln in got)
    assert (fallbacks > 0) == (db == OUR_DB and not p0f_bugs)  # only the bundled database, only by default
    if not p0f_bugs:  # the IPv6 flow-label rule and the family fallback: checked on their own
        expected, got = flow_neutral(expected), fallback_neutral(flow_neutral(got))
    assert got == expected, diff_report(expected, got)


def test_ipv6_flow_label_rule(crafted):
    """An IPv6 SYN with a flow label gets the verdict its flow-less twin gets from p0f's rules."""
    db_path, pcap, _, _ = crafted
    ours, p0fs = Matcher(load(db_path)), Matcher(load(db_path, P0F_BUGS))  # p0fs: p0f's own rules
    cap = open_offline(str(pcap), None)
    seen = 0
    for batch in cap.batches():
        for sec, _usec, data in batch:
            pkt = packet.parse(data, cap.linktype, sec)
            if isinstance(pkt, str) or pkt.ip_ver != 6 or not pkt.quirks & packet.Q_FLOW or pkt.tcp_type != packet.SYN:
                continue
            twin = pkt._replace(quirks=pkt.quirks & ~packet.Q_FLOW)
            assert ours.find(pkt, True) == ours.find(twin, True)  # the twin has no label: p0f's comparison
            assert p0fs.find(pkt, True)[0] is None  # p0f itself: no line ever matches
            seen += 1
    assert seen > 20


def test_crafted_set_walks_every_path(p0f_bin, crafted, tmp_path):
    """The oracle's own verdicts show the set reaches each kind of outcome."""
    db, pcap, kinds, _ = crafted
    lines = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log", db=db)
    text = "\n".join(lines)
    for needle in ("params=generic", "params=fuzzy", "params=generic fuzzy", "os=???", "app=NMap",
                   "random_ttl", "excess_dist", "tos:0x", "mod=syn+ack", "mod=sendsyn probe", "link=???"):
        assert needle in text, needle
    syn_sigs = [ln.split("raw_sig=")[1] for ln in lines if "raw_sig=" in ln]
    quirks = {q for s in syn_sigs for q in s.split(":")[-2].split(",") if q}
    assert quirks >= {"df", "id+", "id-", "ecn", "0+", "flow", "seq-", "ack+", "uptr+", "urgf+", "pushf+",
                      "ts1-", "ts2+", "opt+", "exws", "bad"}


# --- deliberate deviations: p0f's bugs, fixed, and --p0f-bugs restores them ------

def _deviation_packets():
    rng = random.Random(7)
    linux = Shape(ttl=57, mss=1460, win=29200, wscale=7)
    cases = [
        # ack+ with bit 24 of the ack number clear: p0f cannot see it
        ("ack+ low bits", frame(replace(linux, quirks=linux.quirks | {"ack+"}, ack_value=1),
                                "10.66.0.1", SERVER4, 40001, 25, rng)),
        # the only non-zero byte after EOL is the last one: p0f's scan skips it
        ("opt+ last byte", frame(replace(linux, layout=("mss", "sok", "ts", "nop", "ws", "eol"), eol_pad=3,
                                         quirks=linux.quirks | {"opt+"}, opt_nz_last=True),
                                 "10.66.0.2", SERVER4, 40002, 25, rng)),
        # an 802.1Q-tagged frame and a QinQ one: p0f reads them at offset 14
        ("vlan", frame(linux, "10.66.0.3", SERVER4, 40003, 25, rng, vlans=(12,))),
        ("qinq", frame(linux, "10.66.0.4", SERVER4, 40004, 25, rng, vlans=(100, 12))),
        # IPv6 with extension headers: p0f drops any next header but TCP
        ("ipv6 hop-by-hop", frame(Shape(ver=6, quirks=frozenset()), "2001:db8:66::5", SERVER6, 40005, 25, rng,
                                  ext6=(IPv6ExtHdrHopByHop(),))),
        ("ipv6 dstopt+frag", frame(Shape(ver=6, quirks=frozenset()), "2001:db8:66::6", SERVER6, 40006, 25, rng,
                                   ext6=(IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(offset=0, m=0)))),
    ]
    for i, (_, p) in enumerate(cases):
        p.time = 1_700_000_100 + i
    return cases


def test_deviations_from_p0f(p0f_bin, tmp_path):
    cases = _deviation_packets()
    pcap = tmp_path / "deviations.pcap"
    write_pcap(pcap, [p for _, p in cases])
    expected = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log")
    compat = run_replay(pcap, tmp_path / "compat.log", "--all-ports", "--p0f-bugs")
    assert compat == expected, diff_report(expected, compat)

    fixed = run_replay(pcap, tmp_path / "fixed.log", "--all-ports")
    syn = {ln.split("|cli=")[1].split("/")[0]: ln for ln in fixed if "mod=syn|" in ln}
    p0f_syn = {ln.split("|cli=")[1].split("/")[0]: ln for ln in expected if "mod=syn|" in ln}
    # p0f: a Linux match without ack+; fixed: the quirk is seen, so no Linux line matches.
    assert "os=Linux 3.11 and newer" in p0f_syn["10.66.0.1"]
    assert "os=???" in syn["10.66.0.1"] and ":df,id+,ack+:" in syn["10.66.0.1"]
    assert ",opt+:" not in p0f_syn["10.66.0.2"] and ",opt+:" in syn["10.66.0.2"]
    # Tagged frames and IPv6 with extension headers: p0f is silent, we fingerprint them.
    for ip in ("10.66.0.3", "10.66.0.4"):
        assert ip not in p0f_syn
        assert "os=Linux 3.11 and newer" in syn[ip]
    for ip, olen in (("2001:db8:66:0:0:0:0:5", 8), ("2001:db8:66:0:0:0:0:6", 16)):
        assert ip not in p0f_syn
        assert syn[ip].split("raw_sig=")[1].split(":")[2] == str(olen)


def test_random_ttl_olen_parse_bug(p0f_bin, tmp_path):
    """p0f reads `64-:40:` as olen 0; we read 40 unless told to copy the bug."""
    db_text = STOCK_DB.read_text() if STOCK_DB.exists() else ""
    assert db_text
    rule = "\n[tcp:request]\nlabel = s:!:Probe:olen test\nsys = @unix\nsig = 4:64-:40:1234:4321,0:mss::0\n"
    base = db_text.split("[tcp:request]")[0]
    db = tmp_path / "olen.fp"
    db.write_text(base + rule)
    rng = random.Random(1)
    shape = Shape(ttl=60, mss=1234, win=4321, wscale=0, layout=("mss",), quirks=frozenset())
    plain = frame(shape, "10.77.0.1", SERVER4, 40001, 25, rng)
    with_opts = frame(replace(shape, ip_opts=b"\x01" * 40), "10.77.0.2", SERVER4, 40002, 25, rng)
    pcap = tmp_path / "olen.pcap"
    write_pcap(pcap, [plain, with_opts])
    expected = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log", db=db)
    assert run_replay(pcap, tmp_path / "c.log", "--p0f-bugs", db=db) == expected
    fixed = [ln for ln in run_replay(pcap, tmp_path / "f.log", db=db) if "mod=syn|" in ln]
    assert "app=Probe olen test" in fixed[1] and "os=???" in fixed[0]
    p0f_syn = [ln for ln in expected if "mod=syn|" in ln]
    assert "app=Probe olen test" in p0f_syn[0] and "os=???" in p0f_syn[1]
