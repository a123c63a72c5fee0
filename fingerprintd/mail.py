"""How a verdict reaches the mail flow: a milter and a Postfix policy service.

Both ask the running service (gRPC `Lookup`) about the client's connection
and never stall mail: every lookup has one hard bound, `timeout` (the
service's wait for a SYN in flight is carved out of it), and any failure
(the service down, slow, busy, or the client not seen) lets the mail through,
logged and counted.  A message waits at most `timeout` once per filter: the
milter asks at the first MAIL FROM of a connection (when the HELO is known),
the policy service once per message.

Both pass what the MTA knows about the client (fingerprintd does no DNS):
the policy service Postfix's `client_name` (verified), `reverse_client_name`
and `helo_name`; the milter the connect hostname (verified, or `[ip]`), the
PTR from `{client_ptr}` or the default `_` macro (`name [addr]`),
`{client_resolve}` (TEMP: a DNS hiccup, the names count as not known) and the
HELO.  The verdict's rules use them (fingerprintd/context.py).

* Milter (pymilter): the client's ip and source port come from the connect
  callback; at end of message it removes any `X-OS-Fingerprint` headers the
  message brought along (forged scores) and adds its own, value first the OS
  string: `Linux 3.11 and newer; dist: 6; link: Ethernet or modem; class: server; rules: server-mta;
  id: e2ea5aab88/server/fcrdns-match; client: 198.51.100.12; score: -0.3`.
  Trusted networks (the policy's) and SASL-authenticated clients get no header.
  With `enforce`, the policy's tempfail/reject replies are given at MAIL FROM.
* Policy service: Postfix's SMTPD access policy delegation protocol
  (name=value lines, an empty line), answering `PREPEND X-OS-Fingerprint: ...`
  once per message, or, with `enforce`, the policy's reject/tempfail reply.
  For every client that is not trusted or authenticated it PREPENDs a header,
  also when it has no verdict (`X-OS-Fingerprint: unavailable; reason: timeout`,
  which no rule in contrib/spamassassin scores): the first instance, the one
  the SpamAssassin rules read, is then always ours, never a forged copy below.

Bounds (module constants; see also the CLI's --timeout-ms):
* Lookups in flight: MAX_INFLIGHT per process; beyond that a lookup fails
  open at once (reason "busy") instead of queueing behind a slow service.
* The policy service is one selector loop plus POLICY_WORKERS threads: at
  most POLICY_MAX_CONNECTIONS connections (at the cap the longest-idle one is
  closed to admit a new one), each closed after POLICY_IDLE_SECONDS without a
  request; a request over POLICY_MAX_REQUEST_BYTES or POLICY_MAX_ATTRS, or a
  malformed one, is logged, counted and answered by closing the connection
  without a reply, as the protocol prescribes for errors (Postfix then applies
  its own default_action, DUNNO in the documented setup).
* The milter: libmilter runs a thread per MTA connection and bounds neither
  their number nor (measured with Debian's libmilter 8.17: smfi_settimeout(1)
  left a connection idle for 20 s open) their idle time; the MTA does, with
  one connection per smtpd process (Postfix's process limit) and its own
  milter timeouts.  Keep the milter socket reachable by the MTA only (its
  directory's permissions).  Our lookups from those threads are capped by
  MAX_INFLIGHT like the policy service's, and an exception in a callback
  lets the mail through.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import NamedTuple

import grpc

from fingerprintd.context import Context, from_milter, from_postfix
from fingerprintd.unixsock import remove_stale_socket
from fingerprintd.v1 import fingerprintd_pb2 as pb
from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

log = logging.getLogger("fingerprintd")
HEADER = "X-OS-Fingerprint"
SCORE_HEADER = "X-OS-Fingerprint-Score"
# Replies for a service too old to send the policy's own (Verdict.reply).
REJECT_REPLY = "550 5.7.1 Your host looks like a desktop, not a mail server"
TEMPFAIL_REPLY = "451 4.7.1 Please try again later"

MAX_INFLIGHT = 32  # lookups in flight per process; more fail open at once
ANSWER_RESERVE_MS = 50  # of the timeout, kept for the answer after the service's wait
# Small reconnect backoff: the service is local (a unix socket reconnects in
# microseconds); gRPC's default (1 s growing to 120 s) left the milter without
# verdicts for seconds after a service restart.  A channel of its own
# subchannels: a channel made anew after a failure would otherwise share the
# old one's (gRPC's global subchannel pool), backoff and all.
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.use_local_subchannel_pool", 1))
MILTER_TIMEOUT = 30  # seconds: smfi_settimeout, libmilter's MTA I/O timeout (idle reads were not cut by it here)

POLICY_MAX_LINE = 4096  # Postfix's own limit is larger, but no real value comes near
POLICY_MAX_ATTRS = 256  # Postfix 3.7 sends 30
POLICY_MAX_REQUEST_BYTES = 64 * 1024  # a real request is under 2 KiB
POLICY_MAX_CONNECTIONS = 256  # Postfix opens one per smtpd process (default_process_limit 100)
POLICY_IDLE_SECONDS = 330.0  # above Postfix's smtpd_policy_service_max_idle (300 s): Postfix closes first
POLICY_WORKERS = 16  # threads deciding (each waits on one lookup at most)


class Counters:
    """Named counters, some by a label (failures by reason, ...); read by the metrics endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def inc(self, name: str, label: str = "") -> None:
        with self._lock:
            self._counts[name, label] += 1

    def get(self, name: str, label: str = "") -> int:
        with self._lock:
            return self._counts[name, label]

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


class Outcome(NamedTuple):
    reply: pb.LookupResponse | None  # None: no verdict
    reason: str  # "" with a verdict; else not-seen, timeout, unavailable, error, busy


class VerdictClient:
    """`Lookup` with one hard bound (`timeout`, seconds, the wait included); never raises."""

    def __init__(self, server: str, timeout: float = 0.25, wait_ms: int = 50, token: str = "",
                 counters: Counters | None = None, max_inflight: int = MAX_INFLIGHT) -> None:
        self.server = server
        self.timeout = timeout
        # The service's wait for a SYN in flight is carved out of the bound.
        self.wait_ms = max(0, min(wait_ms, int(timeout * 1000) - ANSWER_RESERVE_MS))
        self.metadata = [("authorization", f"Bearer {token}")] if token else None
        self.counters = counters or Counters()
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(server, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.FingerprintStub(self._channel)
        self._retired: deque[tuple[float, grpc.Channel]] = deque()
        self._slots = threading.BoundedSemaphore(max_inflight)
        # Calls run on threads Python made: a gRPC call made straight from
        # libmilter's own (C) threads was seen to hang past its deadline.
        self._pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="lookup")

    @property
    def failures(self) -> int:
        return sum(n for (name, _), n in self.counters.snapshot().items() if name == "lookup_failures")

    @property
    def unknown(self) -> int:
        return self.counters.get("unknown")

    def lookup(self, ip: str, port: int, context: Context | None = None) -> Outcome:
        self.counters.inc("lookups")
        # A bounded number in flight: the pool's queue never grows behind a slow service.
        if not self._slots.acquire(blocking=False):
            return self._failed("busy", f"{MAX_INFLIGHT} lookups already in flight")
        deadline = time.monotonic() + self.timeout
        request = pb.LookupRequest(ip=ip, port=port, wait_ms=self.wait_ms, context=context_pb(context))
        try:
            future = self._pool.submit(self._call, request, deadline)
        except RuntimeError:  # the pool is shut down (closing)
            self._slots.release()
            return self._failed("error", "client closed")
        future.add_done_callback(lambda _: self._slots.release())
        try:
            reply = future.result(timeout=self.timeout)  # the hard bound, whatever gRPC does
        except FuturesTimeout:
            return self._failed("timeout", f"no answer in {self.timeout * 1000:.0f} ms")
        except grpc.RpcError as exc:
            code = exc.code()
            reason = {grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
                      grpc.StatusCode.UNAVAILABLE: "unavailable"}.get(code, "error")
            return self._failed(reason, f"{code.name} {exc.details()}")
        except Exception as exc:  # a bug must not stall mail either
            return self._failed("error", repr(exc))
        if not reply.found:
            self.counters.inc("unknown")
            return Outcome(None, "not-seen")
        return Outcome(reply, "")

    def _failed(self, reason: str, detail: str) -> Outcome:
        self.counters.inc("lookup_failures", reason)
        log.warning("fingerprintd lookup failed (%s), letting mail through: %s", reason, detail)
        return Outcome(None, reason)

    def _call(self, request: pb.LookupRequest, deadline: float) -> pb.LookupResponse:
        for attempt in (0, 1):
            stub = self._stub
            try:
                return stub.Lookup(request, timeout=max(0.001, deadline - time.monotonic()),
                                   metadata=self.metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                # A channel that failed to connect sits in backoff; a fresh
                # one connects at once when the service is back.
                self._renew(stub)
                if attempt or deadline - time.monotonic() < 0.01:
                    raise
        raise AssertionError("unreachable")

    def _renew(self, broken: pb_grpc.FingerprintStub) -> None:
        with self._lock:
            if self._stub is not broken:
                return  # another lookup renewed it already
            now = time.monotonic()
            self._retired.append((now, self._channel))
            self._channel = grpc.insecure_channel(self.server, options=CHANNEL_OPTIONS)
            self._stub = pb_grpc.FingerprintStub(self._channel)
            # Retired channels are closed once no call on them can still run.
            while self._retired and now - self._retired[0][0] > self.timeout + 1:
                self._retired.popleft()[1].close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for _, channel in self._retired:
                channel.close()
            self._retired.clear()
            self._channel.close()


def context_pb(ctx: Context | None) -> pb.Context | None:
    """The names as the service's Lookup takes them (unset fields: not known)."""
    if ctx is None or not ctx.known:
        return None
    fields = {"client_name": ctx.client_name, "reverse_name": ctx.reverse_name, "helo_name": ctx.helo}
    return pb.Context(**{k: v for k, v in fields.items() if v is not None})


def postfix_context(attrs: dict[str, str]) -> Context:
    """A policy request's names: client_name (verified or "unknown"), reverse_client_name, helo_name."""
    return from_postfix(attrs.get("client_name"), attrs.get("reverse_client_name"), attrs.get("helo_name"))


def header_value(outcome: Outcome) -> str | None:
    """Our header's value for an untrusted client, or None when the client is trusted."""
    reply = outcome.reply
    if reply is None:
        # No verdict: a value no SpamAssassin rule scores, standing above any forged copy.
        return f"unavailable; reason: {outcome.reason or 'error'}"
    if reply.verdict.trusted:
        return None
    return reply.verdict.header


def enforced_reply(outcome: Outcome) -> tuple[str, str] | None:
    """(action, SMTP reply) for a reject/tempfail verdict, else None."""
    reply = outcome.reply
    if reply is None or reply.verdict.trusted or reply.verdict.action not in ("reject", "tempfail"):
        return None
    action = reply.verdict.action
    return action, reply.verdict.reply or (REJECT_REPLY if action == "reject" else TEMPFAIL_REPLY)


# --- milter ----------------------------------------------------------------------

def make_milter(client: VerdictClient, enforce: bool = False, score_header: bool = True):
    import Milter  # pymilter: imported here so the rest of fingerprintd does not need libmilter

    counters = client.counters

    class FingerprintMilter(Milter.Base):
        def __init__(self) -> None:
            self.outcome: Outcome | None = None
            self.skip = ""
            self.seen: dict[str, list[str]] = {HEADER.lower(): [], SCORE_HEADER.lower(): []}
            self.client: tuple[str, int] | None = None
            self.hostname: str | None = None
            self.macros: dict[str, str | None] = {}
            self.helo_name: str | None = None
            self.asked_helo: str | None = None

        @Milter.noreply
        def connect(self, hostname, family, hostaddr):
            if family not in (socket.AF_INET, socket.AF_INET6):
                self.skip = "local"  # a local (unix socket) client: nothing to fingerprint
                return Milter.CONTINUE
            self.client = (hostaddr[0], hostaddr[1])
            self.hostname = hostname
            self.macros = {name: self.getsymval(name) for name in ("_", "{client_ptr}", "{client_resolve}",
                                                                   "{client_name}")}
            return Milter.CONTINUE

        @Milter.noreply
        def hello(self, hostname):
            self.helo_name = hostname
            return Milter.CONTINUE

        def _lookup(self) -> None:
            """Once per connection, at its first MAIL FROM (again only if the client greeted anew)."""
            if self.client is None or (self.outcome is not None and self.asked_helo == self.helo_name):
                return
            ip, port = self.client
            self.asked_helo = self.helo_name
            self.outcome = client.lookup(ip, port, from_milter(self.hostname, self.macros, self.helo_name))
            reply = self.outcome.reply
            log.debug("milter connect %s port %s: %s", ip, port,
                      reply.verdict.header if reply is not None else f"no verdict ({self.outcome.reason})")

        def envfrom(self, mailfrom, *params):
            self.seen = {HEADER.lower(): [], SCORE_HEADER.lower(): []}  # per message
            if self.getsymval("{auth_authen}"):
                self.skip = "authenticated"  # an authenticated user: their OS is not a spam signal
            if not self.skip:
                self._lookup()
            if enforce and not self.skip and self.outcome is not None:
                enforced = enforced_reply(self.outcome)
                if enforced is not None:
                    action, text = enforced
                    code, xcode, message = (text.split(" ", 2) + ["", ""])[:3]
                    self.setreply(code, xcode, message.replace("%", "%%"))
                    counters.inc("actions", action)
                    return Milter.REJECT if action == "reject" else Milter.TEMPFAIL
            return Milter.CONTINUE

        def header(self, name, value):
            values = self.seen.get(name.lower())
            if values is not None:
                values.append(value.strip())
            return Milter.CONTINUE

        def eom(self):
            value = score = None
            if self.skip:
                counters.inc("skipped", self.skip)
            elif self.outcome is not None and self.outcome.reply is not None:
                value = header_value(self.outcome)
                if value is None:
                    counters.inc("skipped", "trusted")
                else:
                    score = f"{self.outcome.reply.verdict.score:g}"
            # Copies that came with the message could carry a forged, friendly
            # score; a copy saying exactly what we say (our policy service's
            # PREPEND) may stay.  Without a verdict every copy goes, ours too.
            for name, ours in ((HEADER, value), (SCORE_HEADER, score)):
                values = self.seen[name.lower()]
                for index in range(len(values), 0, -1):
                    if values[index - 1] != ours:
                        self.chgheader(name, index, None)
                        counters.inc("forged_removed")
            if value is not None:
                self.addheader(HEADER, value)
                if score_header:
                    self.addheader(SCORE_HEADER, score)
                counters.inc("actions", "header")
            elif not self.skip:
                counters.inc("actions", "none")
            return Milter.ACCEPT

    return FingerprintMilter


def run_milter(socket_spec: str, client: VerdictClient, enforce: bool = False, timeout: int = MILTER_TIMEOUT) -> None:
    """Serve until SIGTERM/SIGINT; `socket_spec` is unix:/path or inet:port@host."""
    import Milter

    Milter.factory = make_milter(client, enforce)
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
    # An exception in a callback lets the mail through (pymilter's default tempfails it).
    Milter.set_exception_policy(Milter.CONTINUE)
    if socket_spec.startswith("unix:"):
        remove_stale_socket(socket_spec[5:])
        # libmilter creates the socket; Postfix's smtpd (its own user) must be able
        # to connect: restrict access with the directory's permissions instead.
        os.umask(0o000)
    log.info("milter listening on %s, asking %s", socket_spec, client.server)
    Milter.runmilter("fingerprintd", socket_spec, timeout)


# --- Postfix policy service ----------------------------------------------------------

class PolicyDecider:
    """Policy request attributes -> a Postfix action."""

    def __init__(self, client: VerdictClient, enforce: bool = False) -> None:
        self.client = client
        self.counters = client.counters
        self.enforce = enforce
        self._answered: OrderedDict[str, None] = OrderedDict()  # message instances already answered
        self._lock = threading.Lock()

    def decide(self, attrs: dict[str, str]) -> str:
        if attrs.get("request") != "smtpd_access_policy" or attrs.get("protocol_state") == "END-OF-MESSAGE":
            return "DUNNO"  # PREPEND cannot act after the content was received
        if attrs.get("sasl_username"):
            self.counters.inc("skipped", "authenticated")
            return "DUNNO"
        instance = attrs.get("instance", "")
        with self._lock:
            if instance and instance in self._answered:
                return "DUNNO"  # one verdict per message, not one per recipient
        ip = attrs.get("client_address", "")
        try:
            port = int(attrs.get("client_port", "0") or 0)
        except ValueError:
            port = 0
        if not ip or ip == "unknown":
            outcome = Outcome(None, "no-client-address")
        else:
            outcome = self.client.lookup(ip, port, postfix_context(attrs))
        value = header_value(outcome)
        if value is None:
            self.counters.inc("skipped", "trusted")
            return "DUNNO"
        if instance:
            with self._lock:
                self._answered[instance] = None
                while len(self._answered) > 10_000:
                    self._answered.popitem(last=False)
        enforced = enforced_reply(outcome) if self.enforce else None
        if enforced is not None:
            self.counters.inc("actions", enforced[0])
            return enforced[1]  # "550 5.7.1 text": Postfix rejects (5NN) or defers (4NN) with this reply
        self.counters.inc("actions", "header" if outcome.reply is not None else "unavailable_header")
        return f"PREPEND {HEADER}: {value}"


class _Conn:
    __slots__ = ("sock", "buf", "last", "busy")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.last = time.monotonic()
        self.busy = False  # a request is being decided: read nothing more until it is answered


class PolicyServer:
    """Postfix's policy protocol on one selector loop; decisions on a bounded pool.

    Any number of requests per connection, answered in order.  Bounds: see the
    module docstring (POLICY_*).
    """

    def __init__(self, listener: socket.socket, decider: PolicyDecider, *,
                 max_connections: int = POLICY_MAX_CONNECTIONS, idle_seconds: float = POLICY_IDLE_SECONDS,
                 max_request_bytes: int = POLICY_MAX_REQUEST_BYTES, max_attrs: int = POLICY_MAX_ATTRS,
                 workers: int = POLICY_WORKERS) -> None:
        self.listener = listener
        self.decider = decider
        self.counters = decider.counters
        self.max_connections = max_connections
        self.idle_seconds = idle_seconds
        self.max_request_bytes = max_request_bytes
        self.max_attrs = max_attrs
        listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._conns: OrderedDict[int, _Conn] = OrderedDict()  # by fd, least recently active first
        self._done: deque[tuple[_Conn, str]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="policy")
        self._stop = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._sel.select(timeout=poll_interval):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        try:
                            self._wake_r.recv(4096)
                        except BlockingIOError:
                            pass
                    else:
                        self._read(key.data)
                while self._done:
                    conn, action = self._done.popleft()
                    self._answer(conn, action)
                self._expire()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait()

    def server_close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and friends: keep serving the connections we have
            log.warning("policy: accept failed: %s", exc)
            self.counters.inc("connections_closed", "accept_error")
            time.sleep(0.01)
            return
        if len(self._conns) >= self.max_connections:
            # Admit the newcomer (Postfix reconnects when it needs to) at the
            # cost of the connection idle longest, unless all are mid-request.
            idle = next((c for c in self._conns.values() if not c.busy), None)
            if idle is None:
                self.counters.inc("connections_closed", "over_capacity")
                sock.close()
                return
            self.counters.inc("connections_closed", "evicted")
            self._close(idle)
        sock.setblocking(False)
        conn = _Conn(sock)
        self._conns[sock.fileno()] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)  # Postfix closed the connection
            return
        conn.buf += data
        self._touch(conn)
        self._next_request(conn)

    def _next_request(self, conn: _Conn) -> None:
        """Start deciding the buffered request, if one is complete; enforce the size bounds."""
        end = conn.buf.find(b"\n\n")
        head = conn.buf if end < 0 else conn.buf[:end + 1]
        if len(head) > self.max_request_bytes or head.count(b"\n") > self.max_attrs:
            self._protocol_error(conn, "oversized", f"request over {self.max_request_bytes} bytes or "
                                                    f"{self.max_attrs} attributes")
            return
        if end < 0:
            return
        raw = bytes(conn.buf[:end + 1])
        del conn.buf[:end + 2]
        attrs: dict[str, str] = {}
        for line in raw.split(b"\n")[:-1] if raw != b"\n" else ():
            if len(line) > POLICY_MAX_LINE:
                self._protocol_error(conn, "oversized", "attribute line too long")
                return
            name, eq, value = line.decode("utf-8", "replace").rstrip("\r").partition("=")
            if not eq:
                self._protocol_error(conn, "protocol", f"no '=' in {name[:80]!r}")
                return
            attrs[name] = value
        conn.busy = True
        self._sel.unregister(conn.sock)
        self._pool.submit(self._decide, conn, attrs)

    def _decide(self, conn: _Conn, attrs: dict[str, str]) -> None:
        try:
            action = self.decider.decide(attrs)
        except Exception:  # never leave Postfix waiting: answer, and say why in the log
            log.exception("policy: deciding failed, answering DUNNO")
            action = "DUNNO"
        self._done.append((conn, action))
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # a wakeup is pending already (or we are closing)

    def _answer(self, conn: _Conn, action: str) -> None:
        if conn.sock.fileno() < 0:
            return  # closed meanwhile
        reply = f"action={action}\n\n".encode()
        try:
            sent = conn.sock.send(reply)
        except OSError:
            sent = -1
        if sent != len(reply):
            # One small reply per request and nothing read meanwhile: a full
            # send buffer means a peer that does not read.
            self.counters.inc("connections_closed", "write_error")
            self._close(conn)
            return
        conn.busy = False
        self._touch(conn)
        self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        self._next_request(conn)  # requests pipelined behind this one

    def _protocol_error(self, conn: _Conn, reason: str, detail: str) -> None:
        log.warning("policy: %s, disconnecting without a reply", detail)
        self.counters.inc("connections_closed", reason)
        self._close(conn)

    def _touch(self, conn: _Conn) -> None:
        conn.last = time.monotonic()
        self._conns.move_to_end(conn.sock.fileno())

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.idle_seconds
        while self._conns:
            conn = next(iter(self._conns.values()))
            if conn.last > cutoff:
                break
            if conn.busy:
                self._touch(conn)  # its lookup is bounded; it is answered, then idles anew
                continue
            self.counters.inc("connections_closed", "idle")
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        self._conns.pop(fd, None)
        if not conn.busy:
            self._sel.unregister(conn.sock)
        conn.sock.close()

    @property
    def connections(self) -> int:
        return len(self._conns)


def policy_server(listen: str, decider: PolicyDecider, **bounds) -> PolicyServer:
    """A policy server bound to unix:/path or inet:host:port; call serve_forever()."""
    if listen.startswith("unix:"):
        path = listen[5:]
        remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o666)  # Postfix's smtpd runs as its own user
    elif listen.startswith("inet:"):
        host, _, port = listen[5:].rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    else:
        raise ValueError(f"listen on unix:PATH or inet:HOST:PORT, not {listen!r}")
    sock.listen(128)
    return PolicyServer(sock, decider, **bounds)


# --- metrics -------------------------------------------------------------------------

def start_metrics(spec: str, kind: str, counters: Counters, extra=None):
    """Serve Prometheus metrics on HOST:PORT from `counters` (prometheus_client)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics wants HOST:PORT, not {spec!r}")
    prefix = f"fingerprintd_{kind}"
    families = {  # counter name -> (help, label name or None)
        "lookups": ("Lookups asked of the fingerprintd service", None),
        "lookup_failures": ("Lookups without an answer (mail went through), by reason", "reason"),
        "unknown": ("Lookups answered 'not seen'", None),
        "skipped": ("Clients given no header: trusted network, authenticated, local", "reason"),
        "actions": ("What the filter did: header, unavailable_header, none, reject, tempfail", "action"),
        "forged_removed": ("X-OS-Fingerprint headers removed from incoming messages", None),
        "connections_closed": ("Connections closed by us, by reason (oversized, idle, protocol, evicted, ...)",
                               "reason"),
    }

    class Collector:
        def collect(self):
            snap = counters.snapshot()
            for name, (text, label) in families.items():
                fam = CounterMetricFamily(f"{prefix}_{name}", text, labels=[label] if label else None)
                if label:
                    for (n, value), count in sorted(snap.items()):
                        if n == name:
                            fam.add_metric([value], count)
                else:
                    fam.add_metric([], snap.get((name, ""), 0))
                yield fam
            if extra is not None:
                for name, (text, value) in extra().items():
                    yield GaugeMetricFamily(f"{prefix}_{name}", text, value=value)

    registry = CollectorRegistry()
    registry.register(Collector())
    return start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
