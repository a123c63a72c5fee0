"""Reading packets: pcap / pcapng files through libpcap (pcapy-ng).

libpcap does the file parsing and runs the BPF filter in C, so only the
packets we want ever reach Python; records come out in batches to keep the
C-to-Python crossings few.  Gzip-compressed captures are streamed through a
decompressing child process into a pipe that libpcap reads, so memory stays
flat however large the file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pcapy

from fingerprintd.engine import split_batch

BATCH = 512  # live: what libpcap has ready is usually less
OFFLINE_BATCH = 4096  # a file: fewer, larger batches (one Python round trip per batch)

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


def ports_filter(ports: list[int] | tuple[int, ...], vlan: bool = True, qinq: bool = True,
                 ext_headers: bool = True, synack: bool = True) -> str:
    """BPF for SYNs and SYN+ACKs on the given ports, IPv4 and IPv6.

    ``tcp[13]`` only compiles for IPv4, so IPv6 tests the flags byte at its
    fixed offset.  `ext_headers` also lets through IPv6 packets with extension
    headers, for the parser to judge (offline only: the kernel refuses the
    loop that walks them); `qinq` reads behind two VLAN tags.  p0f reads
    neither.  Without `synack`, only SYNs (no ACK flag) *to* the ports pass:
    what a service answering about its clients needs.
    """
    port = " or ".join(f"{'' if synack else 'dst '}port {p}" for p in ports)
    flags = "& 2 != 0" if synack else "& 0x12 == 2"
    base = f"(tcp[13] {flags} and ({port})) or (ip6 and tcp and ({port}) and ip6[53] {flags})"
    if ext_headers:
        base += " or (ip6 protochain 6 and not ip6 proto 6)"
    return _with_vlans(base, vlan, qinq)


def all_tcp_filter(vlan: bool = True, qinq: bool = True, ext_headers: bool = True) -> str:
    """Every TCP packet: p0f's own default, plus what the options add."""
    return _with_vlans("tcp or (ip6 protochain 6)" if ext_headers else "tcp", vlan, qinq)


def _with_vlans(base: str, vlan: bool, qinq: bool) -> str:
    if not vlan:
        return base
    expr = f"({base}) or (vlan and ({base}))"
    # libpcap's `vlan` shifts the offsets of everything after it, so a second
    # `vlan` branch reads behind two tags (802.1ad QinQ).
    return expr + f" or (vlan and ({base}))" if qinq else expr


class Offline:
    """An opened capture file; iterate `batches()` for (sec, usec, frame).

    (Plain classes here, not dataclasses: making one costs every command about a millisecond of start.)"""

    __slots__ = ("path", "reader", "linktype", "size", "child")

    def __init__(self, path: str, reader: object, linktype: int, size: int,
                 child: subprocess.Popen | None = None) -> None:  # noqa: F821 - imported where a child is made
        self.path = path
        self.reader = reader
        self.linktype = linktype
        self.size = size  # bytes on disk, for progress
        self.child = child

    def batches(self) -> Iterator[list[tuple[int, int, bytes]]]:
        for blob, meta in self.raw_batches():
            yield split_batch(blob, meta)

    def raw_batches(self) -> Iterator[tuple[bytes, bytes]]:
        """next_batch's (buffer, metadata) pairs as they come, for Engine.feed_blob."""
        reader = self.reader
        try:
            while True:
                try:
                    blob, meta = reader.next_batch(OFFLINE_BATCH)  # type: ignore[attr-defined]
                except pcapy.PcapError as exc:
                    raise CaptureError(f"{self.path}: {exc}") from None
                if not meta:
                    break
                yield blob, meta
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
        import subprocess  # here: only compressed files need it, and every replay would pay its import

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


def per_link(make: Callable[[bool], str]) -> Callable[[int], str]:
    """A filter for open_offline: `make(True)`, with its VLAN clauses, where the
    file's link type can carry them, else `make(False)`."""

    def for_link(linktype: int) -> str:
        expr = make(True)
        return expr if compile_filter(expr, linktype) is None else make(False)

    return for_link


class PrivilegeError(CaptureError):
    """Capturing needs CAP_NET_RAW (and CAP_NET_ADMIN for some interfaces)."""


class Live:
    """One open live capture handle (non-blocking, selectable)."""

    __slots__ = ("interface", "handle", "linktype")

    def __init__(self, interface: str, handle: object, linktype: int) -> None:
        self.interface = interface
        self.handle = handle
        self.linktype = linktype

    def fileno(self) -> int:
        return self.handle.getfd()  # type: ignore[attr-defined]

    def read_raw(self) -> tuple[bytes, bytes]:
        """What libpcap has ready now as next_batch's (buffer, metadata), for Engine.feed_blob; empty metadata
        when nothing is."""
        try:
            return self.handle.next_batch(BATCH)  # type: ignore[attr-defined]
        except pcapy.PcapError as exc:
            raise CaptureError(f"{self.interface}: {exc}") from None

    def stats(self) -> tuple[int, int, int]:
        """(received, dropped by the kernel, dropped by the interface) since opening."""
        try:
            return tuple(self.handle.stats())  # type: ignore[attr-defined,return-value]
        except pcapy.PcapError:
            return (0, 0, 0)

    def close(self) -> None:
        self.handle.close()  # type: ignore[attr-defined]


# pcap_activate()'s failure codes (pcap/pcap.h).
_ACTIVATE_ERRORS = {
    -1: "generic error",
    -4: "the interface is already active",
    -5: "no such device",
    -6: "rfmon not supported",
    -7: "not supported",
    -8: "permission denied",
    -9: "the interface is not up",
    -11: "permission denied (promiscuous mode)",
    -12: "the requested timestamp precision is not supported",
}


def open_live(interface: str, bpf: Callable[[int], str], snaplen: int = 256, buffer_mb: int = 8,
              timeout_ms: int = 1) -> Live:
    """Open an interface ("any" for all) with a kernel BPF filter.

    The read timeout bounds how long a captured SYN can wait in libpcap's
    ring before we see it (TPACKET_V3 hands over blocks on timeout), so it
    is short: a milter asks about a connection milliseconds after its SYN.
    """
    try:
        h = pcapy.create(interface)
        h.set_snaplen(snaplen)
        h.set_promisc(0)
        h.set_timeout(timeout_ms)
        h.set_buffer_size(buffer_mb << 20)
        status = h.activate()  # pcapy-ng returns libpcap's status code rather than raising
        if status in _ACTIVATE_ERRORS:
            raise pcapy.PcapError(_ACTIVATE_ERRORS[status])
    except pcapy.PcapError as exc:
        text = str(exc)
        if "ermission" in text or "not permitted" in text:
            raise PrivilegeError(
                f"cannot capture on {interface}: {text}. Capturing needs CAP_NET_RAW: run as root "
                f"(and use --user to drop privileges after opening), or grant it with "
                f"'setcap cap_net_raw,cap_net_admin=eip {os.path.realpath(sys.executable)}'"
            ) from None
        raise CaptureError(f"cannot capture on {interface}: {text}") from None
    linktype = h.datalink()
    expr = bpf(linktype)
    try:
        h.setfilter(expr)
    except pcapy.PcapError as exc:
        h.close()
        raise CaptureError(f"bad filter {expr!r} on {interface}: {exc}") from None
    h.setnonblock(1)
    return Live(interface, h, linktype)
