"""Reading packets: pcap / pcapng files through libpcap (pcapy-ng).

libpcap does the file parsing and runs the BPF filter in C, so only the
packets we want ever reach Python; records come out in batches to keep the
C-to-Python crossings few.  Gzip-compressed captures are streamed through a
decompressing child process into a pipe that libpcap reads, so memory stays
flat however large the file.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pcapy

BATCH = 512
_META = struct.Struct("=IIII")  # sec, usec, offset, caplen

_GUNZIP = (
    "import gzip, shutil, sys\n"
    "try:\n"
    "    shutil.copyfileobj(gzip.open(sys.argv[1], 'rb'), sys.stdout.buffer, 1 << 20)\n"
    "except (OSError, EOFError) as exc:\n"
    "    sys.stderr.write(f'{sys.argv[1]}: {exc}\\n'); sys.exit(1)\n"
    "except BrokenPipeError:\n"
    "    pass\n"
)


class CaptureError(Exception):
    """A capture that cannot be opened or read; the message says why."""


def ports_filter(ports: list[int] | tuple[int, ...], vlan: bool = True, extended: bool = True) -> str:
    """BPF for SYNs and SYN+ACKs on the given ports, IPv4 and IPv6.

    ``tcp[13]`` only compiles for IPv4, so IPv6 tests the flags byte at its
    fixed offset.  `extended` also lets through IPv6 packets with extension
    headers (for the parser to judge) and double VLAN tags, which p0f never
    reads.
    """
    port = " or ".join(f"port {p}" for p in ports)
    base = f"(tcp[13] & 2 != 0 and ({port})) or (ip6 and tcp and ({port}) and ip6[53] & 2 != 0)"
    if extended:
        base += " or (ip6 protochain 6 and not ip6 proto 6)"
    return _with_vlans(base, vlan, extended)


def all_tcp_filter(vlan: bool = True, extended: bool = True) -> str:
    """Every TCP packet: p0f's own default, plus what `extended` adds."""
    base = "tcp or (ip6 protochain 6)" if extended else "tcp"
    return _with_vlans(base, vlan, extended)


def _with_vlans(base: str, vlan: bool, extended: bool) -> str:
    if not vlan:
        return base
    expr = f"({base}) or (vlan and ({base}))"
    # libpcap's `vlan` shifts the offsets of everything after it, so a second
    # `vlan` branch reads behind two tags (802.1ad QinQ).
    return expr + f" or (vlan and ({base}))" if extended else expr


@dataclass
class Offline:
    """An opened capture file; iterate `batches()` for (sec, usec, frame)."""

    path: str
    reader: object
    linktype: int
    size: int  # bytes on disk, for progress
    child: subprocess.Popen | None = None

    def batches(self) -> Iterator[list[tuple[int, int, bytes]]]:
        reader = self.reader
        unpack = _META.iter_unpack
        try:
            while True:
                try:
                    blob, meta = reader.next_batch(BATCH)  # type: ignore[attr-defined]
                except pcapy.PcapError as exc:
                    raise CaptureError(f"{self.path}: {exc}") from None
                if not meta:
                    break
                yield [(s, u, blob[o : o + n]) for s, u, o, n in unpack(meta)]
        finally:
            self.close()
        if self.child is not None and self.child.wait() != 0:
            err = self.child.stderr.read().decode(errors="replace").strip() if self.child.stderr else ""
            raise CaptureError(err or f"{self.path}: cannot decompress")

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()  # type: ignore[attr-defined]
            self.reader = None
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait()


def open_offline(path: str, bpf: str | Callable[[int], str] | None) -> Offline:
    """Open a pcap/pcapng file (optionally gzip-compressed) with a BPF filter.

    `bpf` may be a function of the file's link type, for filters that only
    some link types can carry.
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        size = os.path.getsize(path)
    except OSError as exc:
        raise CaptureError(f"{path}: {exc.strerror or exc}") from None
    child = None
    source = path
    if magic[:2] == b"\x1f\x8b":
        child = subprocess.Popen(
            [sys.executable, "-c", _GUNZIP, path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        source = f"/dev/fd/{child.stdout.fileno()}"
    try:
        reader = pcapy.open_offline(source)
    except pcapy.PcapError as exc:
        if child is not None:
            child.kill()
            child.wait()
        raise CaptureError(f"{path}: not a pcap or pcapng capture ({exc})") from None
    if callable(bpf):
        bpf = bpf(reader.datalink())
    if bpf:
        try:
            reader.setfilter(bpf)
        except pcapy.PcapError as exc:
            reader.close()
            raise CaptureError(f"bad filter {bpf!r}: {exc}") from None
    return Offline(path, reader, reader.datalink(), size, child)


def compile_filter(bpf: str, linktype: int = 1) -> str | None:
    """None if libpcap accepts the filter for this link type, else its error."""
    try:
        pcapy.compile(linktype, 65535, bpf, 1, 0)
    except pcapy.PcapError as exc:
        return str(exc)
    return None
