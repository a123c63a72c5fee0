"""Added latency per SMTP transaction with the milter and with the policy service,
and the fail-open bound measured beside the configured one.

    make bench   (root: a private Postfix on loopback)

The same private Postfix as in tests/test_mail.py, reconfigured between runs:
no filter, the milter only, the policy service only, both; then both with
the service stopped (SIGSTOP: connected, never answering), which costs each
message at most one --timeout-ms per filter.  Each message is timed from
connect to QUIT with smtplib; medians over N messages.

test_lookup_fail_open_bound needs no Postfix: one VerdictClient against a
real gRPC server that never answers, and against no server at all.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

from benchmarks.common import publish
from fingerprintd import mail
from fingerprintd.v1 import fingerprintd_pb2 as pb
from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc
from tests.conftest import need
from tests.helpers import POLICY_NO_TRUST, SMTP_PORT, MailStack

N = 40
TIMEOUT_MS = 250  # the filters' default --timeout-ms


def _configure(stack: MailStack, milter: bool, policy: bool) -> None:
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
    need(os.geteuid() == 0 and shutil.which("postfix") is not None, "needs root and postfix")
    d = Path(tempfile.mkdtemp(prefix="fpd-bench-"))
    os.chmod(d, 0o755)
    stack = MailStack(d, POLICY_NO_TRUST)
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
        os.kill(stack.procs["serve"].pid, signal.SIGSTOP)
        try:
            results["both_service_stalled_median_ms"] = _median_ms(10)
        finally:
            os.kill(stack.procs["serve"].pid, signal.SIGCONT)
        results["both_service_stalled_added_ms"] = round(results["both_service_stalled_median_ms"]
                                                         - results["none_median_ms"], 2)
        results["configured_bound_both_ms"] = 2 * TIMEOUT_MS  # one lookup per filter
    finally:
        stack.stop_postfix()
        for name in list(stack.procs):
            stack.stop(name)
        shutil.rmtree(d, ignore_errors=True)
    publish(benchmark, results)


class _Silent(pb_grpc.FingerprintServicer):
    def __init__(self) -> None:
        self.release = threading.Event()

    def Lookup(self, request, context):  # noqa: N802
        self.release.wait(30)
        return pb.LookupResponse()


def _elapsed_ms(client: mail.VerdictClient, n: int) -> tuple[list[float], set[str]]:
    times, reasons = [], set()
    for _ in range(n):
        t0 = time.perf_counter()
        reasons.add(client.lookup("192.0.2.1", 25).reason)
        times.append((time.perf_counter() - t0) * 1000)
    return times, reasons


def test_lookup_fail_open_bound(benchmark, tmp_path):
    """How long a lookup takes to fail open: a service that never answers, and none at all."""
    servicer = _Silent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=40))
    pb_grpc.add_FingerprintServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{tmp_path}/silent.sock")
    server.start()
    results = {"configured_timeout_ms": TIMEOUT_MS}
    try:
        client = mail.VerdictClient(f"unix:{tmp_path}/silent.sock", timeout=TIMEOUT_MS / 1000, wait_ms=50)
        times, reasons = _elapsed_ms(client, 20)
        assert reasons == {"timeout"}
        results["silent_median_ms"] = round(statistics.median(times), 1)
        results["silent_max_ms"] = round(max(times), 1)
        results["silent_max_over_configured"] = round(max(times) / TIMEOUT_MS, 3)
        client.close()
        down = mail.VerdictClient(f"unix:{tmp_path}/nobody-home.sock", timeout=TIMEOUT_MS / 1000, wait_ms=50)
        times, reasons = _elapsed_ms(down, 20)
        assert reasons == {"unavailable"}
        results["down_median_ms"] = round(statistics.median(times), 2)
        results["down_max_ms"] = round(max(times), 2)
        down.close()
    finally:
        servicer.release.set()
        server.stop(0)
    publish(benchmark, results)


def _proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)


def test_policyd_hostile_clients(benchmark, tmp_path):
    """`fingerprintd policyd` under the issue's two measured attacks: RSS and thread count."""
    import socket
    import sys

    sock = tmp_path / "p.sock"
    proc = subprocess.Popen([sys.executable, "-m", "fingerprintd", "policyd", "--listen", f"unix:{sock}",
                             "--server", f"unix:{tmp_path}/nobody-home.sock"], stderr=subprocess.DEVNULL)
    results = {}
    conns = []
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        rss0 = int(_proc_status(proc.pid)["VmRSS"].split()[0])
        request = "".join(f"a{i}=v\n" for i in range(60_000)).encode() + b"\n"  # 60,000 attributes
        for _ in range(5):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                try:
                    s.sendall(request)
                except OSError:
                    pass  # closed on us, as it should
        time.sleep(0.5)
        results["rss_growth_60k_attrs_kib"] = int(_proc_status(proc.pid)["VmRSS"].split()[0]) - rss0
        threads0 = int(_proc_status(proc.pid)["Threads"])
        for _ in range(2000):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
            conns.append(s)
        time.sleep(1.0)
        results["threads_before"] = threads0
        results["threads_with_2000_idle_connections"] = int(_proc_status(proc.pid)["Threads"])
    finally:
        for s in conns:
            s.close()
        proc.terminate()
        proc.wait(30)
    publish(benchmark, results)
