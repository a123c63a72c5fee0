"""The milter's and the policy service's own logic and bounds (no MTA).

The verdicts come from a real fingerprintd service (Service + its gRPC server
on a unix socket, fed crafted SYNs) or, for the fault paths, from a real gRPC
server that never answers; the policy protocol is spoken over real sockets.
"""

from __future__ import annotations

import importlib.util
import random
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest

from fingerprintd import mail
from fingerprintd.config import Config
from fingerprintd.context import from_milter
from fingerprintd.hosts import normalize_ip
from fingerprintd.policy import parse_policy
from fingerprintd.server import build_server
from fingerprintd.service import Service
from fingerprintd.v1 import fingerprintd_pb2 as pb
from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc
from tests.conftest import ROOT, need
from tests.craft import Shape, frame
from tests.helpers import free_port
from tests.scenarios import recording_milter

RNG = random.Random(10)
WINXP = Shape(ttl=113, mss=1460, win=65535, wscale=0, layout=("mss", "nop", "nop", "sok"))
LINUX = Shape(ttl=55, mss=1460, win=29200, wscale=7)
POLICY = """[settings]
trusted_networks = ["198.51.100.0/24"]
reject_message = "554 5.7.0 Desktops may not send here (policy.toml)"
tempfail_message = "450 4.7.2 Come back later (policy.toml)"
[[rule]]
name = "xp"
os_name = "^Windows$"
score = 2.3
action = "reject"
[[rule]]
name = "linux"
os_name = "^Linux$"
score = -0.1
"""
CLIENT = ("203.0.113.9", 40100)  # a Windows XP SYN
LINUX_CLIENT = ("203.0.113.10", 40200)
TRUSTED = ("198.51.100.7", 40300)  # Linux, in the trusted network


def _syn(shape: Shape, ip: str, port: int) -> tuple[int, int, bytes]:
    data = bytes(frame(shape, ip, "192.0.2.25", port, 25, RNG, seq=RNG.randrange(1, 1 << 31)))
    return (int(time.time()), 0, data)


class Api:
    """The real service's gRPC API on a unix socket; can be stopped and started again."""

    def __init__(self, tmp_path) -> None:
        (tmp_path / "policy.toml").write_text(POLICY)
        self.path = f"{tmp_path}/api.sock"
        self.service = Service(Config(listen=[f"unix:{self.path}"], policy=str(tmp_path / "policy.toml")))
        self.service.ingest([_syn(WINXP, *CLIENT), _syn(LINUX, *LINUX_CLIENT), _syn(LINUX, *TRUSTED)], 1)
        self.server = None
        self.start()

    def start(self) -> None:
        self.server, _ = build_server(self.service, self.service.cfg.listen)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait()


@pytest.fixture
def api(tmp_path):
    a = Api(tmp_path)
    yield a
    a.stop()


class Silent(pb_grpc.FingerprintServicer):
    """A real gRPC server whose Lookup never answers (until the test ends)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.requests: list[pb.LookupRequest] = []

    def Lookup(self, request, context):  # noqa: N802
        self.requests.append(request)
        self.release.wait(30)
        return pb.LookupResponse()


@pytest.fixture
def silent(tmp_path):
    servicer = Silent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_FingerprintServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{tmp_path}/silent.sock")
    server.start()
    yield f"unix:{tmp_path}/silent.sock", servicer
    servicer.release.set()
    server.stop(0)


def client_for(address: str, **kw) -> mail.VerdictClient:
    kw.setdefault("timeout", 2.0)  # generous: no test here measures time
    return mail.VerdictClient(address, **kw)


def returns_within(call, seconds: float = 20):
    """call() in a thread; its result, failing the test if it did not return at all in `seconds`."""
    box = []
    t = threading.Thread(target=lambda: box.append(call()), daemon=True)
    t.start()
    t.join(seconds)
    assert box, f"did not return within {seconds} s"
    return box[0]


# --- the verdict carries the policy's reply texts ------------------------------------

def test_policy_verdict_carries_the_configured_replies(api):
    client = client_for(f"unix:{api.path}")
    try:
        reject = client.lookup(*CLIENT)
        assert reject.reply.verdict.action == "reject"
        assert reject.reply.verdict.reply == "554 5.7.0 Desktops may not send here (policy.toml)"
        tag = client.lookup(*LINUX_CLIENT)
        assert tag.reply.verdict.action == "tag" and tag.reply.verdict.reply == ""
    finally:
        client.close()
    tempfail = parse_policy(POLICY.replace('action = "reject"', 'action = "tempfail"'))
    ip = normalize_ip(CLIENT[0])
    obs, _ = api.service.hosts.lookup(ip, CLIENT[1], 0)
    assert tempfail.verdict(obs.fp, ip).reply == "450 4.7.2 Come back later (policy.toml)"


# --- milter ---------------------------------------------------------------------------

def milter(client, enforce=False, macros=None):
    return recording_milter(client, enforce, macros)


def run(m, client_addr, headers=()):
    import Milter

    m.connect("client.example", socket.AF_INET, client_addr)
    result = m.envfrom("<a@example.net>")
    for name, value in headers:
        m.header(name, value)
    return result, (m.eom() if result == Milter.CONTINUE else None)


def test_milter_adds_headers_and_drops_forged_copies(api):
    import Milter

    client = client_for(f"unix:{api.path}")
    # What the policy service would PREPEND for the same names (the milter's connect hostname, no HELO).
    ours = client.lookup(*LINUX_CLIENT, from_milter("client.example", {})).reply.verdict.header
    assert ours.startswith("Linux 3.11 and newer; dist: 9;")
    m = milter(client)
    result, eom = run(m, LINUX_CLIENT, [("X-OS-Fingerprint", "FreeBSD; score: -5"), ("X-Os-Fingerprint-Score", "-5"),
                                        ("X-OS-Fingerprint", ours)])
    assert (result, eom) == (Milter.CONTINUE, Milter.ACCEPT)
    assert m.removed == [("X-OS-Fingerprint", 1), ("X-OS-Fingerprint-Score", 1)]  # ours (index 2) stays
    assert m.added == [("X-OS-Fingerprint", ours), ("X-OS-Fingerprint-Score", "-0.1")]
    assert client.counters.get("actions", "header") == 1 and client.counters.get("forged_removed") == 2
    client.close()


@pytest.mark.parametrize("addr,macros,skipped", [
    (LINUX_CLIENT, {"{auth_authen}": "alice"}, "authenticated"),
    (TRUSTED, {}, "trusted"),
    (("203.0.113.99", 1), {}, None),  # not seen: mail goes through untouched
])
def test_milter_skips(api, addr, macros, skipped):
    import Milter

    client = client_for(f"unix:{api.path}")
    m = milter(client, enforce=True, macros=macros)
    result, eom = run(m, addr, [("X-OS-Fingerprint", "forged")])
    assert (result, eom) == (Milter.CONTINUE, Milter.ACCEPT)
    assert m.added == [] and m.removed == [("X-OS-Fingerprint", 1)]  # forged copies go regardless
    if skipped:
        assert client.counters.get("skipped", skipped) == 1
    else:
        assert client.counters.get("unknown") == 1 and client.counters.get("actions", "none") == 1
    client.close()


@pytest.mark.parametrize("enforce", [True, False])
def test_milter_enforcement_uses_the_policy_reply(api, enforce):
    import Milter

    client = client_for(f"unix:{api.path}")
    m = milter(client, enforce=enforce)
    result, _ = run(m, CLIENT)
    if enforce:
        assert result == Milter.REJECT
        assert m.replies == [("554", "5.7.0", "Desktops may not send here (policy.toml)")]
    else:
        assert result == Milter.CONTINUE and m.replies == []
    client.close()


def test_milter_without_pymilter_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['Milter'] = None; from fingerprintd.cli import main; "
            f"sys.exit(main(['milter', '--listen', 'unix:{tmp_path}/m.sock', '--server', 'unix:{tmp_path}/x']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'fingerprintd[milter]'" in lines[0] and "libmilter-dev" in lines[0]


# --- the lookup's bounds and faults -------------------------------------------------

def test_hard_timeout_fails_open_with_the_wait_carved_out(silent):
    address, servicer = silent
    client = mail.VerdictClient(address, timeout=0.2, wait_ms=1000)
    outcome = returns_within(lambda: client.lookup("192.0.2.1", 25))
    assert outcome == mail.Outcome(None, "timeout")
    assert [r.wait_ms for r in servicer.requests] == [200 - mail.ANSWER_RESERVE_MS]  # not the 1000 asked for
    assert client.counters.get("lookup_failures", "timeout") == 1
    # The policy service lets the mail on, with a header no SpamAssassin rule scores.
    decider = mail.PolicyDecider(client)
    action = returns_within(lambda: decider.decide(request(instance="t.1")))
    assert action == "PREPEND X-OS-Fingerprint: unavailable; reason: timeout"
    # The milter lets the mail on too: no header, forged copies removed.
    import Milter

    m = milter(client, enforce=True)
    assert returns_within(lambda: run(m, ("192.0.2.3", 4000), [("X-OS-Fingerprint", "forged")])) == \
        (Milter.CONTINUE, Milter.ACCEPT)
    assert m.added == [] and m.removed == [("X-OS-Fingerprint", 1)]
    assert client.counters.get("lookup_failures", "timeout") == 3
    client.close()


def test_lookups_in_flight_are_capped(silent):
    address, servicer = silent
    client = mail.VerdictClient(address, timeout=20, max_inflight=2)
    stuck = [threading.Thread(target=client.lookup, args=("192.0.2.1", 25), daemon=True) for _ in range(2)]
    for t in stuck:
        t.start()
    deadline = time.monotonic() + 20
    while len(servicer.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(servicer.requests) == 2
    assert returns_within(lambda: client.lookup("192.0.2.2", 25)) == mail.Outcome(None, "busy")
    assert client.counters.get("lookup_failures", "busy") == 1 and len(servicer.requests) == 2
    servicer.release.set()
    client.close()


def test_first_lookup_after_a_service_restart_gets_a_verdict(api):
    client = client_for(f"unix:{api.path}", timeout=1.0)
    assert client.lookup(*CLIENT).reply is not None
    api.stop()
    for _ in range(3):  # the channel fails to reconnect and backs off
        assert client.lookup(*CLIENT) == mail.Outcome(None, "unavailable")
    api.start()
    outcome = client.lookup(*CLIENT)
    assert outcome.reply is not None and outcome.reply.verdict.action == "reject", outcome
    client.close()


# --- policy service ----------------------------------------------------------------

def request(**attrs) -> dict:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": LINUX_CLIENT[0],
            "client_port": str(LINUX_CLIENT[1]), "instance": "a1b2.c3d4.1"}
    base.update(attrs)
    return {k: v for k, v in base.items() if v is not None}


def test_policy_decisions(api, tmp_path):
    client = client_for(f"unix:{api.path}")
    d = mail.PolicyDecider(client)
    header = client.lookup(*LINUX_CLIENT).reply.verdict.header
    assert d.decide(request()) == f"PREPEND X-OS-Fingerprint: {header}"
    assert d.decide(request()) == "DUNNO"  # second recipient of the same message
    assert d.decide(request(instance="x.2", sasl_username="alice")) == "DUNNO"
    assert d.decide({"request": "junk"}) == "DUNNO"
    assert d.decide(request(instance="x.3", protocol_state="END-OF-MESSAGE")) == "DUNNO"
    # No verdict: still a header, so a forged copy below is never the first instance.
    assert d.decide(request(instance="x.4", client_address="unknown")) == \
        "PREPEND X-OS-Fingerprint: unavailable; reason: no-client-address"
    assert d.decide(request(instance="x.5", client_address="203.0.113.99")) == \
        "PREPEND X-OS-Fingerprint: unavailable; reason: not-seen"
    assert d.decide(request(instance="x.6", client_address=TRUSTED[0], client_port=str(TRUSTED[1]))) == "DUNNO"
    xp = {"client_address": CLIENT[0], "client_port": str(CLIENT[1])}
    assert d.decide(request(instance="x.7", **xp)).startswith("PREPEND X-OS-Fingerprint: Windows")  # tag only
    enforcing = mail.PolicyDecider(client, enforce=True)
    assert enforcing.decide(request(instance="x.8", **xp)) == "554 5.7.0 Desktops may not send here (policy.toml)"
    down = mail.PolicyDecider(mail.VerdictClient(f"unix:{tmp_path}/nobody-home.sock"))
    assert down.decide(request()) == "PREPEND X-OS-Fingerprint: unavailable; reason: unavailable"
    assert client.counters.get("skipped", "trusted") == 1 and client.counters.get("skipped", "authenticated") == 1
    client.close()


def _serve(tmp_path, client, **bounds) -> tuple[mail.PolicyServer, str]:
    path = f"{tmp_path}/p.sock"
    srv = mail.policy_server(f"unix:{path}", mail.PolicyDecider(client), **bounds)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    return srv, path


def _stop(srv: mail.PolicyServer) -> None:
    srv.shutdown()
    srv.server_close()


def _talk(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        # Connect before the timeout is set: a unix socket with a timeout is non-blocking
        # underneath and fails at once (EAGAIN) while the listen backlog is full.
        s.connect(path)
        s.settimeout(20)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server hung up on us mid-request
        out = b""
        try:
            while chunk := s.recv(4096):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def _wire(**attrs) -> bytes:
    return ("".join(f"{k}={v}\n" for k, v in request(**attrs).items()) + "\n").encode()


def test_policy_protocol(api, tmp_path):
    client = client_for(f"unix:{api.path}")
    srv, path = _serve(tmp_path, client)
    try:
        out = _talk(path, _wire() + _wire(instance="other.1"))  # pipelined: answered in order
        assert out.count(b"\n\n") == 2 and out.startswith(b"action=PREPEND X-OS-Fingerprint: Linux 3.11")
        # A protocol error: no reply, the connection is closed.
        assert _talk(path, b"request=smtpd_access_policy\nno equals sign here\n\n") == b""
        assert _talk(path, b"x=" + b"y" * 5000 + b"\n\n") == b""
        assert client.counters.get("connections_closed", "protocol") == 1
    finally:
        _stop(srv)
        client.close()


def test_policy_request_size_is_bounded(api, tmp_path):
    client = client_for(f"unix:{api.path}")
    srv, path = _serve(tmp_path, client)
    try:
        many = "".join(f"a{i}=v\n" for i in range(60_000)).encode() + _wire()  # 60,000 attributes
        assert _talk(path, many) == b""
        big = b"request=smtpd_access_policy\n" + b"".join(b"x=" + b"y" * 4000 + b"\n" for _ in range(100)) + b"\n"
        assert _talk(path, big) == b""  # 400 kB of short-enough lines
        assert client.counters.get("connections_closed", "oversized") == 2
        assert client.counters.get("lookups") == 0  # neither was decided
        assert _talk(path, _wire()).startswith(b"action=PREPEND ")  # and the next client is served
    finally:
        _stop(srv)
        client.close()


def test_policy_connections_are_capped_without_a_thread_each(api, tmp_path):
    client = client_for(f"unix:{api.path}")
    srv, path = _serve(tmp_path, client, max_connections=50)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need_fds = min(2000, hard - 300)  # the measured defect: 2,000 idle connections made 2,008 threads
    idle = []
    try:
        if soft < need_fds + 200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need_fds + 300, hard))
        threads_before = threading.active_count()
        for _ in range(need_fds):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            idle.append(s)
        out = _talk(path, _wire())  # a real request still gets its answer
        assert out.startswith(b"action=PREPEND X-OS-Fingerprint: Linux"), out
        assert srv.connections <= 50
        assert threading.active_count() - threads_before <= mail.POLICY_WORKERS + mail.MAX_INFLIGHT
        assert client.counters.get("connections_closed", "evicted") >= need_fds - 50
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        _stop(srv)
        client.close()


def test_policy_idle_connections_are_closed(api, tmp_path):
    client = client_for(f"unix:{api.path}")
    srv, path = _serve(tmp_path, client, idle_seconds=0.3)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)  # generous: the server must hang up well before
            s.connect(path)
            s.sendall(b"request=smtpd_access_policy\n")  # half a request, then nothing
            assert s.recv(100) == b""
        assert client.counters.get("connections_closed", "idle") == 1
    finally:
        _stop(srv)
        client.close()


# --- metrics ---------------------------------------------------------------------------

def _scrape(port: int) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_policyd_metrics_scrape(tmp_path):
    """`fingerprintd policyd --metrics`, its service down: a real request, then a real scrape."""
    port = free_port()
    sock = tmp_path / "p.sock"
    proc = subprocess.Popen([sys.executable, "-m", "fingerprintd", "policyd", "--listen", f"unix:{sock}",
                             "--server", f"unix:{tmp_path}/nobody-home.sock", "--metrics", f"127.0.0.1:{port}"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert _talk(str(sock), _wire()) == b"action=PREPEND X-OS-Fingerprint: unavailable; reason: unavailable\n\n"
        assert _talk(str(sock), b"a" * 70_000) == b""
        text = _scrape(port)
        assert "fingerprintd_policyd_lookups_total 1.0" in text
        assert 'fingerprintd_policyd_lookup_failures_total{reason="unavailable"} 1.0' in text
        assert 'fingerprintd_policyd_actions_total{action="unavailable_header"} 1.0' in text
        assert 'fingerprintd_policyd_connections_closed_total{reason="oversized"} 1.0' in text
        assert "fingerprintd_policyd_connections " in text
    finally:
        proc.terminate()
        proc.wait(30)


def test_milter_metrics_scrape(tmp_path):
    need(importlib.util.find_spec("Milter") is not None, "pymilter is not installed (pip install -e '.[test]')")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fingerprintd", "milter", "--listen", f"unix:{tmp_path}/m.sock",
                             "--server", f"unix:{tmp_path}/nobody-home.sock", "--metrics", f"127.0.0.1:{port}"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        text = _scrape(port)
        assert "fingerprintd_milter_lookups_total 0.0" in text and "# TYPE fingerprintd_milter_lookup_failures" in text
    finally:
        proc.terminate()
        proc.wait(30)

