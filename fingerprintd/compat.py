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

fingerprintd's extension (SpamAssassin's plugin; amavisd-new never sends it,
its nonce is one word): "QUERY NONCE fpd1 rdns=NAME helo=NAME" also carries
what the MTA recorded, and the reply appends fingerprintd's verdict for the
stack *with* those names: "QUERY NONCE RESULT; class: C; rules: R; id: K;
score: S\r\n" (the score last, as in the header).  See `extended_context`
for how the names map onto the policy's context.  And when the service keeps
a reputation store, "fpd1-feedback NONCE spam|ham ID CLIENT [MESSAGE-ID]"
records a filter's final verdict for a served id (as gRPC's Feedback: one
message and one client count once, one source network up to its cap),
answered "fpd1-feedback NONCE RESULT\r\n" (counted, duplicate-message,
duplicate-client, source-cap, or invalid).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fingerprintd import accel
from fingerprintd.context import Context, from_postfix
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
MAX_CONNECTIONS = 1024
IDLE_TIMEOUT = 30.0  # seconds without a byte either way before a connection is closed
MAX_PENDING = 64  # answers waiting for a client before it is no longer read (2 x 64 x 232 bytes at most)
POLL_EVENTS = 64  # ready connections taken per epoll wait (the others wait for the next, a few us later)
ACCEPT_PAUSE = 0.1  # seconds without accepting when the process is out of file descriptors
WARN_EVERY = 10.0  # seconds between two warnings about the same shortage


def _cstr(text: str) -> bytes:
    """At most 31 bytes and a NUL: p0f could fill all 32 and leave no terminator."""
    return text.encode("utf-8", "replace")[:31]


# The answer as its numbers (per host) and its names (per pair of verdicts: made once, see _names).
_HEAD = struct.Struct("=IIIIIIIIIhBB")
_NAMES = struct.Struct("=32s32s32s32s32s32s")
_names_of: dict[tuple[int, int], tuple[object, object, bytes]] = {}
MAX_NAMES = 4096


def _names(fp, latest) -> bytes:
    """The answer's os, flavor, http, link and language fields: the OS from the matched verdict, the link
    from the latest one."""
    key = (id(fp), id(latest))
    hit = _names_of.get(key)
    if hit is not None and hit[0] is fp and hit[1] is latest:  # the entry holds both: their ids are theirs
        return hit[2]
    label = fp.label if fp is not None else None
    names = _NAMES.pack(_cstr(label.name) if label else b"", _cstr(label.flavor or "") if label else b"", b"", b"",
                        _cstr(latest.link or "") if latest is not None and latest.raw_mtu else b"", b"")
    if len(_names_of) >= MAX_NAMES:
        _names_of.clear()
    _names_of[key] = (fp, latest, names)
    return names


def p0f_response(status: int, host: HostRecord | None = None) -> bytes:
    if status != STATUS_OK or host is None:
        return _RESPONSE.pack(RESPONSE_MAGIC, status, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b"", b"", b"", b"", b"", b"")
    match = host.last_match
    fp = match.fp if match is not None else None
    quality = (MATCH_FUZZY if fp and fp.fuzzy else 0) | (MATCH_GENERIC if fp and fp.generic else 0)
    latest = host.latest.fp if host.latest is not None else None
    return _HEAD.pack(
        RESPONSE_MAGIC, STATUS_OK, int(host.first_seen), int(host.last_seen), min(host.count, 0xFFFFFFFF),
        host.uptime_minutes, host.uptime_modulo_days, int(host.last_ip_sharing), int(host.last_host_change),
        min(host.last_distance, 0x7FFF), 0, quality) + _names(fp, latest)


BAD_QUERY_RESPONSE = p0f_response(STATUS_BAD_QUERY)
NO_MATCH_RESPONSE = p0f_response(STATUS_NO_MATCH)
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


_V4_QUERY = struct.pack("=IB", QUERY_MAGIC, 4)  # what a valid query starts with: the magic, the address type
_V6_QUERY = struct.pack("=IB", QUERY_MAGIC, 6)
ANSWER_MEMO = 4096  # addresses whose packed answer a server keeps (about 0.5 kB each)


def _address(query: bytes) -> bytes | None:
    """The address a 21-byte query asks about; None for a bad query."""
    head = query[:5]
    if head == _V4_QUERY:
        return query[5:9]
    if head == _V6_QUERY:
        addr = query[5:]
        return addr[12:] if addr[:12] == _V4_MAPPED else addr  # IPv4-mapped: the SYN carried the IPv4 address
    return None


def p0f_answer(query: bytes, hosts: HostTable, memo: dict | None = None) -> bytes:
    """The 232-byte answer to one 21-byte query (BAD_QUERY_RESPONSE itself for a bad one).

    `memo`: address -> (the host's latest SYN, its packed answer), kept by the caller.  A host
    record changes only with a new SYN, which replaces `latest`: an answer packed for the same
    latest SYN is still the answer (packing it is a third of the answer's cost)."""
    addr = _address(query)
    if addr is None:
        return BAD_QUERY_RESPONSE
    _, host = hosts.lookup(addr, 0)
    if host is None:
        return NO_MATCH_RESPONSE
    latest = host.latest if memo is not None else None
    if latest is None:  # no memo, or nothing to tell this record's versions apart by
        return p0f_response(STATUS_OK, host)
    known = memo.get(addr)
    if known is not None and known[0] is latest:
        return known[1]
    answer = p0f_response(STATUS_OK, host)
    if len(memo) >= ANSWER_MEMO:
        memo.clear()  # wholesale: cheaper than an LRU's bookkeeping on every query
    memo[addr] = (latest, answer)
    return answer


def answer_until(query: bytes, hosts: HostTable, memo: dict) -> tuple[bytes, float]:
    """p0f_answer, and until when (on the table's clock) it stays the answer while the table takes no
    write: the host's expiry, forever for an unknown host, 0 when it is not to be kept (a bad query, or
    an answer p0f_answer did not memoize).  For the compiled loop's memo (fingerprintd/_csock.pyx)."""
    answer = p0f_answer(query, hosts, memo)
    if answer is NO_MATCH_RESPONSE:
        return answer, math.inf
    known = memo.get(_address(query))  # type: ignore[arg-type]
    # A record expires with its latest SYN: the table writes both with one expiry.
    return answer, known[0].expires if known is not None and known[1] is answer else 0.0


class P0fSocketServer:
    """p0f's API on a unix stream socket: many connections, pipelined queries.

    One thread, an epoll loop.  The usual client asks one query at a time: that
    costs one recv() and one send(), served inline in the loop with no
    buffering and no change to what epoll watches; answers are kept packed per
    address while the host record stays the same (p0f_answer's memo).  A
    thread per connection blocked in recv() was measured too: about 1 us less
    CPU per query on one connection (no epoll wait), twice as much with 50
    connections (a wake-up and a GIL hand-off per query).  With the compiled
    accelerator the loop is fingerprintd/_csock.pyx: the usual query without
    a Python object, calling this class's code for everything else; this
    loop is its reference (tests/test_compat_csock.py).

    Every client costs bounded memory and none can hold the others up: at most
    `max_connections` at once (more are accepted and closed at once), one idle
    for `idle_timeout` seconds is closed, and one that sends queries without
    reading the answers stops being read once `max_pending` answers wait for
    it (its own send blocks; it is read again when it drains).  Running out of
    file descriptors drops the newest connection instead of the thread.  A
    fatal error in the thread is logged and kept in `failed`, which the service
    polls, so that it stops serving rather than look healthy.
    """

    def __init__(self, path: str, hosts: HostTable, mode: int = 0o660, owner: tuple[int, int] | None = None,
                 max_connections: int = MAX_CONNECTIONS, idle_timeout: float = IDLE_TIMEOUT,
                 max_pending: int = MAX_PENDING) -> None:
        self.path = path
        self.hosts = hosts
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_pending = max_pending
        self._recv_size = QUERY_SIZE * max_pending
        self._out_limit = RESPONSE_SIZE * max_pending
        self.failed: BaseException | None = None  # a fatal error in its thread, for the service to see
        self._queries = self._bad_queries = 0  # those the Python code answered (see `queries`)
        self.refused = 0  # connections over max_connections
        self.idle_closed = 0
        self.fd_exhausted = 0  # connections dropped because the process had no file descriptor left
        self.throttled = 0  # times a client was no longer read because it did not read its answers
        self._conns: dict[int, _Client] = {}  # by descriptor: what epoll reports
        self._memo: dict[bytes, tuple[object, bytes]] = {}  # p0f_answer's packed answers
        remove_stale_socket(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, mode)
        if owner is not None:
            os.chown(path, *owner)
        self.sock.listen(128)
        self.sock.setblocking(False)
        # Kept open to be given up when accept() finds no descriptor left: closing it
        # makes room to accept the waiting connection and close it at once, so it is
        # refused rather than left in the backlog where select() would report it forever.
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._paused_until = 0.0
        self._warned = -WARN_EVERY
        self._stop = threading.Event()
        # epoll itself, not the selectors module: its wrapping cost ~1 us per query (a fifth of
        # the server's time per query on one connection).
        self._sel = select.epoll()
        self._thread = threading.Thread(target=self._run, name="p0f-socket", daemon=True)
        # The compiled loop (fingerprintd/_csock.pyx) when the accelerator is selected: _loop below is
        # its reference, and it calls this class's code for all but the usual query.
        impl = accel.ACCEL
        self._fast = impl.sock.Loop(self) if impl is not None else None

    @property
    def queries(self) -> int:
        return self._queries + (self._fast.queries if self._fast is not None else 0)

    @property
    def bad_queries(self) -> int:
        return self._bad_queries + (self._fast.bad_queries if self._fast is not None else 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._fast is not None:
            self._fast.stopping = True  # seen at its next wake-up (the event: when idle)
        if self._thread.ident is not None:  # started (a service that failed to start stops the rest)
            self._thread.join(2)
        for client in list(self._conns.values()):
            client.conn.close()
        self._conns.clear()
        self._sel.close()
        self.sock.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        return {"connections": len(self._conns), "queries": self.queries, "bad_queries": self.bad_queries,
                "refused": self.refused, "idle_closed": self.idle_closed, "fd_exhausted": self.fd_exhausted,
                "throttled": self.throttled}

    def buffered(self) -> int:
        """Bytes held for all clients: unanswered query bytes and unsent answers."""
        return sum(len(c.inbuf) + len(c.out) for c in list(self._conns.values()))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # whatever it was, the service must learn of it
            # Clients see the socket closed and fail open at once, instead of waiting
            # out their timeouts on a socket nobody serves.
            for client in list(self._conns.values()):
                client.conn.close()
            self._conns.clear()
            self.sock.close()
            fatal(self, "p0f-socket", exc)

    def _loop(self) -> None:
        if self._fast is not None:
            return self._fast.run()
        ep, conns, hosts, stop, memo = self._sel, self._conns, self.hosts, self._stop, self._memo
        listen_fd = self.sock.fileno()
        ep.register(listen_fd, select.EPOLLIN)
        listening = True
        size = self._recv_size
        monotonic, readable = time.monotonic, select.EPOLLIN
        next_sweep = monotonic() + min(1.0, self.idle_timeout / 4)
        while not stop.is_set():
            # maxevents bounds what poll() allocates per call (by default room for 1023 events).
            ready = ep.poll(0.2 if listening else 0.05, POLL_EVENTS)
            now = monotonic()
            for fd, events in ready:
                client = conns.get(fd)
                if client is None:
                    if fd == listen_fd:
                        listening = self._accept()
                    continue
                if events != readable or client.out or client.inbuf:
                    self._serve(client, events, now, None)
                    continue
                # The usual client, one query at a time: one recv(), one send(), nothing kept.
                conn = client.conn
                try:
                    data = conn.recv(size)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # the client went away mid-query: forget it, nothing else
                    self._close(client)
                    continue
                if len(data) != QUERY_SIZE:  # end of file, pipelined or partial queries
                    self._serve(client, events, now, data)
                    continue
                answer = p0f_answer(data, hosts, memo)
                self._queries += 1
                if answer is BAD_QUERY_RESPONSE:
                    self._bad_queries += 1
                client.active = now
                try:
                    sent = conn.send(answer)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._close(client)
                    continue
                if sent != RESPONSE_SIZE:  # the client's buffer is full: the rest waits for it
                    client.out += answer[sent:]
                    self._serve(client, 0, now, None)
            if not listening and now >= self._paused_until:
                ep.register(listen_fd, select.EPOLLIN)
                listening = True
            if now >= next_sweep:
                next_sweep = now + min(1.0, self.idle_timeout / 4)
                self._sweep(now)

    def _accept(self) -> bool:
        """Accept what is waiting; False when accepting is paused for a moment."""
        for _ in range(64):  # a burst of connections does not starve the clients already in
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._shed():
                    continue
                # Out of descriptors with no spare left, or the kernel short of memory:
                # stop accepting for a moment (the backlog waits) and serve who is in.
                self.fd_exhausted += exc.errno in (errno.EMFILE, errno.ENFILE)
                self._warn("p0f socket: accept failed; not accepting for a moment", exc)
                self._sel.unregister(self.sock.fileno())
                self._paused_until = time.monotonic() + ACCEPT_PAUSE
                return False
            if len(self._conns) >= self.max_connections:
                self.refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            fd = conn.fileno()
            self._conns[fd] = _Client(conn, time.monotonic())
            self._sel.register(fd, select.EPOLLIN)
        return True

    def _shed(self) -> bool:
        """Give up the spare descriptor to accept and close one connection; False if there is none."""
        if self._spare is None:
            return False
        os.close(self._spare)
        self._spare = None
        try:
            conn, _ = self.sock.accept()
            conn.close()
            self.fd_exhausted += 1
            self._warn("p0f socket: out of file descriptors; new connections are closed", None)
        except OSError:
            pass
        try:
            self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass  # taken meanwhile by another thread: accept() pauses next time instead
        return True

    def _warn(self, msg: str, exc: OSError | None) -> None:
        """A warning at most every WARN_EVERY seconds: a shortage lasts, the log should not fill with it."""
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(msg, extra={"fields": {"error": str(exc) if exc else "EMFILE", **self.stats()}})

    def _sweep(self, now: float) -> None:
        for client in list(self._conns.values()):
            if now - client.active > self.idle_timeout:
                self.idle_closed += 1
                self._close(client)

    def _serve(self, client: _Client, events: int, now: float, data: bytes | None) -> None:
        """All but the usual query: pipelined or partial queries, answers the client has not read yet,
        end of file.  `data`: what the loop read already (None: read here if readable)."""
        conn, out = client.conn, client.out
        try:
            if data is None and events & _READABLE:
                # Read no more than the answers still allowed: a client's memory stays bounded
                # by max_pending answers and one partial query.
                data = conn.recv(self._recv_size)
            if data is not None:
                if not data:
                    return self._close(client)
                client.active = now
                buf = client.inbuf + data if client.inbuf else data
                whole = len(buf) - len(buf) % QUERY_SIZE
                hosts, memo = self.hosts, self._memo
                answers = [p0f_answer(buf[i:i + QUERY_SIZE], hosts, memo) for i in range(0, whole, QUERY_SIZE)]
                client.inbuf = buf[whole:]
                self._queries += len(answers)
                self._bad_queries += sum(1 for a in answers if a is BAD_QUERY_RESPONSE)
                out += b"".join(answers)
            if out:
                sent = conn.send(out)
                if sent:
                    del out[:sent]
                    client.active = now
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the client went away mid-query: forget it, nothing else
            return self._close(client)
        reading = len(out) < self._out_limit
        if not reading and client.reading:
            self.throttled += 1
        client.reading = reading
        want = (select.EPOLLIN if reading else 0) | (select.EPOLLOUT if out else 0)
        if want != client.events:
            client.events = want
            self._sel.modify(conn.fileno(), want)

    def _close(self, client: _Client) -> None:
        conn = client.conn
        fd = conn.fileno()
        self._conns.pop(fd, None)
        try:
            self._sel.unregister(fd)
        except (OSError, ValueError):
            pass
        conn.close()


# What epoll reports for a connection to be read: data, or the end of it (hung up, an error).
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP


class _Client:
    """One connection's state: a partial query, answers not yet sent, when it last moved."""

    __slots__ = ("conn", "active", "inbuf", "out", "reading", "events")

    def __init__(self, conn: socket.socket, now: float) -> None:
        self.conn = conn
        self.active = now
        self.inbuf = b""
        self.out = bytearray()
        self.reading = True
        self.events = select.EPOLLIN


def fatal(server, name: str, exc: BaseException) -> None:
    """A server thread died: log it as an error and keep it in `failed` (the one channel the service polls)."""
    server.failed = exc
    log.error("%s thread failed", name, exc_info=exc, extra={"fields": {"thread": name}})


# --- p0f-analyzer -------------------------------------------------------------

MAX_DATAGRAM = 2048  # a 1,024-character nonce plus the query fits
ANALYZER_INFLIGHT = 256  # datagrams being answered or waiting for a worker
# recvfrom() errors that concern one datagram, not the socket: an ICMP error
# for an earlier reply, or the kernel short of memory for a moment.
_TRANSIENT = (errno.EINTR, errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
              errno.ENOBUFS, errno.ENOMEM)
_REQUEST = re.compile(rb"([^ ]+) ([\x20-\x7f]{0,1024})", re.S)
_QUERY_FORM = re.compile(r"\[([^\]]+)\](?::(\d{1,5}))?|([0-9.]+)")
EXTENSION = "fpd1"
_EXTENDED = re.compile(r"([^ ]*) fpd1((?: [^ ]*)*)")  # the nonce is one word, then the extension's fields
_FIELD = re.compile(r"([a-z]+)=([\x21-\x7e]{0,255})")
# The verdict for an extended query: (fingerprint, client address, context, host record) -> the served
# policy.Verdict (the service reads its current policy, so a SIGHUP applies here too).
VerdictFn = Callable[..., object]
FEEDBACK = b"fpd1-feedback"
_FEEDBACK = re.compile(rb"fpd1-feedback ([\x21-\x7e]{0,64}) (spam|ham) ([\x21-\x7e]{1,64}) ([0-9A-Fa-f.:]{2,45})"
                       rb"(?: ([\x21-\x7e]{1,998}))?")
# reputation.Reputation.record: (id, spam, client address, message id) -> "counted" or why not;
# raises ValueError (ReputationError) for an id or address it refuses.
FeedbackFn = Callable[[str, bool, str, str], str]


def feedback_reply(datagram: bytes, feedback: FeedbackFn) -> bytes | None:
    """The reply to a feedback datagram, or None for a malformed one."""
    m = _FEEDBACK.fullmatch(datagram)
    if not m:
        return None
    nonce, verdict, key, client, msgid = (g.decode("ascii") if g is not None else "" for g in m.groups())
    try:
        result = feedback(key, verdict == "spam", client, msgid)
    except ValueError:
        result = "invalid"
    return f"fpd1-feedback {nonce} {result}\r\n".encode()


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


def extended_context(fields: dict[str, str]) -> Context | None:
    """The policy's context from an extended query's fields (what SpamAssassin parsed from the
    Received header of the first untrusted relay):

    * ``rdns=NAME``: the name the MTA recorded for the client.  Postfix and Exim record only a
      forward-confirmed name, so it is taken as the verified name (client_name) and as the PTR
      (reverse_name).  Sendmail records a PTR that does not verify with "(may be forged)", which
      SpamAssassin drops: such a name counts as verified too (a known limit of the header).
    * ``rdns=`` (empty): the MTA recorded none (Postfix's "unknown", which SpamAssassin empties):
      no verified name; whether a PTR exists is not known (Postfix writes "unknown" for both).
    * ``helo=NAME``: the HELO the MTA recorded; ``helo=`` an empty HELO.
    * a field left out: not known (a rule that needs it does not fire).  Unknown fields are ignored,
      so that later versions can add some.
    """
    rdns, helo = fields.get("rdns"), fields.get("helo")
    if rdns is None and helo is None:
        return None
    named = from_postfix(None if rdns is None else rdns or "unknown", None, helo)
    return Context(named.client_name, named.client_name or None, named.helo)


def parse_extension(rest: str) -> tuple[str, dict[str, str]] | None:
    """(nonce, fields) of "NONCE fpd1 key=value ..."; None if it is not the extension (a plain nonce)."""
    m = _EXTENDED.fullmatch(rest)
    if not m:
        return None
    fields: dict[str, str] = {}
    for word in m.group(2).split(" ")[1:]:
        f = _FIELD.fullmatch(word)
        if not f or f.group(1) in fields:
            raise ValueError(word)
        fields[f.group(1)] = f.group(2)
    return m.group(1), fields


def verdict_fields(v) -> str:
    """A served policy.Verdict as the extended reply's tail: "; class: C; rules: R; id: K; score: S"."""
    learned = f"; learned: {v.learned:+g}" if v.learned else ""
    key = f"; id: {v.key}" if v.key else ""  # trusted networks: no id, nothing to learn about
    cls = v.head.rpartition("; class: ")[2]
    return f"; class: {cls}; rules: {','.join(v.rules) or 'none'}{learned}{key}; score: {v.score:g}"


def analyzer_reply(datagram: bytes, hosts: HostTable, wait: float = 0.0,
                   verdict: VerdictFn | None = None) -> bytes | None:
    """The reply to one datagram, or None for a malformed one (no reply, as the original).

    `verdict`: answers the extended query; without it every nonce is a plain nonce, as before."""
    m = _REQUEST.fullmatch(datagram)
    if not m:
        return None
    query, nonce = m.group(1).decode("ascii", "replace"), m.group(2).decode("ascii")
    parsed = parse_analyzer_query(query)
    if parsed is None:
        return None
    try:
        extended = parse_extension(nonce) if verdict is not None and f" {EXTENSION}" in nonce else None
    except ValueError:
        return None  # the extension with a malformed field
    obs, host = hosts.lookup(parsed[0], parsed[1], wait)
    if extended is None:
        return f"{query} {nonce} {analyzer_result(obs)}\r\n".encode()
    nonce, fields = extended
    tail = verdict_fields(verdict(obs.fp, parsed[0], extended_context(fields), host)) if obs is not None else ""
    return f"{query} {nonce} {analyzer_result(obs)}{tail}\r\n".encode()


class AnalyzerServer:
    """p0f-analyzer's UDP protocol, answering allowed networks only.

    A datagram costs at most one lookup of `wait` seconds in a small pool, and at
    most `max_inflight` wait there at once: beyond that a datagram is dropped
    (counted as busy) rather than queued, as amavisd gives up after 50 ms anyway.
    """

    def __init__(self, host: str, port: int, hosts: HostTable, allow: list[str], wait: float = 0.02,
                 max_inflight: int = ANALYZER_INFLIGHT,
                 verdict: VerdictFn | None = None, feedback: FeedbackFn | None = None) -> None:
        self.hosts = hosts
        self.feedback = feedback  # None: feedback datagrams are malformed (no reputation store)
        self.verdict = verdict  # None: no extended queries (every nonce is a plain nonce)
        self.wait = wait
        self.allow = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.failed: BaseException | None = None  # a fatal error in its thread, for the service to see
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answered = self.refused = self.malformed = self.busy = self.send_errors = 0
        self._inflight = threading.BoundedSemaphore(max_inflight)
        self._count_lock = threading.Lock()  # the pool's threads count answers concurrently
        self._stop = threading.Event()
        # Lookups may wait a few ms for a SYN still in flight; a small pool keeps
        # one slow query from holding up the others.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="analyzer")
        self._thread = threading.Thread(target=self._run, name="p0f-analyzer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started (a service that failed to start stops the rest)
            self._thread.join(2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.sock.close()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        return {"answered": self.answered, "refused": self.refused, "malformed": self.malformed,
                "busy": self.busy, "send_errors": self.send_errors}

    def allowed(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(normalize_ip(addr.split("%", 1)[0]))  # IPv4-mapped: its IPv4 address
        except AddressError:
            return False
        return any(ip in net for net in self.allow)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # whatever it was, the service must learn of it
            fatal(self, "p0f-analyzer", exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                if exc.errno in _TRANSIENT:
                    continue
                raise  # the socket itself is gone (EBADF...): retrying would spin
            if not self.allowed(peer[0]):
                self.refused += 1
            elif not self._inflight.acquire(blocking=False):
                self.busy += 1
            else:
                self._pool.submit(self._answer, data, peer)

    def _answer(self, data: bytes, peer) -> None:
        try:
            if self.feedback is not None and data.startswith(FEEDBACK + b" "):
                reply = feedback_reply(data, self.feedback)
            else:
                reply = analyzer_reply(data, self.hosts, self.wait, self.verdict)
            if reply is None:
                with self._count_lock:
                    self.malformed += 1
                return
            self.sock.sendto(reply, peer)
            with self._count_lock:
                self.answered += 1
        except OSError as exc:
            with self._count_lock:
                self.send_errors += 1
            log.debug("analyzer reply failed: %s", exc)
        finally:
            self._inflight.release()
