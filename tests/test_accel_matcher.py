"""The compiled matcher (_cmatcher, compiled from matcher.py with its comparison from signatures.py) against the
pure-Python reference: random probes made from the lines of p0f's database and ours (mutated: TTL distance, MSS,
window multiple and scale, quirks, options, payload, TOS), both directions, with and without a SYN's MSS and a
p0f-sendsyn exchange, in both p0f modes.  Every Fingerprint must be identical, field by field and type by type,
and so must the uncached search, the explanation and the cache counters."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fingerprintd import accel, matcher, packet
from fingerprintd.mode import FIXED, P0F_BUGS
from fingerprintd.packet import ACK, QUIRK_TOKENS, SYN, Packet
from fingerprintd.signatures import WIN_ANY, WIN_MOD, WIN_MSS, WIN_MTU, WIN_NORMAL, load
from tests.conftest import OUR_DB, STOCK_DB, need

DBS = {"stock": STOCK_DB, "ours": OUR_DB}
_KINDS = (0, 1, 2, 3, 4, 5, 8, 30, 254)  # EOL, NOP, MSS, WS, SACKOK, SACK, TS, and two unknown kinds


@cache
def _pair(name: str, mode):
    """(pure, compiled) Matchers over one database read in `mode`, kept for the whole module: their caches fill
    as they would."""
    db = load(DBS[name], mode)
    return matcher.Matcher(db), accel.compiled().matcher.Matcher(db)


@pytest.fixture(scope="module", autouse=True)
def _prerequisites():
    need(STOCK_DB.exists(), "p0f's database is not installed (apt-get install p0f)")
    need(accel.available(), "the compiled accelerator is not built (pip install -e . builds it; see setup.py)")


def _packet(ver: int, ttl: int, tos: int, olen: int, tcp_type: int, win: int, mss: int, wscale: int, ts1: int,
            layout: bytes, eol_pad: int, pay_len: int, quirks: int) -> Packet:
    """A Packet with these header fields, its shape made the way packet.parse makes it."""
    tot_hdr = (20 if ver == 4 else 40) + olen + 20 + min(40, 4 * len(layout))
    shape = (ver, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, ts1 != 0, layout, eol_pad, pay_len != 0,
             tot_hdr)
    src = bytes(4 if ver == 4 else 16)
    return Packet(0.0, ver, src, src, 40000, 25, ttl, tos, olen, tcp_type, 1, win, mss, wscale, ts1, layout, eol_pad,
                  pay_len, tot_hdr, quirks, b"x" * min(pay_len, 16), shape)


@st.composite
def probes(draw):
    """(database, mode, to_server, packet, syn_mss, sendsyn): a line's fields, each kept or changed."""
    name = draw(st.sampled_from(sorted(DBS)))
    mode = draw(st.sampled_from([FIXED, P0F_BUGS]))
    pure, _ = _pair(name, mode)
    to_server = draw(st.booleans())
    lines = pure.db.tcp(draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else to_server)
    ref = draw(st.sampled_from(lines))
    keep = st.integers(0, 5).map(bool)  # mostly the line's own value

    ver = ref.ver if ref.ver is not None and draw(keep) else draw(st.sampled_from((4, 6)))
    ttl = max(1, min(255, ref.ttl - draw(st.integers(-8, 45))))
    olen = ref.olen if draw(keep) else draw(st.sampled_from((0, 4, 8, 40)))
    mss = ref.mss if ref.mss is not None and draw(keep) else draw(
        st.one_of(st.sampled_from((0, 12, 100, 536, 1220, 1360, 1440, 1460, 8960, 65535)), st.integers(0, 65535)))
    wscale = ref.wscale if ref.wscale is not None and draw(keep) else draw(st.integers(0, 255))
    k = draw(st.integers(1, 64))
    win = {WIN_NORMAL: ref.win, WIN_MOD: ref.win * k, WIN_MSS: ref.win * mss, WIN_MTU: ref.win * (mss + 40),
           WIN_ANY: k * 1024}[ref.win_type] if draw(keep) else draw(st.integers(0, 65535))
    win = min(win, 65535)
    layout = ref.layout if draw(keep) else bytes(draw(st.lists(st.sampled_from(_KINDS), max_size=8)))
    eol_pad = ref.eol_pad if draw(keep) else draw(st.integers(0, 3))
    quirks = ref.quirks
    for _tok, bit in draw(st.lists(st.sampled_from(QUIRK_TOKENS), max_size=3)):
        quirks ^= bit
    if ver == 6 and draw(st.booleans()):
        quirks |= packet.Q_FLOW
    pay_len = draw(st.sampled_from((0, 0, 1, 40)))
    tos = draw(st.sampled_from((0, 0, 0, 4, 0x2e, 63)))
    ts1 = draw(st.sampled_from((0, 1, 123456)))
    tcp_type = SYN if to_server else SYN | ACK
    if not to_server and draw(st.integers(0, 3)) == 0:
        mss = packet.SENDSYN_MSS  # the MSS p0f-sendsyn's probes draw as `*` in a SYN+ACK's raw_sig
    syn_mss = 0 if to_server else draw(st.sampled_from((0, 12, 536, 1460, draw(st.integers(0, 65535)))))
    sendsyn = draw(st.integers(0, 4)) == 0
    pkt = _packet(ver, ttl, tos, olen, tcp_type, win, mss, wscale, ts1, layout, eol_pad, pay_len, quirks)
    return name, mode, to_server, pkt, syn_mss, sendsyn


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(probes())
def test_compiled_matcher_gives_the_references_fingerprints(case):
    name, mode, to_server, pkt, syn_mss, sendsyn = case
    pure, compiled = _pair(name, mode)
    want = pure.fingerprint(pkt, to_server, syn_mss, sendsyn)
    got = compiled.fingerprint(pkt, to_server, syn_mss, sendsyn)
    assert got == want
    assert [type(v) for v in got] == [type(v) for v in want] and type(got) is type(want)
    assert got.label is want.label  # the database's own Label objects
    # Asked again: the cached object itself (what PerFingerprint keys on).
    assert compiled.fingerprint(pkt, to_server, syn_mss, sendsyn) is got
    assert pure.fingerprint(pkt, to_server, syn_mss, sendsyn) is want
    assert compiled.cache_stats() == pure.cache_stats()
    assert compiled.find(pkt, to_server, syn_mss) == pure.find(pkt, to_server, syn_mss)
    probe = matcher.Probe.of(pkt, syn_mss, not mode.flow_label_counts)
    assert compiled.explain(probe, to_server) == pure.explain(probe, to_server)
    assert compiled.family_fallback(probe, to_server) == pure.family_fallback(probe, to_server)


def test_the_accelerator_builds_the_compiled_matcher():
    """build_engine, with the accelerator selected, runs the compiled Matcher; without it the reference."""
    from fingerprintd import engine

    db = load(STOCK_DB)
    with accel.selected(True):
        assert type(engine.build_engine(db).matcher) is accel.compiled().matcher.Matcher
    with accel.selected(False):
        assert type(engine.build_engine(db).matcher) is matcher.Matcher
    assert accel.compiled().matcher.Matcher is not matcher.Matcher
