"""Helpers shared by test modules and benchmarks (test modules import from here, never from each other).

Plain Python only: benchmark servers import it too, so it pulls in neither scapy nor pytest. SYNs shaped
down to the byte with scapy are in tests/craft.py; `raw_syns` here is the fast bulk builder for floods.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "kernel-syn.pcap"
SA_CONTRIB = ROOT / "contrib" / "spamassassin"

# The TCP options of a Linux SYN (mss 1460, sok, ts, nop, ws 7): 20 bytes, so the data offset is 10.
_LINUX_OPTIONS = bytes.fromhex("020405b4") + b"\x04\x02" + b"\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"


def fpd(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m fingerprintd ARGS` as a user runs it, from the checkout."""
    proc = subprocess.run([sys.executable, "-m", "fingerprintd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def raw_syns(n: int, dst_ip: str, src_base: int = 0x0B000000,
             dst_mac: bytes = b"\x02\x00\x00\x00\x00\x02") -> list[bytes]:
    """n Linux-shaped SYNs to dst_ip:25 as Ethernet frames, from n spoofed sources (src_base + i * 7919
    within a /8, source port 1024 + i % 60000); built with struct, fast enough for floods."""
    dst = socket.inet_aton(dst_ip)
    opts = _LINUX_OPTIONS
    out = []
    for i in range(n):
        src = struct.pack("!I", src_base + i * 7919 % (1 << 24))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + len(opts), i & 0xFFFF or 1, 0x4000, 50, 6, 0, src, dst)
        tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, 25, i + 1, 0, (5 + len(opts) // 4) << 4, 0x02, 29200, 0, 0)
        out.append(dst_mac + b"\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp + opts)
    return out


def raw_syn_source(i: int, src_base: int = 0x0B000000) -> tuple[str, int]:
    """The source address and port of raw_syns' i-th SYN."""
    return socket.inet_ntoa(struct.pack("!I", src_base + i * 7919 % (1 << 24))), 1024 + i % 60000


def sa_site_dir() -> Path:
    """A SpamAssassin site config dir spamd's unprivileged children can read, with the stock .pre files
    (they load the Check plugin and friends; --siteconfigpath replaces the whole directory)."""
    site = Path(tempfile.mkdtemp(prefix="fpd-sa-"))
    os.chmod(site, 0o755)
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site / pre.name)
    return site
