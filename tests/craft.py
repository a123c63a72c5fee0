"""Crafting test SYNs with scapy, down to the byte.

scapy builds the IP and link layers (and their lengths and checksums); the
TCP options go in as raw bytes counted by the data offset, because p0f's
fingerprint depends on option bytes scapy would normalise (EOL padding,
bytes after EOL, bad lengths).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from scapy.all import (  # type: ignore[attr-defined]
    IP,
    TCP,
    CookedLinux,
    CookedLinuxV2,
    Dot1AD,
    Dot1Q,
    Ether,
    IPOption,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    Loopback,
    PcapWriter,
    Raw,
)

from fingerprintd.packet import QUIRK_TOKENS
from fingerprintd.signatures import WIN_ANY, WIN_MOD, WIN_MSS, WIN_MTU, WIN_NORMAL, TcpSig


@dataclass
class Shape:
    """Everything about a SYN that a fingerprint can see."""

    ver: int = 4
    ttl: int = 64
    ip_opts: bytes = b""
    mss: int = 1460
    win: int = 29200
    wscale: int = 7
    layout: tuple = ("mss", "sok", "ts", "nop", "ws")
    eol_pad: int = 0
    quirks: frozenset = frozenset({"df", "id+"})
    payload: bytes = b""
    tos: int = 0  # DSCP
    ts1: int = 123456
    ts2: int = 0
    synack: bool = False
    ack_value: int | None = None  # overrides the ack number
    opt_nz_last: bool = False  # put opt+'s non-zero byte last (p0f misses it)
    raw_options: bytes | None = None  # the TCP option bytes as given, in place of layout (padded to 4)
    extra: dict = field(default_factory=dict)


# Shapes that p0f's database names (verified by the conformance tests).
STACKS = {
    "linux": Shape(ttl=55, mss=1460, win=29200, wscale=7),  # Linux 3.11 and newer
    "win7": Shape(ttl=117, mss=1460, win=8192, wscale=8, layout=("mss", "nop", "ws", "nop", "nop", "sok")),
    "winxp": Shape(ttl=113, mss=1460, win=65535, wscale=0, layout=("mss", "nop", "nop", "sok")),
    "freebsd": Shape(ttl=60, mss=1460, win=65535, wscale=6, layout=("mss", "nop", "ws", "sok", "ts")),
    "unknown": Shape(ttl=60, mss=1460, win=1234, wscale=3, layout=("mss", "ws", "nop", "sok")),
    "nmap": Shape(ttl=50, mss=1460, win=1024, wscale=0, layout=("mss",), quirks=frozenset()),
    "android": Shape(ttl=62, mss=1400, win=65535, wscale=8),  # Linux Android 8 and newer
    "masscan": Shape(ttl=250, mss=0, win=1024, wscale=0, layout=(), quirks=frozenset()),
}


def options_bytes(shape: Shape, rng: random.Random) -> bytes:
    q = shape.quirks
    if shape.raw_options is not None:
        return shape.raw_options + bytes(-len(shape.raw_options) % 4)
    out = bytearray()
    for tok in shape.layout:
        if tok == "nop":
            out += b"\x01"
        elif tok == "mss":
            out += bytes([2, 5 if "bad" in q else 4]) + shape.mss.to_bytes(2, "big")
        elif tok == "ws":
            out += bytes([3, 3, shape.wscale])
        elif tok == "sok":
            out += b"\x04\x02"
        elif tok == "sack":
            out += b"\x05\x0a" + rng.randbytes(8)
        elif tok == "ts":
            ts1 = 0 if "ts1-" in q else shape.ts1
            ts2 = shape.ts2 or (rng.randrange(1, 1 << 32) if "ts2+" in q else 0)
            out += b"\x08\x0a" + ts1.to_bytes(4, "big") + ts2.to_bytes(4, "big")
        elif tok == "eol":
            pad = bytearray(shape.eol_pad)
            if "opt+" in q and pad:
                pad[-1 if shape.opt_nz_last else 0] = rng.randrange(1, 256)
            out += b"\x00" + pad
        elif tok.startswith("?"):
            out += bytes([int(tok[1:]), 2])
        else:
            raise ValueError(tok)
    if "bad" in q and "mss" not in shape.layout:
        out += b"\x02\x07"  # an option running past the header: parsing aborts
    if len(out) % 4:
        out += bytes(4 - len(out) % 4)  # pad with EOL: the layout gains an eol
    return bytes(out[:40])


def tcp_layer(shape: Shape, sport: int, dport: int, seq: int, rng: random.Random, ack: int = 0):
    q = shape.quirks
    opts = options_bytes(shape, rng)
    flags = "SA" if shape.synack else "S"
    if "ecn" in q and shape.extra.get("ecn_via") != "ip":
        flags += "EC" if not shape.synack else "E"
    if "urgf+" in q:
        flags += "U"
    if "pushf+" in q:
        flags += "P"
    if "ack-" in q and shape.synack:
        ack = 0
    elif "ack+" in q and not shape.synack:
        ack = shape.ack_value if shape.ack_value is not None else 0x01000000 | rng.randrange(1 << 24)
    urg = rng.randrange(1, 65536) if "uptr+" in q else 0
    seq = 0 if "seq-" in q else seq
    return TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=shape.win, urgptr=urg,
               dataofs=5 + len(opts) // 4) / Raw(opts + shape.payload)


def ip_layer(shape: Shape, src: str, dst: str, rng: random.Random):
    q = shape.quirks
    ecn = 2 if "ecn" in q and shape.extra.get("ecn_via") == "ip" else 0
    if shape.ver == 6:
        flow = rng.randrange(1, 1 << 20) if "flow" in q else 0
        return IPv6(src=src, dst=dst, hlim=shape.ttl, fl=flow, tc=(shape.tos << 2) | ecn)
    df = "df" in q
    if df:
        ip_id = rng.randrange(1, 65536) if "id+" in q else 0
    else:
        ip_id = 0 if "id-" in q else rng.randrange(1, 65536)
    flags = (2 if df else 0) | (4 if "0+" in q else 0)
    opts = [IPOption(shape.ip_opts)] if shape.ip_opts else []
    return IP(src=src, dst=dst, ttl=shape.ttl, flags=flags, id=ip_id, tos=(shape.tos << 2) | ecn, options=opts)


def frame(shape: Shape, src: str, dst: str, sport: int, dport: int, rng: random.Random,
          seq: int = 1000, ack: int = 0, link: str = "ether", vlans: tuple[int, ...] = (), ext6: tuple = ()):
    """One scapy packet, ready for a pcap writer."""
    ip = ip_layer(shape, src, dst, rng)
    for ext in ext6:
        ip = ip / ext
    pkt = ip / tcp_layer(shape, sport, dport, seq, rng, ack)
    if link == "ether":
        eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        for i, vid in enumerate(vlans):
            eth = eth / (Dot1AD(vlan=vid) if i == 0 and len(vlans) > 1 else Dot1Q(vlan=vid))
        return eth / pkt
    if link == "sll":
        return CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02\0\0\0\0\x01\0\0") / pkt
    if link == "sll2":
        return CookedLinuxV2(pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02\0\0\0\0\x01\0\0") / pkt
    if link == "null":
        return Loopback(type=2 if shape.ver == 4 else 24) / pkt
    if link == "raw":
        return pkt
    raise ValueError(link)


def write_pcap(path, packets, linktype: int | None = None) -> None:
    with PcapWriter(str(path), linktype=linktype, sync=False) as w:
        for p in packets:
            w.write(p)


# --- shapes from signatures -------------------------------------------------

_MSS_CHOICES = (1460, 1460, 1452, 1440, 1400, 1380, 1360, 536, 1220)
_LAYOUT_NAMES = {0: "eol", 1: "nop", 2: "mss", 3: "ws", 4: "sok", 5: "sack", 8: "ts"}


def _window(sig: TcpSig, mss: int, syn_mss: int, rng: random.Random) -> int:
    if sig.win_type == WIN_NORMAL:
        return sig.win
    if sig.win_type == WIN_MOD:
        return min(sig.win * rng.randrange(1, 8), 65535 - 65535 % sig.win)
    if sig.win_type == WIN_MSS:
        base = syn_mss if (sig.label and rng.random() < 0.3 and syn_mss) else mss
        return min(65535, sig.win * base) if base else sig.win
    if sig.win_type == WIN_MTU:
        return min(65535, sig.win * (mss + 40))
    assert sig.win_type == WIN_ANY
    return rng.randrange(1, 65536)


def shape_from_sig(sig: TcpSig, rng: random.Random, ver: int | None = None, syn_mss: int = 1460) -> Shape:
    """A packet the line was written for (the oracle decides what it matches)."""
    ver = ver or sig.ver or rng.choice((4, 4, 6))
    if sig.bad_ttl:
        ttl = rng.randrange(max(1, sig.ttl - 30), sig.ttl + 1)
    else:
        ttl = max(1, sig.ttl - rng.randrange(0, 20))
    mss = sig.mss if sig.mss is not None else rng.choice(_MSS_CHOICES)
    quirks = {tok for tok, bit in QUIRK_TOKENS if sig.quirks & bit}
    if ver == 6:
        quirks -= {"df", "id+", "id-", "0+"}
    else:
        quirks.discard("flow")
    layout = tuple(_LAYOUT_NAMES.get(k, f"?{k}") for k in sig.layout)
    wscale = sig.wscale if sig.wscale is not None else rng.randrange(0, 15)
    payload = b""
    if sig.pclass == 1 or (sig.pclass is None and rng.random() < 0.3):
        payload = rng.randbytes(rng.randrange(1, 30))
    ip_opts = bytes([1] * sig.olen) if ver == 4 and sig.olen % 4 == 0 else b""
    return Shape(
        ver=ver, ttl=ttl, ip_opts=ip_opts, mss=mss, win=_window(sig, mss, syn_mss, rng), wscale=wscale,
        layout=layout, eol_pad=sig.eol_pad, quirks=frozenset(quirks), payload=payload,
        ts1=rng.randrange(1, 1 << 32),
    )


def mutations(base: Shape, sig: TcpSig, rng: random.Random) -> list[tuple[str, Shape]]:
    """Variants that walk the fuzzy, generic and unknown paths."""
    q = base.quirks
    out = [("exact", base)]
    out.append(("far", replace(base, ttl=max(1, base.ttl - rng.randrange(5, 40)))))
    if base.ttl < 255:
        out.append(("ttl-above", replace(base, ttl=rng.randrange(base.ttl + 1, 256))))
    if "df" in q:
        out.append(("no-df", replace(base, quirks=q - {"df", "id+"})))
    if base.ver == 4 and "df" not in q and "id-" not in q:
        out.append(("add-id-", replace(base, quirks=q | {"id-"})))
    if "ecn" not in q:
        out.append(("add-ecn", replace(base, quirks=q | {"ecn"}, extra={"ecn_via": rng.choice(("ip", "tcp"))})))
    out.append(("mss+1", replace(base, mss=(base.mss + 1) % 65536)))
    out.append(("win+1", replace(base, win=(base.win + 1) % 65536)))
    out.append(("wscale", replace(base, wscale=(base.wscale + 1) % 15)))
    extra = rng.choice(("pushf+", "urgf+", "seq-", "uptr+", "ts2+", "exws", "0+", "bad", "ack+", "opt+"))
    shape = replace(base, quirks=q | {extra})
    if extra == "exws":
        shape = replace(shape, wscale=rng.randrange(15, 256))
    if extra == "opt+" and base.eol_pad < 2:  # a lone pad byte would be p0f's blind spot
        shape = replace(shape, layout=tuple(t for t in base.layout if t != "eol") + ("eol",), eol_pad=3)
    out.append((extra, shape))
    out.append(("payload", replace(base, payload=b"" if base.payload else b"hello")))
    out.append(("tos", replace(base, tos=rng.randrange(1, 64))))
    if base.ver == 6:
        out.append(("flow", replace(base, quirks=q | {"flow"})))
    elif sig.ver is None:
        out.append(("as-v6", replace(base, ver=6, quirks=q - {"df", "id+", "id-", "0+"}, ip_opts=b"")))
    return out


__all__ = [
    "Shape", "STACKS", "frame", "write_pcap", "shape_from_sig", "mutations", "options_bytes",
    "Ether", "IP", "IPv6", "TCP", "Raw", "IPv6ExtHdrHopByHop", "IPv6ExtHdrDestOpt", "IPv6ExtHdrFragment",
]
