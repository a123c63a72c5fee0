"""Added latency per SMTP transaction with the milter and with the policy service.

    make bench   (root: a private Postfix on loopback)

The same private Postfix as in tests/test_mail.py, reconfigured between runs:
no filter, the milter only, the policy service only, both.  Each message is
timed from connect to QUIT with smtplib; medians over N messages.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_mail import POLICY_NO_TRUST, SMTP_PORT, Stack

N = 40


def _configure(stack: Stack, milter: bool, policy: bool) -> None:
    d = stack.d
    milters = f"{{ unix:{d}/milter.sock, default_action=accept }}" if milter else ""
    restrictions = (f"check_policy_service {{ unix:{d}/policy.sock, default_action=DUNNO }}, " if policy else "") + \
        "permit_mynetworks, reject_unauth_destination"
    etc = str(d / "etc")
    subprocess.run(["postconf", "-c", etc, "-e", f"smtpd_milters = {milters}",
                    f"smtpd_recipient_restrictions = {restrictions}"], check=True)
    subprocess.run(["postfix", "-c", etc, "reload"], check=True, capture_output=True)
    time.sleep(1.0)


def _median_ms(n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=30) as s:
            s.sendmail("sender@example.net", ["user@test.example"],
                       f"Subject: bench {i}\r\nFrom: sender@example.net\r\n\r\nhello\r\n")
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def test_added_latency(benchmark):
    if os.geteuid() != 0 or not shutil.which("postfix"):
        pytest.skip("needs root and postfix")
    d = Path(tempfile.mkdtemp(prefix="fpd-bench-"))
    os.chmod(d, 0o755)
    stack = Stack(d, POLICY_NO_TRUST)
    try:
        stack.start_service()
        stack.start_filters()
        stack.start_postfix()
        _median_ms(5)  # warm up
        results = {}
        for name, milter, policy in (("none", False, False), ("milter", True, False), ("policy", False, True),
                                     ("both", True, True)):
            _configure(stack, milter, policy)
            results[f"{name}_median_ms"] = _median_ms(N)
        for name in ("milter", "policy", "both"):
            results[f"{name}_added_ms"] = round(results[f"{name}_median_ms"] - results["none_median_ms"], 2)
    finally:
        stack.stop_postfix()
        for name in list(stack.procs):
            stack.stop(name)
        shutil.rmtree(d, ignore_errors=True)
    benchmark.extra_info.update(results)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for key, value in results.items():
        print(f"\n{key}: {value}", end="")
    print()
