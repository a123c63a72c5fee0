"""Raw frame bytes -> an immutable TCP observation.

Pure and ``struct``-based: this runs for every captured packet, so it never
dissects with scapy and never raises on bad input.  A frame that cannot be
fingerprinted comes back as a short skip-reason string instead, which the
caller counts.

The checks and quirks follow p0f 3.09b's ``process.c:parse_packet`` step for
step (the order of the sanity checks decides which reason a bad frame gets),
with four documented deviations that ``mode.P0F_BUGS`` turns back off (the fields of
`fingerprintd.mode.P0fMode` that name them are given):

* ``ack+`` means "ACK flag clear and a non-zero ack number"; p0f tests bit 24
  of the ack number only, a byte-order slip (``ack_bit24``).
* ``opt+`` also fires when the only non-zero byte after EOL is the last byte
  of the option area; p0f's scan loop steps past it and misses it
  (``eol_last_byte_missed``).
* 802.1Q/802.1ad VLAN tags on Ethernet are walked; p0f reads a tagged frame at
  a fixed offset of 14 (``vlan_refused``).
* IPv6 extension headers are walked; p0f drops any IPv6 packet whose next
  header is not TCP (``ipv6_ext_refused``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from fingerprintd.mode import FIXED, P0fMode

# Link-layer types, as pcap files and libpcap's datalink() report them.
LINK_NULL = 0
LINK_ETHERNET = 1
LINK_RAW_BSD = 12  # DLT_RAW on most platforms
LINK_RAW_OPENBSD = 14
LINK_RAW = 101  # LINKTYPE_RAW in files
LINK_LOOP = 108
LINK_LINUX_SLL = 113
LINK_IPV4 = 228
LINK_IPV6 = 229
LINK_LINUX_SLL2 = 276

LINK_NAMES = {
    LINK_NULL: "null",
    LINK_ETHERNET: "ethernet",
    LINK_RAW_BSD: "raw",
    LINK_RAW_OPENBSD: "raw",
    LINK_RAW: "raw",
    LINK_LOOP: "loop",
    LINK_LINUX_SLL: "linux-sll",
    LINK_IPV4: "ipv4",
    LINK_IPV6: "ipv6",
    LINK_LINUX_SLL2: "linux-sll2",
}

# TCP flags.
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

# Quirk bits; the values are p0f's own, so the bitmasks read the same.
Q_ECN = 0x00000001
Q_DF = 0x00000002
Q_NZ_ID = 0x00000004
Q_ZERO_ID = 0x00000008
Q_NZ_MBZ = 0x00000010
Q_FLOW = 0x00000020
Q_ZERO_SEQ = 0x00001000
Q_NZ_ACK = 0x00002000
Q_ZERO_ACK = 0x00004000
Q_NZ_URG = 0x00008000
Q_URG = 0x00010000
Q_PUSH = 0x00020000
Q_OPT_ZERO_TS1 = 0x01000000
Q_OPT_NZ_TS2 = 0x02000000
Q_OPT_EOL_NZ = 0x04000000
Q_OPT_EXWS = 0x08000000
Q_OPT_BAD = 0x10000000

# Token <-> bit, in the order p0f prints them.
QUIRK_TOKENS: tuple[tuple[str, int], ...] = (
    ("df", Q_DF),
    ("id+", Q_NZ_ID),
    ("id-", Q_ZERO_ID),
    ("ecn", Q_ECN),
    ("0+", Q_NZ_MBZ),
    ("flow", Q_FLOW),
    ("seq-", Q_ZERO_SEQ),
    ("ack+", Q_NZ_ACK),
    ("ack-", Q_ZERO_ACK),
    ("uptr+", Q_NZ_URG),
    ("urgf+", Q_URG),
    ("pushf+", Q_PUSH),
    ("ts1-", Q_OPT_ZERO_TS1),
    ("ts2+", Q_OPT_NZ_TS2),
    ("opt+", Q_OPT_EOL_NZ),
    ("exws", Q_OPT_EXWS),
    ("bad", Q_OPT_BAD),
)

# TCP option kinds.
OPT_EOL, OPT_NOP, OPT_MSS, OPT_WS, OPT_SACKOK, OPT_SACK, OPT_TS = 0, 1, 2, 3, 4, 5, 8
MAX_TCP_OPT = 24  # p0f stops recording options past this many
SENDSYN_WIN, SENDSYN_MSS = 1337, 1331  # p0f-sendsyn's probe: window and MSS
SNAPLEN = 65535

# IPv6 extension headers we step over (hop-by-hop, routing, destination
# options, mobility, HIP, shim6); fragment (44) is handled on its own.
_IPV6_EXT = frozenset((0, 43, 60, 135, 139, 140))
_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100))

# Skip reasons (counted by callers).
R_TRUNCATED = "truncated"
R_NOT_IP = "not-ip"
R_NOT_TCP = "not-tcp"
R_FRAGMENT = "fragment"
R_BAD_IP = "bad-ip-header"
R_BAD_TCP = "bad-tcp-header"
R_BAD_FLAGS = "bad-tcp-flags"
R_LINK = "unsupported-link"
R_IPV6_EXT = "ipv6-extension-header"
R_VLAN = "vlan-tagged"


class Packet(NamedTuple):
    """One parsed TCP segment: what p0f's fingerprinting and flow books read, no more.

    The IP ID, DF and ECN bits, the flow label, the ack and urgent pointers and
    the peer timestamp only matter through the quirks they set, so they are
    kept there and not as fields of their own (every field costs each packet).
    """

    ts: float  # capture time, seconds since the epoch
    ip_ver: int  # 4 or 6
    src: bytes  # packed address, 4 or 16 bytes
    dst: bytes
    sport: int
    dport: int
    ttl: int  # TTL or hop limit
    tos: int  # DSCP (the top six bits of the TOS / traffic class)
    ip_opt_len: int  # IPv4 option bytes, or IPv6 extension header bytes
    tcp_type: int  # flags & (SYN|ACK|FIN|RST)
    seq: int
    win: int
    mss: int  # 0 when the option is absent
    wscale: int  # 0 when the option is absent
    ts1: int  # own timestamp; 0 when absent
    opt_layout: bytes  # option kinds in wire order, at most 24
    opt_eol_pad: int  # bytes after an EOL option
    pay_len: int
    tot_hdr: int  # IP (with options / extensions) + TCP header bytes
    quirks: int
    payload: bytes  # the first 16 payload bytes (flow tracking peeks at them)
    # Every field a fingerprint depends on, as one hashable key (memo key):
    # (ip_ver, ttl, tos, ip_opt_len, quirks, tcp_type, win, mss, wscale,
    #  ts1 != 0, opt_layout, opt_eol_pad, pay_len != 0, tot_hdr)
    shape: tuple


def link_name(linktype: int) -> str:
    return LINK_NAMES.get(linktype, f"linktype-{linktype}")


_unpack_eth_type = struct.Struct("!H").unpack_from
_unpack_ip4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
_unpack_ip4_tcp = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH").unpack_from  # no IP options: one call
_unpack_ip6 = struct.Struct("!IHBB16s16s").unpack_from
_unpack_tcp = struct.Struct("!HHIIBBHHH").unpack_from
_unpack_u16 = struct.Struct("!H").unpack_from
_unpack_ts = struct.Struct("!II").unpack_from
_new_packet = tuple.__new__


# Link types with an EtherType: (where the EtherType is, where the payload starts).
_ETHERTYPE_LINKS = {LINK_ETHERNET: (12, 14), LINK_LINUX_SLL: (14, 16), LINK_LINUX_SLL2: (0, 20)}
_RAW_LINKS = frozenset((LINK_RAW, LINK_RAW_BSD, LINK_RAW_OPENBSD, LINK_IPV4, LINK_IPV6))


def ip_offset(data: bytes, linktype: int, mode: P0fMode = FIXED) -> int | str:
    """Offset of the IP header in a frame, or a skip reason."""
    where = _ETHERTYPE_LINKS.get(linktype)
    if where is None:
        if linktype in _RAW_LINKS:
            return 0
        if linktype in (LINK_NULL, LINK_LOOP):
            # A 4-byte address family in either byte order; the IP version
            # nibble that follows is what counts.
            return 4
        return R_LINK
    type_at, off = where
    if len(data) < off:
        return R_TRUNCATED
    etype = _unpack_eth_type(data, type_at)[0]
    if etype in _VLAN_TYPES and mode.vlan_refused:
        return R_VLAN
    while etype in _VLAN_TYPES:  # 802.1Q / 802.1ad tags, stacked
        if len(data) < off + 4:
            return R_TRUNCATED
        etype = _unpack_eth_type(data, off + 2)[0]
        off += 4
    if etype != 0x0800 and etype != 0x86DD:
        return R_NOT_IP
    return off


def parse(
    data: bytes,
    linktype: int = LINK_ETHERNET,
    ts: float = 0.0,
    mode: P0fMode = FIXED,
) -> Packet | str:
    """Parse one captured frame. Returns a Packet, or a skip-reason string."""
    if linktype == LINK_ETHERNET and data[12:14] == b"\x08\x00":
        off = 14  # the common case, without the general link walk
    else:
        off = ip_offset(data, linktype, mode)  # type: ignore[assignment]
        if off.__class__ is str:
            return off  # type: ignore[return-value]
    packet_len = min(len(data), SNAPLEN) - off
    if packet_len < 40:
        return R_TRUNCATED
    first = data[off]
    quirks = 0
    ver = first >> 4
    if ver == 4:
        hdr_len = (first & 0x0F) * 4
        if hdr_len == 20:
            (_vhl, tos_ecn, tot_len, ip_id, flags_off, ttl, proto, _csum, src, dst,
             sport, dport, seq, ack, doff_rsvd, flags, win, _tcsum, urg) = _unpack_ip4_tcp(data, off)
        else:
            (_vhl, tos_ecn, tot_len, ip_id, flags_off, ttl, proto, _csum, src, dst) = _unpack_ip4(data, off)
        if packet_len > tot_len:
            packet_len = tot_len  # honour the IP length (etherleak padding)
        if packet_len < 40:
            return R_TRUNCATED
        if hdr_len < 20:
            return R_BAD_IP
        if tot_len > packet_len or hdr_len + 20 > packet_len:
            return R_TRUNCATED
        if proto != 6:
            return R_NOT_TCP
        if flags_off & 0x3FFF:
            return R_FRAGMENT
        if tos_ecn & 0x03:
            quirks = Q_ECN
        if flags_off & 0x8000:
            quirks |= Q_NZ_MBZ
        if flags_off & 0x4000:
            quirks |= Q_DF | Q_NZ_ID if ip_id else Q_DF
        elif not ip_id:
            quirks |= Q_ZERO_ID
        tcp_off = off + hdr_len
        if hdr_len != 20:
            sport, dport, seq, ack, doff_rsvd, flags, win, _tcsum, urg = _unpack_tcp(data, tcp_off)
        packet_len -= hdr_len
        tot_hdr = hdr_len
        ip_opt_len = hdr_len - 20
        tos = tos_ecn >> 2
    elif ver == 6:
        ver_tos, pay_len6, nxt, ttl, src, dst = _unpack_ip6(data, off)
        tot_len = pay_len6 + 40
        if packet_len > tot_len:
            packet_len = tot_len
        if packet_len < 60 or tot_len > packet_len:
            return R_TRUNCATED
        tcp_off = off + 40
        ext_len = 0
        if nxt != 6:
            if mode.ipv6_ext_refused and (nxt in _IPV6_EXT or nxt == 44):
                return R_IPV6_EXT
            end = off + packet_len
            while nxt != 6:
                if tcp_off + 8 > end:
                    return R_TRUNCATED
                if nxt == 44:
                    # Only an atomic fragment (offset 0, no more fragments)
                    # holds a whole TCP header.
                    if _unpack_u16(data, tcp_off + 2)[0] & 0xFFF9:
                        return R_FRAGMENT
                    step = 8
                elif nxt in _IPV6_EXT:
                    step = (data[tcp_off + 1] + 1) * 8
                else:
                    return R_NOT_TCP
                nxt = data[tcp_off]
                tcp_off += step
                ext_len += step
            if tcp_off + 20 > end:
                return R_TRUNCATED
        sport, dport, seq, ack, doff_rsvd, flags, win, _tcsum, urg = _unpack_tcp(data, tcp_off)
        if ver_tos & 0xFFFFF:
            quirks = Q_FLOW
        if (ver_tos >> 20) & 0x03:
            quirks |= Q_ECN
        tos = (ver_tos >> 22) & 0x3F
        ip_opt_len = ext_len
        tot_hdr = 40 + ext_len
        packet_len -= tot_hdr
    else:
        return R_NOT_IP

    doff = (doff_rsvd >> 4) * 4
    if doff < 20:
        return R_BAD_TCP
    if doff > packet_len:
        return R_TRUNCATED
    tot_hdr += doff
    tcp_type = flags & 0x17  # SYN|ACK|FIN|RST
    if (flags & SYN and flags & (FIN | RST)) or (flags & FIN and flags & RST) or not tcp_type:
        return R_BAD_FLAGS

    if flags & (ECE | CWR) or doff_rsvd & 0x01:
        quirks |= Q_ECN
    if not seq:
        quirks |= Q_ZERO_SEQ
    if flags & ACK:
        if not ack:
            quirks |= Q_ZERO_ACK
    elif not flags & RST:
        if (ack & 0x01000000) if mode.ack_bit24 else ack:
            quirks |= Q_NZ_ACK
    if flags & URG:
        quirks |= Q_URG
    elif urg:
        quirks |= Q_NZ_URG
    if flags & PSH:
        quirks |= Q_PUSH
    pay_len = packet_len - doff

    if doff > 20:
        opt_start = tcp_off + 20
        layout, eol_pad, mss, wscale, opt_quirks, ts_at = options(data[opt_start : tcp_off + doff], mode)
        quirks |= opt_quirks
        if ts_at >= 0:
            ts1, ts2 = _unpack_ts(data, opt_start + ts_at)
            if not ts1:
                quirks |= Q_OPT_ZERO_TS1
            if ts2 and tcp_type == SYN:
                quirks |= Q_OPT_NZ_TS2
        else:
            ts1 = 0
    else:
        layout, eol_pad, mss, wscale, ts1 = b"", 0, 0, 0, 0

    return _new_packet(Packet, (
        ts, ver, src, dst, sport, dport, ttl, tos, ip_opt_len, tcp_type, seq, win, mss, wscale, ts1, layout,
        eol_pad, pay_len, tot_hdr, quirks,
        data[tcp_off + doff : tcp_off + doff + min(pay_len, 16)] if pay_len > 0 else b"",
        (ver, ttl, tos, ip_opt_len, quirks, tcp_type, win, mss, wscale, ts1 != 0, layout, eol_pad,
         pay_len != 0, tot_hdr),
    ))


_OptionsInfo = tuple[bytes, int, int, int, int, int]
# By (mode.eol_last_byte_missed, timestamp cut out of the key): a cut key must never meet an uncut one.
_option_memo: dict[tuple[bool, bool], dict[bytes, _OptionsInfo]] = {
    (missed, cut): {} for missed in (False, True) for cut in (False, True)
}
_OPTION_MEMO_MAX = 8192


def options(opts: bytes, mode: P0fMode = FIXED) -> _OptionsInfo:
    """(layout, eol_pad, mss, wscale, quirks, offset of the TS values or -1).

    Memoized: the option bytes of one stack differ from packet to packet only
    in their timestamp values, so those eight bytes are cut out of the key.
    The cut is trusted only where the walk found a timestamp option there.
    """
    at = opts.find(b"\x08\x0a")
    cut = at >= 0 and at + 10 <= len(opts)
    memo = _option_memo[mode.eol_last_byte_missed, cut]
    key = opts[: at + 2] + opts[at + 10 :] if cut else opts
    info = memo.get(key)
    if info is not None and (not cut or info[5] == at + 2):
        return info
    info = _walk_options(opts, mode)
    # Cache only when the cut bytes were the timestamp values the walk read.
    if not cut or info[5] == at + 2:
        if len(memo) >= _OPTION_MEMO_MAX:
            memo.clear()
        memo[key] = info
    return info


# Options p0f reads at a fixed size: kind -> (bytes after the kind, expected length byte).
_FIXED_OPTIONS = {OPT_MSS: (3, 4), OPT_WS: (2, 3), OPT_SACKOK: (1, 2), OPT_TS: (9, 10)}


def _walk_options(opts: bytes, mode: P0fMode) -> _OptionsInfo:
    """The option walk, byte for byte as p0f does it (including its fixed
    advances for MSS/WS/SACKOK/TS whatever their length byte says)."""
    quirks = mss = wscale = eol_pad = 0
    ts_at = -1
    end = len(opts)
    pos = 0
    kinds = bytearray()
    bad = False
    while pos < end and len(kinds) < MAX_TCP_OPT:
        kind = opts[pos]
        kinds.append(kind)
        pos += 1
        if kind == OPT_NOP:
            continue
        if kind == OPT_EOL:
            eol_pad = end - pos
            rest = opts[pos:]
            if rest.strip(b"\x00"):
                # p0f's loop steps past the first non-zero byte before it
                # tests, so a lone non-zero last byte escapes it.
                if not mode.eol_last_byte_missed or rest.lstrip(b"\x00") != rest[-1:]:
                    quirks |= Q_OPT_EOL_NZ
            pos = end
            break
        fixed = _FIXED_OPTIONS.get(kind)
        if fixed is not None:
            step, length = fixed
            if pos + step > end:
                bad = True
                break
            if opts[pos] != length:
                quirks |= Q_OPT_BAD  # flagged, but p0f reads it at its usual size anyway
            if kind == OPT_MSS:
                mss = _unpack_u16(opts, pos + 1)[0]
            elif kind == OPT_WS:
                wscale = opts[pos + 1]
                if wscale > 14:
                    quirks |= Q_OPT_EXWS
            elif kind == OPT_TS:
                ts_at = pos + 1
            pos += step
        else:
            # SACK (10..34 bytes) or an unknown option (2..40 bytes),
            # sized by its length byte.
            if pos == end:
                bad = True
                break
            olen = opts[pos]
            lo, hi = (10, 34) if kind == OPT_SACK else (2, 40)
            if olen < lo or olen > hi or pos - 1 + olen > end:
                bad = True
                break
            pos += olen - 1
    if bad or pos != end:
        quirks |= Q_OPT_BAD
    return bytes(kinds), eol_pad, mss, wscale, quirks, ts_at


def quirks_to_str(quirks: int) -> str:
    return ",".join(tok for tok, bit in QUIRK_TOKENS if quirks & bit)
