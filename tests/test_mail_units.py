"""The milter's and the policy service's own logic, driven directly (no MTA)."""

from __future__ import annotations

import socket
import threading

import pytest

from fingerprintd import mail
from fingerprintd.v1 import fingerprintd_pb2 as pb


class FakeClient:
    """Stands in for the gRPC client: the verdict a running service would give."""

    def __init__(self, reply: pb.LookupResponse | None) -> None:
        self.reply = reply
        self.calls: list[tuple[str, int]] = []
        self.server = "fake"

    def lookup(self, ip: str, port: int):
        self.calls.append((ip, port))
        return self.reply


def verdict(action: str = "tag", score: float = 1.3, trusted: bool = False) -> pb.LookupResponse:
    return pb.LookupResponse(found=True, verdict=pb.Verdict(
        score=score, action=action, trusted=trusted,
        header=f"Windows 7 or 8; dist: 11; link: Ethernet or modem; score: {score:g}"))


def milter(client, enforce=False, macros=None):
    pytest.importorskip("Milter")
    cls = mail.make_milter(client, enforce)

    class Recording(cls):
        def __init__(self):
            super().__init__()
            self._setctx(None)  # pymilter's bookkeeping, without a libmilter context
            self.added, self.removed, self.replies = [], [], []

        def getsymval(self, name):
            return (macros or {}).get(name)

        def addheader(self, name, value, idx=-1):
            self.added.append((name, value))

        def chgheader(self, name, idx, value):
            self.removed.append((name, idx))

        def setreply(self, rcode, xcode, msg):
            self.replies.append((rcode, xcode, msg))

    return Recording()


def run(m, headers=()):
    import Milter

    m.connect("client.example", socket.AF_INET6, ("2001:db8::7", 40123, 0, 0))
    result = m.envfrom("<a@example.net>")
    for name, value in headers:
        m.header(name, value)
    return result, (m.eom() if result == Milter.CONTINUE else None)


def test_milter_adds_headers_and_drops_forged_copies():
    import Milter

    client = FakeClient(verdict())
    m = milter(client)
    result, eom = run(m, [("X-OS-Fingerprint", "Linux; score: -5"), ("X-Os-Fingerprint-Score", "-5"),
                          ("X-OS-Fingerprint", "Windows 7 or 8; dist: 11; link: Ethernet or modem; score: 1.3")])
    assert client.calls == [("2001:db8::7", 40123)]
    assert (result, eom) == (Milter.CONTINUE, Milter.ACCEPT)
    assert m.removed == [("X-OS-Fingerprint", 1), ("X-OS-Fingerprint-Score", 1)]  # ours (index 2) stays
    assert m.added == [("X-OS-Fingerprint", "Windows 7 or 8; dist: 11; link: Ethernet or modem; score: 1.3"),
                       ("X-OS-Fingerprint-Score", "1.3")]


@pytest.mark.parametrize("reply,macros", [
    (verdict(), {"{auth_authen}": "alice"}),  # SASL-authenticated: skipped
    (verdict(trusted=True), {}),  # a trusted network: skipped
    (None, {}),  # service down or client unknown: mail goes through untouched
])
def test_milter_skips(reply, macros):
    import Milter

    m = milter(FakeClient(reply), enforce=True, macros=macros)
    result, eom = run(m, [("X-OS-Fingerprint", "forged")])
    assert (result, eom) == (Milter.CONTINUE, Milter.ACCEPT)
    assert m.added == [] and m.removed == [("X-OS-Fingerprint", 1)]  # forged copies go regardless


@pytest.mark.parametrize("action,enforce,expected,code", [
    ("reject", True, "REJECT", "550"), ("tempfail", True, "TEMPFAIL", "451"), ("reject", False, "CONTINUE", None),
])
def test_milter_enforcement(action, enforce, expected, code):
    import Milter

    m = milter(FakeClient(verdict(action=action)), enforce=enforce)
    result, _ = run(m)
    assert result == getattr(Milter, expected)
    assert [r[0] for r in m.replies] == ([code] if code else [])


def request(**attrs) -> dict:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.7",
            "client_port": "40100", "instance": "a1b2.c3d4.1"}
    base.update(attrs)
    return {k: v for k, v in base.items() if v is not None}


def test_policy_decisions():
    client = FakeClient(verdict())
    d = mail.PolicyDecider(client)
    assert d.decide(request()) == "PREPEND X-OS-Fingerprint: Windows 7 or 8; dist: 11; link: Ethernet or modem; " \
                                  "score: 1.3"
    assert client.calls == [("192.0.2.7", 40100)]
    assert d.decide(request()) == "DUNNO"  # second recipient of the same message
    assert d.decide(request(instance="x.2", sasl_username="alice")) == "DUNNO"
    assert d.decide(request(instance="x.3", client_address="unknown")) == "DUNNO"
    assert d.decide({"request": "junk"}) == "DUNNO"
    assert mail.PolicyDecider(FakeClient(None)).decide(request()) == "DUNNO"
    assert mail.PolicyDecider(FakeClient(verdict(trusted=True))).decide(request()) == "DUNNO"
    assert mail.PolicyDecider(FakeClient(verdict("reject")), enforce=True).decide(request()).startswith("REJECT ")
    assert mail.PolicyDecider(FakeClient(verdict("tempfail")), enforce=True).decide(request()).startswith(
        "DEFER_IF_PERMIT ")
    assert mail.PolicyDecider(FakeClient(verdict("reject"))).decide(request()).startswith("PREPEND ")


def _talk(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def test_policy_protocol(tmp_path):
    srv = mail.policy_server(f"unix:{tmp_path}/p.sock", mail.PolicyDecider(FakeClient(verdict())))
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        one = "".join(f"{k}={v}\n" for k, v in request().items()) + "\n"
        two = "".join(f"{k}={v}\n" for k, v in request(instance="other.1").items()) + "\n"
        out = _talk(f"{tmp_path}/p.sock", (one + two).encode())
        assert out.count(b"\n\n") == 2 and out.startswith(b"action=PREPEND X-OS-Fingerprint: Windows 7 or 8")
        # A protocol error: no reply, the connection is closed.
        assert _talk(f"{tmp_path}/p.sock", b"request=smtpd_access_policy\nno equals sign here\n\n") == b""
        assert _talk(f"{tmp_path}/p.sock", b"x=" + b"y" * 5000 + b"\n\n") == b""
    finally:
        srv.shutdown()
        srv.server_close()


def test_verdict_client_fails_open_within_its_bound(tmp_path):
    import time

    client = mail.VerdictClient(f"unix:{tmp_path}/nobody-home.sock", timeout=0.2, wait_ms=50)
    t0 = time.monotonic()
    assert client.lookup("192.0.2.1", 25) is None
    assert time.monotonic() - t0 < 1.0 and client.failures == 1
