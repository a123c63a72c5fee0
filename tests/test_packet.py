"""The frame parser: link layers, IP versions, quirks, option walks, bad input."""

from __future__ import annotations

import random
import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fingerprintd import packet
from fingerprintd.engine import Engine
from fingerprintd.matcher import Matcher
from fingerprintd.mode import FIXED, P0F_BUGS
from fingerprintd.packet import (
    LINK_ETHERNET,
    LINK_LINUX_SLL,
    LINK_LINUX_SLL2,
    LINK_LOOP,
    LINK_NULL,
    LINK_RAW,
    Packet,
    parse,
    quirks_to_str,
)
from fingerprintd.signatures import load
from tests.conftest import OUR_DB
from tests.craft import IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, Shape, frame

RNG = random.Random(5)
LINUX = Shape(ttl=61, mss=1460, win=64240, wscale=7)
LINKTYPES = {"ether": LINK_ETHERNET, "sll": LINK_LINUX_SLL, "sll2": LINK_LINUX_SLL2, "null": LINK_NULL,
             "raw": LINK_RAW}


def build(shape: Shape = LINUX, link: str = "ether", **kw) -> bytes:
    src = "10.1.2.3" if shape.ver == 4 else "2001:db8::3"
    dst = "192.0.2.25" if shape.ver == 4 else "2001:db8::25"
    return bytes(frame(shape, src, dst, 40000, 25, random.Random(1), seq=kw.pop("seq", 1000), link=link, **kw))


def parsed(data: bytes, link: int = LINK_ETHERNET, **kw) -> Packet:
    pkt = parse(data, link, 0.0, **kw)
    assert isinstance(pkt, Packet), pkt
    return pkt


@pytest.mark.parametrize("link", sorted(LINKTYPES))
@pytest.mark.parametrize("ver", [4, 6])
def test_link_layers(link, ver):
    shape = replace(LINUX, ver=ver, quirks=LINUX.quirks if ver == 4 else frozenset())
    pkt = parsed(build(shape, link), LINKTYPES[link])
    assert (pkt.ip_ver, pkt.sport, pkt.dport, pkt.mss, pkt.wscale, pkt.win) == (ver, 40000, 25, 1460, 7, 64240)
    assert pkt.opt_layout == bytes([2, 4, 8, 1, 3])
    assert pkt.ttl == 61 and pkt.tcp_type == packet.SYN


def test_loop_linktype_is_network_order_family():
    data = struct.pack("!I", 2) + build(LINUX, "raw")
    assert parsed(data, LINK_LOOP).ip_ver == 4


@pytest.mark.parametrize("vlans", [(5,), (100, 5), (1, 2, 3)])
def test_vlan_stacks(vlans):
    data = build(LINUX, vlans=vlans)
    assert parsed(data).mss == 1460
    assert parse(data, LINK_ETHERNET, 0.0, P0F_BUGS) == packet.R_VLAN


def test_ipv4_options_length():
    pkt = parsed(build(replace(LINUX, ip_opts=b"\x01" * 8)))
    assert pkt.ip_opt_len == 8 and pkt.tot_hdr == 28 + 40


@pytest.mark.parametrize("exts,olen", [((IPv6ExtHdrHopByHop(),), 8),
                                       ((IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(offset=0, m=0)), 16)])
def test_ipv6_extension_headers_are_skipped(exts, olen):
    shape = replace(LINUX, ver=6, quirks=frozenset())
    pkt = parsed(build(shape, ext6=exts))
    assert pkt.ip_opt_len == olen and pkt.mss == 1460 and pkt.tot_hdr == 40 + olen + 40
    assert parse(build(shape, ext6=exts), LINK_ETHERNET, 0.0, P0F_BUGS) == packet.R_IPV6_EXT


def test_ipv6_fragments_are_skipped():
    shape = replace(LINUX, ver=6, quirks=frozenset())
    assert parse(build(shape, ext6=(IPv6ExtHdrFragment(offset=0, m=1),))) == packet.R_FRAGMENT
    assert parse(build(shape, ext6=(IPv6ExtHdrFragment(offset=8, m=0),))) == packet.R_FRAGMENT


@pytest.mark.parametrize("quirk", ["df", "id+", "id-", "ecn", "0+", "seq-", "ack+", "uptr+", "urgf+", "pushf+",
                                   "ts1-", "ts2+", "opt+", "exws", "bad"])
def test_each_quirk(quirk):
    q = {"df", "id+"}
    if quirk == "id-":
        q = {"id-"}
    shape = replace(LINUX, quirks=frozenset(q | {quirk}))
    if quirk == "exws":
        shape = replace(shape, wscale=15)
    if quirk == "opt+":
        shape = replace(shape, layout=LINUX.layout + ("eol",), eol_pad=3)
    got = quirks_to_str(parsed(build(shape)).quirks).split(",")
    assert quirk in got


def test_ipv6_quirks():
    shape = replace(LINUX, ver=6, quirks=frozenset({"flow", "ecn"}), extra={"ecn_via": "ip"}, tos=5)
    pkt = parsed(build(shape))
    assert quirks_to_str(pkt.quirks) == "ecn,flow" and pkt.tos == 5  # the ECN bits and flow label: in the quirks


def test_ack_plus_bug_switch():
    data = build(replace(LINUX, quirks=LINUX.quirks | {"ack+"}, ack_value=5))
    assert "ack+" in quirks_to_str(parsed(data).quirks)
    assert "ack+" not in quirks_to_str(parsed(data, mode=P0F_BUGS).quirks)
    data = build(replace(LINUX, quirks=LINUX.quirks | {"ack+"}, ack_value=0x01000000))
    assert "ack+" in quirks_to_str(parsed(data, mode=P0F_BUGS).quirks)


def test_opt_plus_last_byte_bug_switch():
    shape = replace(LINUX, layout=LINUX.layout + ("eol",), eol_pad=3, quirks=LINUX.quirks | {"opt+"},
                    opt_nz_last=True)
    data = build(shape)
    assert parsed(data).quirks & packet.Q_OPT_EOL_NZ
    assert not parsed(data, mode=P0F_BUGS).quirks & packet.Q_OPT_EOL_NZ
    assert parsed(data).opt_eol_pad == 3


def _with_options(opts: bytes) -> bytes:
    base = bytearray(build(replace(LINUX, layout=())))
    tcp = 14 + 20
    base[tcp + 12] = ((20 + len(opts)) // 4) << 4
    data = bytes(base[: tcp + 20]) + opts
    ip = bytearray(data)
    struct.pack_into("!H", ip, 14 + 2, len(data) - 14)
    return bytes(ip)


@pytest.mark.parametrize("opts,layout,bad", [
    (b"\x02\x05\x05\xb4", b"\x02", True),  # MSS with length 5: flagged, still read
    (b"\x05\x09" + bytes(10), b"\x05", True),  # SACK shorter than 10 aborts the walk
    (b"\x1e\x01\x00\x00", b"\x1e", True),  # unknown option with length 1
    (b"\x1e\x06\x00\x00\x00\x00\x01\x00", b"\x1e\x01\x00", False),  # unknown kind 30, NOP, EOL
    (b"\x01" * 28, b"\x01" * 24, True),  # more than 24 options
    (b"\x08\x0a" + bytes(8) + b"\x00\x00", b"\x08\x00", False),  # ts1 = 0
])
def test_option_walk(opts, layout, bad):
    pkt = parsed(_with_options(opts))
    assert pkt.opt_layout == layout
    assert bool(pkt.quirks & packet.Q_OPT_BAD) == bad
    assert pkt.mss == (1460 if b"\x02" in layout else 0)  # no MSS option: none read


@pytest.mark.parametrize("cut", range(0, 74, 3))
def test_truncated_frames_are_reasons_not_errors(cut):
    data = build()
    # 14 bytes of Ethernet, then an IPv4 header whose total length says 60 (20 IP + 20 TCP + 20 options):
    # any frame cut short of 74 bytes is missing part of what the IP header announces.
    assert len(data) == 74 and data[16:18] == (60).to_bytes(2, "big")
    assert parse(data[:cut], LINK_ETHERNET, 0.0) == packet.R_TRUNCATED
    assert isinstance(parse(data, LINK_ETHERNET, 0.0), Packet)


def test_skip_reasons():
    good = bytearray(build())
    udp = bytearray(good)
    udp[14 + 9] = 17
    assert parse(bytes(udp)) == packet.R_NOT_TCP
    frag = bytearray(good)
    frag[14 + 6] |= 0x20  # MF
    assert parse(bytes(frag)) == packet.R_FRAGMENT
    bad_ihl = bytearray(good)
    bad_ihl[14] = 0x44
    assert parse(bytes(bad_ihl)) == packet.R_BAD_IP
    doff = bytearray(good)
    doff[14 + 20 + 12] = 0x40
    assert parse(bytes(doff)) == packet.R_BAD_TCP
    synfin = bytearray(good)
    synfin[14 + 20 + 13] = 0x03
    assert parse(bytes(synfin)) == packet.R_BAD_FLAGS
    arp = bytes(good[:12]) + b"\x08\x06" + bytes(good[14:])
    assert parse(arp) == packet.R_NOT_IP
    assert parse(bytes(good), 147) == packet.R_LINK
    longer = bytes(good) + b"\xff" * 20  # trailing link padding: honour the IP length
    assert parsed(longer).pay_len == 0


# --- properties ---------------------------------------------------------------

_DBS = {mode: load(OUR_DB, mode) for mode in (FIXED, P0F_BUGS)}
_SEEDS = [build(LINUX), build(replace(LINUX, ver=6, quirks=frozenset())), build(LINUX, vlans=(3, 4)),
          build(replace(LINUX, ver=6, quirks=frozenset()), ext6=(IPv6ExtHdrHopByHop(),)), build(LINUX, "sll2")]


@st.composite
def mutated_frames(draw):
    i = draw(st.integers(0, len(_SEEDS) - 1))
    data = bytearray(_SEEDS[i])
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "grow", "set"]))
        if op == "flip" and data:
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "grow":
            data += draw(st.binary(max_size=64))
        elif op == "set" and data:
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 0x40, 0x60, 0xFF]))
    link = LINK_LINUX_SLL2 if i == 4 else LINK_ETHERNET
    return bytes(data), link


# The skip reasons a frame can get from the parser, as packet.py documents them (written out here, not
# read from the module, so a new or renamed reason is a decision this test sees).
PARSE_REASONS = frozenset({"truncated", "not-ip", "not-tcp", "fragment", "bad-ip-header", "bad-tcp-header",
                           "bad-tcp-flags", "unsupported-link", "ipv6-extension-header", "vlan-tagged"})


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(mutated_frames(), st.tuples(st.binary(max_size=200),
                                                      st.sampled_from(sorted(set(LINKTYPES.values()))))),
                max_size=30),
       st.sampled_from([FIXED, P0F_BUGS]))
def test_never_raises_and_counters_add_up(frames, mode):
    engine = Engine(Matcher(_DBS[mode]), ports=None)
    seen = 0
    reasons: dict[str, int] = {}
    for data, link in frames:
        got = parse(data, link, 0.0, mode)
        if isinstance(got, str):
            assert got in PARSE_REASONS, got
            reasons[got] = reasons.get(got, 0) + 1
        else:
            # What the parser read is in the frame: the addresses, and the ports side by side.
            assert got.src in data and got.dst in data and struct.pack("!HH", got.sport, got.dport) in data
        if engine.feed(data, link, 1_700_000_000) is not None:
            seen += 1
    # The engine counts each frame the parser refused under the parser's reason.
    assert {r: n for r, n in engine.skipped.items() if r in PARSE_REASONS and n} == reasons
    assert sum(engine.fingerprinted.values()) == seen
    assert engine.packets == len(frames) == seen + sum(engine.skipped.values())


_OPTION_TOKENS = st.sampled_from([b"\x01", b"\x00", b"\x02\x04\x05\xb4", b"\x02\x04\x08\x0a", b"\x03\x03\x07",
                                  b"\x04\x02", b"\x08\x0a", b"\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00",
                                  b"\x05\x0a", b"\x1e\x02", b"\x08"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.lists(_OPTION_TOKENS, max_size=8), st.binary(max_size=8)), min_size=1, max_size=6),
       st.sampled_from([FIXED, P0F_BUGS]))
def test_option_memo_agrees_with_the_walk(batches, mode):
    """Memoized option parsing (timestamp values cut from the key) never changes an answer."""
    for tokens, tail in batches:
        opts = b"".join(tokens) + tail
        assert packet.options(opts, mode) == packet._walk_options(opts, mode), opts.hex()
