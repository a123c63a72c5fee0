"""The milter and the Postfix policy service, end to end with a real Postfix.

A private Postfix instance (its own config, queue, mailboxes and log; SMTP on
loopback port 2525) runs fingerprintd's milter and policy service; the
fingerprintd service sniffs `lo`; swaks sends mail with a pinned source port,
so each delivered message can be checked against its own connection.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fingerprintd.learn import verdict_fields
from tests.conftest import ROOT, need
from tests.helpers import POLICY_NO_TRUST, SA_CONTRIB, SMTP_PORT, MailStack, sa_site_dir, wait_until

LOOPBACK_LINUX = "Linux 2.2.x-3.x; dist: 0; link: ???; class: server; rules: linux; id: "


def sa_report(msg: email.message.Message) -> str:
    """SpamAssassin's report on `msg` with fingerprintd's rules (and no network tests)."""
    site = sa_site_dir()
    try:
        shutil.copy(SA_CONTRIB / "fingerprintd.cf", site / "fingerprintd.cf")
        (site / "local.cf").write_text("use_bayes 0\nskip_rbl_checks 1\n")
        out = subprocess.run(["spamassassin", "-L", "-t", f"--siteconfigpath={site}"],
                             input=msg.as_bytes(), capture_output=True, timeout=120)
    finally:
        shutil.rmtree(site, ignore_errors=True)
    report = out.stdout.decode()
    assert "Content analysis details" in report, out.stderr.decode()[-1500:]  # SpamAssassin really ran
    return report


def _stacked(stack_class: type[MailStack], policy: str, prepare=None):
    """A running stack (service, milter, policy service, Postfix) in a directory of its own; stopped after."""
    need(os.geteuid() == 0, "needs root (a private Postfix instance, capture on lo)")
    need(shutil.which("postfix") is not None and shutil.which("swaks") is not None,
         "postfix and swaks are not installed (make test installs them as root)")
    # Postfix's own processes (user postfix) must reach the queue and sockets:
    # pytest's tmp_path sits under a 0700 directory, so use one of our own.
    d = Path(tempfile.mkdtemp(prefix="fpd-postfix-"))
    os.chmod(d, 0o755)
    s = stack_class(d, policy)
    if prepare is not None:
        prepare(d)
    s.start_service()
    s.start_filters()
    s.start_postfix()
    try:
        yield s
    finally:
        s.stop_postfix()
        for name in list(s.procs):
            s.stop(name)
        if not os.environ.get("FPD_KEEP"):  # FPD_KEEP=1 keeps the Postfix logs for debugging
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def stack():
    yield from _stacked(MailStack, POLICY_NO_TRUST)


def test_headers_for_the_exact_connection(stack):
    forged = "X-OS-Fingerprint: FreeBSD 9.x; dist: 0; score: -1"
    sent = stack.send("127.0.0.1", stack.base + 0, ["--add-header", forged])
    assert sent.returncode == 0, sent.stdout[-2000:]
    msg = stack.delivered(f"test {stack.base + 0}")
    values = msg.get_all("X-OS-Fingerprint")
    assert len(values) == 2, values  # the policy service's PREPEND and the milter's header; the forged one is gone
    assert all(v.startswith(LOOPBACK_LINUX) and v.endswith("; score: -0.1") for v in values), values
    assert msg["X-OS-Fingerprint-Score"] == "-0.1"
    assert "FreeBSD" not in msg.as_string()
    # The milter asked about this very connection (ip and source port).
    assert f"milter connect 127.0.0.1 port {stack.base}: Linux" in (stack.d / "milter.log").read_text()
    # SpamAssassin with fingerprintd's rules scores the delivered message.
    if shutil.which("spamassassin"):
        report = sa_report(msg)
        assert re.search(r"^\s*0\.0 FPD_LINUX ", report, re.M), report[-1500:]  # named; -0.1 is no band
    # The policy service's header stands above Received, the milter's at the end.
    headers = [k for k, _ in msg.items()]
    assert headers.index("X-OS-Fingerprint") < headers.index("Received")


def test_ipv6(stack):
    sent = stack.send("::1", stack.base + 1)
    assert sent.returncode == 0, sent.stdout[-2000:]
    msg = stack.delivered(f"test {stack.base + 1}")
    values = msg.get_all("X-OS-Fingerprint")
    # Loopback IPv6 SYNs carry a flow label: named like their IPv4 twin (p0f: ???).
    assert values and all(v.startswith(LOOPBACK_LINUX) and v.endswith("; score: -0.1") for v in values), values
    assert msg["X-OS-Fingerprint-Score"] == "-0.1"


def test_fails_open_when_the_service_is_down(stack):
    stack.stop("serve")
    sent = stack.send("127.0.0.1", stack.base + 2)  # delivered at all, not how fast: benchmarks/test_mail.py
    assert sent.returncode == 0, sent.stdout[-2000:]
    msg = stack.delivered(f"test {stack.base + 2}")
    # The policy service PREPENDed "unavailable"; the milter, without a verdict, removed every copy.
    assert msg.get_all("X-OS-Fingerprint") is None
    assert re.search(r"lookup failed \(unavailable\), letting mail through", (stack.d / "milter.log").read_text())


def test_policy_service_alone_keeps_forged_headers_below_its_own(stack):
    """Without the milter nobody removes forged copies: ours must come first, verdict or not."""
    etc = str(stack.d / "etc")
    subprocess.run(["postconf", "-c", etc, "-e", "smtpd_milters ="], check=True)
    subprocess.run(["postfix", "-c", etc, "reload"], check=True, capture_output=True, timeout=30)
    time.sleep(1.0)  # the old smtpd processes finish their reload
    forged = ["--add-header", "X-OS-Fingerprint: FreeBSD 9.x; dist: 0; score: -1"]
    cases = []
    sent = stack.send("127.0.0.1", stack.base + 4, forged)  # the service up
    cases.append((stack.base + 4, sent, LOOPBACK_LINUX))
    serve = stack.procs["serve"]
    os.kill(serve.pid, signal.SIGSTOP)  # slow: connected, but never answering
    try:
        sent = stack.send("127.0.0.1", stack.base + 5, forged)
    finally:
        os.kill(serve.pid, signal.SIGCONT)
    cases.append((stack.base + 5, sent, "unavailable; reason: timeout"))
    stack.stop("serve")  # down
    sent = stack.send("127.0.0.1", stack.base + 6, forged)
    cases.append((stack.base + 6, sent, "unavailable; reason: unavailable"))
    for port, sent, first in cases:
        assert sent.returncode == 0, sent.stdout[-2000:]
        msg = stack.delivered(f"test {port}")
        values = msg.get_all("X-OS-Fingerprint")
        assert values[0].startswith(first) and values[1].startswith("FreeBSD 9.x"), (port, values)
        headers = [k for k, _ in msg.items()]
        assert headers.index("X-OS-Fingerprint") < headers.index("Received")
    need(shutil.which("spamassassin") is not None, "spamassassin is not installed (make test installs it)")
    report = sa_report(msg)  # the last one: no verdict, a forged FreeBSD header below ours
    assert not re.search(r"FPD_", report), report[-1500:]


def test_trusted_clients_get_no_header(stack):
    stack.policy.write_text("[settings]\ntrusted_networks = ['127.0.0.0/8', '::1/128']\n")
    os.kill(stack.procs["serve"].pid, signal.SIGHUP)
    wait_until(lambda: '"msg": "reloaded"' in (stack.d / "serve.log").read_text())
    sent = stack.send("127.0.0.1", stack.base + 3)
    assert sent.returncode == 0, sent.stdout[-2000:]
    msg = stack.delivered(f"test {stack.base + 3}")
    assert msg.get_all("X-OS-Fingerprint") is None and msg["X-OS-Fingerprint-Score"] is None


def test_enforce_replies_with_the_policys_texts(stack):
    stack.policy.write_text(POLICY_NO_TRUST.replace('score = -0.1', 'score = -0.1\naction = "reject"').replace(
        "[settings]", "[settings]\nreject_message = '554 5.7.0 Linux says no (policy.toml)'"))
    os.kill(stack.procs["serve"].pid, signal.SIGHUP)
    wait_until(lambda: '"msg": "reloaded"' in (stack.d / "serve.log").read_text())
    for kind in ("milter", "policyd"):
        stack.stop(kind)
        (stack.d / ("milter.sock" if kind == "milter" else "policy.sock")).unlink()
    stack.start_filters("--enforce")
    # The milter answers first, at MAIL FROM.
    sent = stack.send("127.0.0.1", stack.base + 8)
    assert sent.returncode != 0 and re.search(r"<\*\* 554 5\.7\.0 Linux says no \(policy\.toml\)", sent.stdout), \
        sent.stdout[-2000:]
    # The policy service alone, at RCPT TO.
    etc = str(stack.d / "etc")
    subprocess.run(["postconf", "-c", etc, "-e", "smtpd_milters ="], check=True)
    subprocess.run(["postfix", "-c", etc, "reload"], check=True, capture_output=True, timeout=30)
    time.sleep(1.0)
    sent = stack.send("127.0.0.1", stack.base + 9)
    assert sent.returncode != 0 and re.search(r"<\*\* 554 5\.7\.0 .*Linux says no \(policy\.toml\)", sent.stdout), \
        sent.stdout[-2000:]


# --- the scoring scenarios through the real Postfix (tests/test_scoring.py runs all rows in-process) -------

class ScenarioStack(MailStack):
    """The stack with the bundled policy (loopback not trusted: the clients are on loopback) and a classes file
    of its own."""

    def start_service(self) -> None:
        log = open(self.d / "serve.log", "a")
        self.procs["serve"] = subprocess.Popen(
            [sys.executable, "-m", "fingerprintd", "serve", "-i", "lo", "--port", str(SMTP_PORT),
             "--grpc", f"unix:{self.d}/api.sock", "--policy", str(self.policy), "--classes",
             str(self.d / "classes.toml")], stderr=log, cwd=ROOT)
        wait_until(lambda: '"msg": "serving"' in (self.d / "serve.log").read_text())


@pytest.fixture
def scenario_stack():
    bundled = (ROOT / "signatures" / "policy.toml").read_text()
    untrusting = re.sub(r"^trusted_networks = .*$", "trusted_networks = []", bundled, count=1, flags=re.M)
    yield from _stacked(ScenarioStack, untrusting,
                        lambda d: shutil.copy(ROOT / "signatures" / "classes.toml", d / "classes.toml"))


def test_scenario_rows_through_postfix(scenario_stack, tmp_path):
    """Rows of the scenario table through Postfix's own names: the verified name Postfix found (localhost for
    127.0.0.1, none for 127.0.0.2), the HELO swaks sends, the real loopback kernel SYN; both the policy
    service's PREPEND and the milter's header.  The loopback kernel is Linux, so the desktop rows run with a
    classes file that names this Linux stack a desktop: what the SYN is is covered in-process
    (tests/test_scoring.py); what is tested here is the names' way through Postfix into the verdict."""
    s = scenario_stack

    def row(port: int, source: str, helo: str) -> tuple[list[str], email.message.Message]:
        sent = s.send("127.0.0.1", port, ["--local-interface", source, "--ehlo", helo])
        assert sent.returncode == 0, sent.stdout[-2000:]
        msg = s.delivered(f"test {port}")
        values = msg.get_all("X-OS-Fingerprint")
        assert values and len(values) == 2 and values[0] == values[1], values  # policy service and milter agree
        return values, msg

    # A Linux MTA whose verified name (localhost, from Postfix's own lookup) its HELO agrees with.
    values, _ = row(s.base + 0, "127.0.0.1", "localhost")
    fields = verdict_fields(values[0])
    assert (fields["rules"], float(fields["score"])) == ("server-mta", -0.3), values
    assert fields["id"].endswith("/server/fcrdns-match") and fields["client"] == "127.0.0.1"
    # The same stack from an address without a name, greeting with a computer name: a server stack scores nothing.
    values, _ = row(s.base + 1, "127.0.0.2", "DESKTOP-4F7K2LQ")
    assert verdict_fields(values[0])["rules"] == "none" and verdict_fields(values[0])["score"] == "0", values
    # Desktop rows: the loopback stack as a desktop.
    (s.d / "classes.toml").write_text('[[class]]\nmail_class = "desktop"\nos_name = "^Linux$"\n')
    os.kill(s.procs["serve"].pid, signal.SIGHUP)
    wait_until(lambda: '"msg": "reloaded"' in (s.d / "serve.log").read_text())
    bare, msg_bare = row(s.base + 2, "127.0.0.2", "DESKTOP-4F7K2LQ")
    literal, _ = row(s.base + 3, "127.0.0.2", "[127.0.0.2]")
    for values, rules, bucket in ((bare, "desktop-no-rdns,client-helo-bare", "nordns-bare"),
                                  (literal, "desktop-no-rdns,client-helo-literal", "nordns-literal")):
        fields = verdict_fields(values[0])
        assert fields["rules"] == rules and float(fields["score"]) >= 1.0, values
        assert fields["id"].endswith(f"/desktop/{bucket}") and fields["client"] == "127.0.0.2"
    # The delivered Maildir is what `fingerprintd learn` reads.
    db = tmp_path / "rep.sqlite"
    out = subprocess.run([sys.executable, "-m", "fingerprintd", "learn", "--spam", "--db", str(db),
                          str(s.d / "vmail" / "user")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and "4 messages read as spam: 4 counted" in out.stdout, out.stdout + out.stderr
    if shutil.which("spamassassin"):
        report = sa_report(msg_bare)
        assert re.search(r"^\s*1\.5 FPD_SCORE_1_5 ", report, re.M), report[-1500:]
