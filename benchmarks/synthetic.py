"""Synthetic SYN captures for benchmarks: a realistic port-25 mix, fast to make.

Each stack shape is built once with scapy; per packet only the fields that
vary (source address and port, sequence number, TTL, MSS) are patched into a
copy of its bytes, so a million-SYN file takes seconds rather than minutes.
Checksums are left stale: neither p0f nor fingerprintd checks them.
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

from tests.craft import Shape, frame

# (weight, initial TTL, window (None: 44*mss), wscale, raw TCP options with MSS placeholder, DF/ID, ecn)
_LINUX = b"\x02\x04MM\x04\x02\x08\x0a\x00\x01\x02\x03\x00\x00\x00\x00\x01\x03\x03\x07"
_WIN = b"\x02\x04MM\x01\x03\x03\x08\x01\x01\x04\x02"
_MAC = b"\x02\x04MM\x01\x03\x03\x06\x01\x01\x08\x0a\x00\x01\x02\x03\x00\x00\x00\x00\x04\x02\x00\x00"
_OLD = b"\x02\x04MM"
_BSD = b"\x02\x04MM\x01\x03\x03\x06\x04\x02\x08\x0a\x00\x01\x02\x03\x00\x00\x00\x00"
_SOLARIS = b"\x01\x01\x08\x0a\x00\x01\x02\x03\x00\x00\x00\x00\x02\x04MM\x01\x03\x03\x00\x01\x01\x04\x02"
SHAPES = [
    (30, 64, None, 7, _LINUX, True),  # Linux 4+: 64240
    (25, 128, 64240, 8, _WIN, True),  # Windows 10/11
    (12, None, None, None, None, None),  # junk: random options, TTL, window
    (10, 64, 20, 7, _LINUX, True),  # Linux 3.11: mss*20
    (8, 64, 65535, 6, _MAC, True),  # macOS
    (5, 128, 8192, 8, _WIN, True),  # Windows 7
    (4, 64, 65535, 6, _BSD, True),  # FreeBSD
    (3, 64, 5840, 0, _OLD, False),  # bare, no DF
    (2, 64, 16384, 3, _BSD, True),  # OpenBSD-ish
    (1, 255, 49640, 0, _SOLARIS, True),  # Solaris-ish
]
MSS_CHOICES = (1460, 1460, 1460, 1452, 1440, 1400, 1380, 1360, 1412, 536)


def _template(ver: int, opts: bytes, win: int, df: bool) -> bytes:
    """One SYN of the shape, built by tests/craft.py (an IPv4 one with a non-zero IP ID)."""
    shape = Shape(ver=ver, ttl=64, win=win, raw_options=opts,
                  quirks=frozenset({"df", "id+"} if df and ver == 4 else ()))
    src, dst = ("198.18.0.1", "192.0.2.25") if ver == 4 else ("2001:db8::1", "2001:db8::25")
    return bytes(frame(shape, src, dst, 1, 25, random.Random(len(opts)), seq=1))


def generate(path: Path, count: int, seed: int = 1, ipv6_share: float = 0.1, hosts: int | None = None,
             stacks: int | None = None) -> Path:
    """Write `count` SYNs to port 25 as a classic pcap; `hosts` bounds the distinct sources.

    With `stacks`, each source keeps one stack for all its SYNs (shape, MSS, TTL distance, IP version), drawn
    from that many: a mail server's day, where thousands of senders run a few hundred stacks.  Without it
    every SYN draws its own (cold, adversarial: most SYNs are a stack the matcher has not seen).
    """
    rng = random.Random(seed)
    weights = [s[0] for s in SHAPES]
    pack_rec = struct.Struct("<IIII").pack
    templates: dict[tuple, bytes] = {}
    t0 = 1_700_000_000
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(count):
            if stacks:  # the source first: its stack follows from it
                n = rng.randrange(hosts) if hosts else i
                draw = random.Random(seed * 7919 + (n * 2654435761) % stacks)
            else:  # the draws in the order they always had, so earlier captures are made again byte for byte
                draw = rng
            _, ittl, win, ws, opts, df = draw.choices(SHAPES, weights)[0]
            ver = 6 if draw.random() < ipv6_share else 4
            if opts is None:  # junk: random option kinds, TTL and window
                opts = bytes(draw.choice((1, 2, 3, 4, 8, 30)) for _ in range(draw.choice((0, 4, 8))))
                ittl, win, df = draw.choice((32, 64, 128, 255)), draw.randrange(65536), draw.random() < 0.5
            else:
                mss = draw.choice(MSS_CHOICES)
                opts = opts.replace(b"MM", mss.to_bytes(2, "big"))
                if b"\x03\x03" in opts:
                    k = opts.index(b"\x03\x03") + 2
                    opts = opts[:k] + bytes([ws]) + opts[k + 1:]
                win = mss * 44 if win is None else (mss * win if win < 100 else win)
            key = (ver, opts, bool(df))
            if key not in templates:
                templates[key] = _template(ver, opts, 0, bool(df))
            frame = bytearray(templates[key])
            if not stacks:
                n = rng.randrange(hosts) if hosts else i
            ttl = max(1, ittl - draw.randrange(0, 26))
            # Sources scattered over the address space (198.18/15 would crowd one prefix).
            if ver == 4:
                frame[22] = ttl
                frame[26:30] = struct.pack("!I", (n * 2654435761 + 0x01000000) & 0xFFFFFFFF)
                tcp = 34
            else:
                frame[21] = ttl
                frame[22:38] = b"\x20\x01\x0d\xb8" + struct.pack("!QI", n * 11400714819323198485 % (1 << 64), n)
                tcp = 54
            struct.pack_into("!HHI", frame, tcp, 1024 + n % 64000, 25, rng.randrange(1, 1 << 32))
            struct.pack_into("!H", frame, tcp + 14, min(win, 65535))
            fh.write(pack_rec(t0 + i // 2000, (i % 2000) * 500, len(frame), len(frame)))
            fh.write(frame)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1])
    generate(out, int(sys.argv[2]) if len(sys.argv) > 2 else 200_000)
    print(out)
