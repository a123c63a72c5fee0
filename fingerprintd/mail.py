"""How a verdict reaches the mail flow: a milter and a Postfix policy service.

Both ask the running service (gRPC `Lookup`) about the client's connection
and never stall mail: every query has a hard deadline, and any failure (the
service down, slow, or the client unknown) lets the mail through unchanged,
logged and counted.

* Milter (pymilter): the client's ip and source port come from the connect
  callback; at end of message it removes any `X-OS-Fingerprint` headers the
  message brought along (forged scores) and adds its own, value first the OS
  string: `Linux 3.11 and newer; dist: 6; link: Ethernet or modem; class: server; score: -0.1`.
  Trusted networks (the policy's) and SASL-authenticated clients get no header.
  With `enforce`, the policy's tempfail/reject actions are applied at MAIL FROM.
* Policy service: Postfix's SMTPD access policy delegation protocol
  (name=value lines, an empty line), answering DUNNO, `PREPEND X-OS-Fingerprint: ...`
  (once per message), or, with `enforce`, DEFER_IF_PERMIT / REJECT.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

import grpc

from fingerprintd.unixsock import remove_stale_socket
from fingerprintd.v1 import fingerprintd_pb2 as pb
from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

log = logging.getLogger("fingerprintd")
HEADER = "X-OS-Fingerprint"
SCORE_HEADER = "X-OS-Fingerprint-Score"
REJECT_TEXT = "Your host looks like a desktop, not a mail server"  # with --enforce, for "reject"
TEMPFAIL_TEXT = "Please try again later"  # and for "tempfail"


class VerdictClient:
    """`Lookup` with a hard deadline; None whenever no verdict can be had in time."""

    def __init__(self, server: str, timeout: float = 0.25, wait_ms: int = 50, token: str = "") -> None:
        self.server = server
        self.timeout = timeout
        self.wait_ms = wait_ms
        self.metadata = [("authorization", f"Bearer {token}")] if token else None
        self.channel = grpc.insecure_channel(server)
        self.stub = pb_grpc.FingerprintStub(self.channel)
        self.failures = 0
        self.unknown = 0
        # Calls run on threads Python made: a gRPC call made straight from
        # libmilter's own (C) threads was seen to hang past its deadline.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lookup")

    def lookup(self, ip: str, port: int) -> pb.LookupResponse | None:
        budget = self.timeout + self.wait_ms / 1000
        future = self._pool.submit(self.stub.Lookup, pb.LookupRequest(ip=ip, port=port, wait_ms=self.wait_ms),
                                   timeout=budget, metadata=self.metadata)
        try:
            reply = future.result(timeout=budget + 0.05)  # the hard bound, whatever gRPC does
        except grpc.RpcError as exc:
            self.failures += 1
            log.warning("fingerprintd lookup failed, letting mail through: %s %s", exc.code().name, exc.details())
            return None
        except FuturesTimeout:
            self.failures += 1
            log.warning("fingerprintd lookup timed out after %.0f ms, letting mail through", budget * 1000)
            return None
        if not reply.found:
            self.unknown += 1
            return None
        return reply


def header_value(reply: pb.LookupResponse | None) -> str | None:
    """The header to add, or None when the client is trusted or was not seen."""
    if reply is None or reply.verdict.trusted:
        return None
    return reply.verdict.header


# --- milter ----------------------------------------------------------------------

def make_milter(client: VerdictClient, enforce: bool = False, score_header: bool = True,
                reject_message: str = REJECT_TEXT, tempfail_message: str = TEMPFAIL_TEXT):
    import Milter  # pymilter: imported here so the rest of fingerprintd does not need libmilter

    class FingerprintMilter(Milter.Base):
        def __init__(self) -> None:
            self.reply: pb.LookupResponse | None = None
            self.skip = False
            self.seen: dict[str, list[str]] = {HEADER.lower(): [], SCORE_HEADER.lower(): []}

        @Milter.noreply
        def connect(self, hostname, family, hostaddr):
            if family not in (socket.AF_INET, socket.AF_INET6):
                self.skip = True  # a local (unix socket) client: nothing to fingerprint
                return Milter.CONTINUE
            ip, port = hostaddr[0], hostaddr[1]
            self.reply = client.lookup(ip, port)
            log.debug("milter connect %s port %s: %s", ip, port,
                      self.reply.verdict.header if self.reply is not None else "no verdict")
            return Milter.CONTINUE

        def envfrom(self, mailfrom, *params):
            self.seen = {HEADER.lower(): [], SCORE_HEADER.lower(): []}  # per message
            if self.getsymval("{auth_authen}"):
                self.skip = True  # an authenticated user: their OS is not a spam signal
            if enforce and not self.skip and self.reply is not None and not self.reply.verdict.trusted:
                action = self.reply.verdict.action
                if action == "reject":
                    self.setreply("550", "5.7.1", reject_message.replace("%", "%%"))
                    return Milter.REJECT
                if action == "tempfail":
                    self.setreply("451", "4.7.1", tempfail_message.replace("%", "%%"))
                    return Milter.TEMPFAIL
            return Milter.CONTINUE

        def header(self, name, value):
            values = self.seen.get(name.lower())
            if values is not None:
                values.append(value.strip())
            return Milter.CONTINUE

        def eom(self):
            value = None if self.skip else header_value(self.reply)
            score = f"{self.reply.verdict.score:g}" if value is not None else None
            # Copies that came with the message could carry a forged, friendly
            # score; a copy saying exactly what we say (our policy service's
            # PREPEND) may stay.
            for name, ours in ((HEADER, value), (SCORE_HEADER, score)):
                values = self.seen[name.lower()]
                for index in range(len(values), 0, -1):
                    if values[index - 1] != ours:
                        self.chgheader(name, index, None)
            if value is not None:
                self.addheader(HEADER, value)
                if score_header:
                    self.addheader(SCORE_HEADER, score)
            return Milter.ACCEPT

    return FingerprintMilter


def run_milter(socket_spec: str, client: VerdictClient, enforce: bool = False, timeout: int = 30) -> None:
    """Serve until SIGTERM/SIGINT; `socket_spec` is unix:/path or inet:port@host."""
    import Milter

    Milter.factory = make_milter(client, enforce)
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
    if socket_spec.startswith("unix:"):
        remove_stale_socket(socket_spec[5:])
        # libmilter creates the socket; Postfix's smtpd (its own user) must be able
        # to connect: restrict access with the directory's permissions instead.
        os.umask(0o000)
    log.info("milter listening on %s, asking %s", socket_spec, client.server)
    Milter.runmilter("fingerprintd", socket_spec, timeout)


# --- Postfix policy service ----------------------------------------------------------

MAX_LINE = 4096  # Postfix's own limit on attribute lines is larger, but no real value comes near


class PolicyHandler(socketserver.StreamRequestHandler):
    """One Postfix connection: any number of requests, answered in order."""

    def handle(self) -> None:
        decider: PolicyDecider = self.server.decider  # type: ignore[attr-defined]
        while True:
            attrs: dict[str, str] = {}
            while True:
                line = self.rfile.readline(MAX_LINE + 1)
                if not line:
                    return  # Postfix closed the connection
                if len(line) > MAX_LINE or not line.endswith(b"\n"):
                    log.warning("policy: protocol error (line too long or cut), disconnecting")
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if not text:
                    break
                name, eq, value = text.partition("=")
                if not eq:
                    log.warning("policy: protocol error (no '=' in %r), disconnecting", text[:80])
                    return
                attrs[name] = value
            action = decider.decide(attrs)
            self.wfile.write(f"action={action}\n\n".encode())
            self.wfile.flush()


class PolicyDecider:
    """Policy request attributes -> a Postfix action."""

    def __init__(self, client: VerdictClient, enforce: bool = False, reject_message: str = REJECT_TEXT,
                 tempfail_message: str = TEMPFAIL_TEXT) -> None:
        self.client = client
        self.enforce = enforce
        self.reject_message = reject_message
        self.tempfail_message = tempfail_message
        self._prepended: OrderedDict[str, None] = OrderedDict()  # message instances already answered
        self._lock = threading.Lock()

    def decide(self, attrs: dict[str, str]) -> str:
        if attrs.get("request") != "smtpd_access_policy" or attrs.get("sasl_username"):
            return "DUNNO"
        ip = attrs.get("client_address", "")
        try:
            port = int(attrs.get("client_port", "0") or 0)
        except ValueError:
            port = 0
        if not ip or ip == "unknown":
            return "DUNNO"
        instance = attrs.get("instance", "")
        with self._lock:
            if instance and instance in self._prepended:
                return "DUNNO"  # one verdict per message, not one per recipient
        reply = self.client.lookup(ip, port)
        value = header_value(reply)
        if value is None:
            return "DUNNO"
        if self.enforce and reply is not None:
            if reply.verdict.action == "reject":
                return f"REJECT {self.reject_message}"
            if reply.verdict.action == "tempfail":
                return f"DEFER_IF_PERMIT {self.tempfail_message}"
        if instance:
            with self._lock:
                self._prepended[instance] = None
                while len(self._prepended) > 10_000:
                    self._prepended.popitem(last=False)
        return f"PREPEND {HEADER}: {value}"


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def policy_server(listen: str, decider: PolicyDecider) -> socketserver.BaseServer:
    """A policy server bound to unix:/path or inet:host:port; call serve_forever()."""
    if listen.startswith("unix:"):
        path = listen[5:]
        remove_stale_socket(path)
        srv: socketserver.BaseServer = _UnixServer(path, PolicyHandler)
        os.chmod(path, 0o666)  # Postfix's smtpd runs as its own user
    elif listen.startswith("inet:"):
        host, _, port = listen[5:].rpartition(":")
        srv = _TCPServer((host.strip("[]") or "127.0.0.1", int(port)), PolicyHandler)
    else:
        raise ValueError(f"listen on unix:PATH or inet:HOST:PORT, not {listen!r}")
    srv.decider = decider  # type: ignore[attr-defined]
    return srv
