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
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import need
from tests.helpers import POLICY_NO_TRUST, SA_CONTRIB, MailStack, sa_site_dir, wait_until


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


@pytest.fixture
def stack():
    need(os.geteuid() == 0, "needs root (a private Postfix instance, capture on lo)")
    need(shutil.which("postfix") is not None and shutil.which("swaks") is not None,
         "postfix and swaks are not installed (make test installs them as root)")
    # Postfix's own processes (user postfix) must reach the queue and sockets:
    # pytest's tmp_path sits under a 0700 directory, so use one of our own.
    d = Path(tempfile.mkdtemp(prefix="fpd-postfix-"))
    os.chmod(d, 0o755)
    s = MailStack(d, POLICY_NO_TRUST)
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


def test_headers_for_the_exact_connection(stack):
    forged = "X-OS-Fingerprint: FreeBSD 9.x; dist: 0; score: -1"
    sent = stack.send("127.0.0.1", stack.base + 0, ["--add-header", forged])
    assert sent.returncode == 0, sent.stdout[-2000:]
    msg = stack.delivered(f"test {stack.base + 0}")
    values = msg.get_all("X-OS-Fingerprint")
    assert len(values) == 2, values  # the policy service's PREPEND and the milter's header; the forged one is gone
    assert all(v.startswith("Linux 2.2.x-3.x; dist: 0; link: ???; class: server; score: -0.1") for v in values), values
    assert msg["X-OS-Fingerprint-Score"] == "-0.1"
    assert "FreeBSD" not in msg.as_string()
    # The milter asked about this very connection (ip and source port).
    assert f"milter connect 127.0.0.1 port {stack.base}: Linux" in (stack.d / "milter.log").read_text()
    # SpamAssassin with fingerprintd's rules scores the delivered message.
    if shutil.which("spamassassin"):
        report = sa_report(msg)
        assert re.search(r"^\s*-0\.1 FPD_LINUX ", report, re.M), report[-1500:]
    # The policy service's header stands above Received, the milter's at the end.
    headers = [k for k, _ in msg.items()]
    assert headers.index("X-OS-Fingerprint") < headers.index("Received")


def test_ipv6(stack):
    sent = stack.send("::1", stack.base + 1)
    assert sent.returncode == 0, sent.stdout[-2000:]
    msg = stack.delivered(f"test {stack.base + 1}")
    values = msg.get_all("X-OS-Fingerprint")
    # Loopback IPv6 SYNs carry a flow label: named like their IPv4 twin (p0f: ???).
    want = "Linux 2.2.x-3.x; dist: 0; link: ???; class: server; score: -0.1"
    assert values and all(v.startswith(want) for v in values), values
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
    cases.append((stack.base + 4, sent, "Linux 2.2.x-3.x; dist: 0; link: ???; class: server; score: -0.1"))
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
