"""Drop-ins for what mail filters already speak: p0f's v3 API socket and the
p0f-analyzer UDP protocol (amavisd-new).

Both answer from the service's host table.  The encoders are pure functions;
the servers are small selector loops in their own threads.

p0f v3 API (rspamd, Haraka, milter-greylist): a unix stream socket; 21-byte
queries (magic 0x50304601 native-endian, address type 4 or 6, 16 address
bytes) answered by 232-byte responses (p0f's api.h layout).  Unlike p0f 3.09b:
any number of pipelined queries per connection and of connections, strings
always NUL-terminated within their 32 bytes, and an IPv4-mapped IPv6 query
finds the IPv4 client.

p0f-analyzer (amavisd's `$os_fingerprint_method = 'p0f:127.0.0.1:2345'`): a
datagram "QUERY NONCE" gets "QUERY NONCE RESULT\\r\\n", RESULT in the p0f v3
analyzer form ("Linux 3.11 and newer; dist: 6; link: ...; params: ...;
raw_mtu: 1500; raw_sig: ..."), empty when the connection is unknown.  Only
allowed client networks get answers; malformed datagrams get none, as with
the original.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import selectors
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

from fingerprintd.engine import Observation
from fingerprintd.hosts import AddressError, HostRecord, HostTable, normalize_ip
from fingerprintd.unixsock import remove_stale_socket

log = logging.getLogger("fingerprintd")

QUERY_MAGIC = 0x50304601
RESPONSE_MAGIC = 0x50304602
STATUS_BAD_QUERY, STATUS_OK, STATUS_NO_MATCH = 0x00, 0x10, 0x20
MATCH_FUZZY, MATCH_GENERIC = 1, 2
QUERY_SIZE = 21
_QUERY = struct.Struct("=IB16s")
_RESPONSE = struct.Struct("=IIIIIIIIIhBB32s32s32s32s32s32s")
RESPONSE_SIZE = _RESPONSE.size  # 232


def _cstr(text: str) -> bytes:
    """At most 31 bytes and a NUL: p0f could fill all 32 and leave no terminator."""
    return text.encode("utf-8", "replace")[:31]


def p0f_response(status: int, host: HostRecord | None = None) -> bytes:
    if status != STATUS_OK or host is None:
        return _RESPONSE.pack(RESPONSE_MAGIC, status, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b"", b"", b"", b"", b"", b"")
    match = host.last_match
    fp = match.fp if match is not None else None
    label = fp.label if fp is not None else None
    quality = (MATCH_FUZZY if fp and fp.fuzzy else 0) | (MATCH_GENERIC if fp and fp.generic else 0)
    latest = host.latest.fp if host.latest is not None else None
    # Changing OS more than once in the window looks like several hosts behind one address.
    last_nat = int(host.last_change) if host.changes >= 2 else 0
    return _RESPONSE.pack(
        RESPONSE_MAGIC, STATUS_OK, int(host.first_seen), int(host.last_seen), min(host.count, 0xFFFFFFFF),
        0, 0, last_nat, int(host.last_change), min(host.last_distance, 0x7FFF), 0, quality,
        _cstr(label.name) if label else b"", _cstr(label.flavor or "") if label else b"", b"", b"",
        _cstr(latest.link or "") if latest is not None and latest.raw_mtu else b"", b"",
    )


def p0f_answer(query: bytes, hosts: HostTable) -> bytes:
    """The 232-byte answer to one 21-byte query."""
    magic, kind, raw = _QUERY.unpack(query)
    if magic != QUERY_MAGIC or kind not in (4, 6):
        return p0f_response(STATUS_BAD_QUERY)
    addr = raw[:4] if kind == 4 else raw
    if kind == 6 and addr[:12] == b"\0" * 10 + b"\xff\xff":
        addr = addr[12:]  # IPv4-mapped: the SYN carried the IPv4 address
    _, host = hosts.lookup(addr, 0)
    return p0f_response(STATUS_OK, host) if host is not None else p0f_response(STATUS_NO_MATCH)


class P0fSocketServer:
    """p0f's API on a unix stream socket: many connections, pipelined queries."""

    def __init__(self, path: str, hosts: HostTable, mode: int = 0o660, owner: tuple[int, int] | None = None,
                 max_connections: int = 1024) -> None:
        self.path = path
        self.hosts = hosts
        self.max_connections = max_connections
        self.queries = 0
        self.bad_queries = 0
        remove_stale_socket(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, mode)
        if owner is not None:
            os.chown(path, *owner)
        self.sock.listen(128)
        self.sock.setblocking(False)
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._loop, name="p0f-socket", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _loop(self) -> None:
        sel = self._sel
        sel.register(self.sock, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, events in sel.select(0.2):
                if key.data is None:
                    self._accept()
                else:
                    self._serve(key, events)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self._sel.get_map()) > self.max_connections:
            conn.close()
            return
        conn.setblocking(False)
        self._sel.register(conn, selectors.EVENT_READ, {"in": b"", "out": b""})

    def _serve(self, key, events: int) -> None:
        conn, state = key.fileobj, key.data
        try:
            if events & selectors.EVENT_READ:
                data = conn.recv(65536)
                if not data:
                    return self._close(conn)
                buf = state["in"] + data
                answers = []
                while len(buf) >= QUERY_SIZE:
                    answers.append(p0f_answer(buf[:QUERY_SIZE], self.hosts))
                    buf = buf[QUERY_SIZE:]
                self.queries += len(answers)
                state["in"] = buf
                state["out"] += b"".join(answers)
            if state["out"]:
                sent = conn.send(state["out"])
                state["out"] = state["out"][sent:]
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if state["out"] else 0)
            if want != key.events:
                self._sel.modify(conn, want, state)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the client went away mid-query: forget it, nothing else
            self._close(conn)

    def _close(self, conn) -> None:
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()


# --- p0f-analyzer -------------------------------------------------------------

MAX_DATAGRAM = 2048  # a 1,024-character nonce plus the query fits
_REQUEST = re.compile(rb"([^ ]+) ([\x20-\x7f]{0,1024})", re.S)
_QUERY_FORM = re.compile(r"\[([^\]]+)\](?::(\d{1,5}))?|([0-9.]+)")


def analyzer_result(obs: Observation | None) -> str:
    """The p0f v3 analyzer form: the OS, then the other attributes sorted by key."""
    if obs is None:
        return ""
    fp = obs.fp
    fields = {"dist": str(fp.dist), "params": fp.params, "raw_sig": fp.raw_sig}
    if fp.mtu_reported:
        fields["link"] = fp.link or "???"
        fields["raw_mtu"] = str(fp.raw_mtu)
    return "; ".join([fp.os_text] + [f"{k}: {fields[k]}" for k in sorted(fields)])


def parse_analyzer_query(query: str) -> tuple[bytes, int] | None:
    """(address, port or 0) for "[ip]:port", "[ip]" or a bare IPv4 address; None if malformed."""
    m = _QUERY_FORM.fullmatch(query)
    if not m:
        return None
    text, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), None)
    try:
        addr = normalize_ip(text)
    except AddressError:
        return None
    port_n = int(port) if port else 0
    return (addr, port_n) if port_n <= 65535 else None


def analyzer_reply(datagram: bytes, hosts: HostTable, wait: float = 0.0) -> bytes | None:
    """The reply to one datagram, or None for a malformed one (no reply, as the original)."""
    m = _REQUEST.fullmatch(datagram)
    if not m:
        return None
    query, nonce = m.group(1).decode("ascii", "replace"), m.group(2).decode("ascii")
    parsed = parse_analyzer_query(query)
    if parsed is None:
        return None
    obs, _ = hosts.lookup(parsed[0], parsed[1], wait)
    return f"{query} {nonce} {analyzer_result(obs)}\r\n".encode()


class AnalyzerServer:
    """p0f-analyzer's UDP protocol, answering allowed networks only."""

    def __init__(self, host: str, port: int, hosts: HostTable, allow: list[str], wait: float = 0.02) -> None:
        self.hosts = hosts
        self.wait = wait
        self.allow = [ipaddress.ip_network(a, strict=False) for a in allow]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answered = self.refused = self.malformed = 0
        self._stop = threading.Event()
        # Lookups may wait a few ms for a SYN still in flight; a small pool keeps
        # one slow query from holding up the others.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="analyzer")
        self._thread = threading.Thread(target=self._loop, name="p0f-analyzer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.sock.close()

    def allowed(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(normalize_ip(addr.split("%", 1)[0]))  # IPv4-mapped: its IPv4 address
        except AddressError:
            return False
        return any(ip in net for net in self.allow)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if not self.allowed(peer[0]):
                self.refused += 1
                continue
            self._pool.submit(self._answer, data, peer)

    def _answer(self, data: bytes, peer) -> None:
        reply = analyzer_reply(data, self.hosts, self.wait)
        if reply is None:
            self.malformed += 1
            return
        try:
            self.sock.sendto(reply, peer)
            self.answered += 1
        except OSError as exc:
            log.debug("analyzer reply failed: %s", exc)
