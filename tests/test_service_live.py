"""`fingerprintd serve` on real traffic: kernel SYNs in network namespaces.

The service sniffs the server namespace's veth; clients connect from the
client namespace under varied sysctls; `fingerprintd lookup` asks over a unix
socket.  The same SYNs are captured by tcpdump, and the service must report
exactly what an offline replay of that capture reports.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT, need, run_replay
from tests.helpers import Served, send_frames
from tests.helpers import raw_syns as _syn_frames
from tests.netns import NetnsPair, can_use_netns

VARIANTS = [
    ("defaults", {}),
    ("ttl128", {"net.ipv4.ip_default_ttl": 128}),
    ("no-timestamps", {"net.ipv4.tcp_timestamps": 0}),
    ("ecn", {"net.ipv4.tcp_ecn": 1}),
    ("bare", {"net.ipv4.tcp_timestamps": 0, "net.ipv4.tcp_sack": 0, "net.ipv4.tcp_window_scaling": 0}),
    ("flowlabel0", {"net.ipv6.auto_flowlabels": 0}),
]


@pytest.fixture
def pair():
    ok, why = can_use_netns()
    need(ok, why)
    with NetnsPair(net=78) as p:
        p.start_listener()
        yield p


def test_live_lookups_match_the_replay_of_the_same_syns(pair, tmp_path):
    cap = pair.capture(tmp_path / "cap.pcap")
    served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"))
    try:
        sent = []
        for i, (name, sysctls) in enumerate(VARIANTS):
            for key, value in sysctls.items():
                pair.sysctl(pair.cli, key, value)
            for server in (pair.server4, pair.server6):
                port = 31000 + i * 10 + (5 if ":" in server else 0)
                pair.connect(server, 1, 0, port)
                sent.append((name, pair.client4 if ":" not in server else pair.client6, port))
            for key in sysctls:
                pair.sysctl(pair.cli, key, pair.ns(pair.srv, "sysctl", "-n", key).stdout.strip())
        live = {port: served.lookup(ip, port, wait_ms=1000) for _, ip, port in sent}
        latest = served.lookup(pair.client4)
        stats = served.stats()
    finally:
        assert served.stop() == 0
        pair.stop_capture(cap)
    replay = run_replay(tmp_path / "cap.pcap", tmp_path / "replay.log", db=ROOT / "signatures" / "p0f.fp")
    offline = {int(ln.split("|cli=")[1].split("|")[0].rsplit("/", 1)[1]): ln for ln in replay if "mod=syn|" in ln}
    for name, ip, port in sent:
        got = live[port]
        assert got["found"], (name, ip, port)
        assert got["observation"]["client_port"] == port and got["observation"]["server_port"] == 25
        assert f"raw_sig={got['observation']['raw_sig']}" in offline[port], (name, offline[port])
        assert f"os={got['observation']['label']}|" in offline[port], (name, offline[port])
        assert got["verdict"]["header"].startswith(got["observation"]["label"] + "; dist: ")
    assert live[31000]["observation"]["raw_sig"].startswith("4:64+0:0:1460:mss*44,")
    assert live[31010]["observation"]["raw_sig"].startswith("4:128+0:")
    assert latest["found"] and latest["observation"]["client_port"] == max(p for _, ip, p in sent if "." in ip)
    assert stats["packets"] == stats["fingerprinted"] + sum(stats["skipped"].values())
    assert stats["kernel_dropped"] == 0


def test_lookup_waits_for_a_connection_still_opening(pair, tmp_path):
    served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"))
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(served.lookup(pair.client4, 33333, wait_ms=4000)))
        t.start()
        time.sleep(0.8)  # the query is in flight before the SYN exists
        pair.connect(pair.server4, 1, 0, 33333)
        t.join(10)
        assert result["found"] and result["observation"]["client_port"] == 33333
        missing = served.lookup(pair.client4, 33334, wait_ms=200)
        assert missing["found"] is False
    finally:
        served.stop()


def test_syn_flood_stays_within_bounds_and_counters_add_up(pair, tmp_path):
    n = 20_000
    served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"),
                    "--max-connections", "2000", "--max-hosts", "1000")
    try:
        frames = _syn_frames(n, pair.server4)
        send_frames(pair, frames, 2000, 0.02)  # a bounded burst: about 50k frames/s at most
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = served.stats()
            if stats["packets"] + stats["kernel_dropped"] >= n:
                break
            time.sleep(0.2)
        assert stats["packets"] + stats["kernel_dropped"] == n
        assert stats["packets"] == stats["fingerprinted"] + sum(stats["skipped"].values())
        assert stats["connections"] <= 2000 and stats["hosts"] <= 1000
        assert stats["connections"] == min(2000, stats["fingerprinted"])
        # The newest sources are still there; the oldest went first.
        last = socket.inet_ntoa(struct.pack("!I", 0x0B000000 + (n - 1) * 7919 % (1 << 24)))
        assert served.lookup(last, 1024 + (n - 1) % 60000)["found"]
        assert not served.lookup(socket.inet_ntoa(struct.pack("!I", 0x0B000000)), 1024)["found"]
    finally:
        served.stop()


def test_sighup_reload_and_sigterm(pair, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[[rule]]\nname = 'linux'\nos_name = '^Linux$'\nscore = 1.5\n")
    log = tmp_path / "serve.log"
    served = Served(pair, str(tmp_path / "api.sock"), str(log), "--policy", str(policy))
    try:
        pair.connect(pair.server4, 1, 0, 34000)
        assert served.lookup(pair.client4, 34000, wait_ms=1000)["verdict"]["score"] == 1.5
        policy.write_text("[[rule]]\nname = 'linux'\nos_name = '^Linux$'\nscore = 2.5\n")
        os.kill(served.proc.pid, signal.SIGHUP)
        served.wait_for('"msg": "reloaded"')
        assert served.lookup(pair.client4, 34000)["verdict"]["score"] == 2.5
        policy.write_text("[[rule]]\nname = 'linux'\nscore = [\n")
        os.kill(served.proc.pid, signal.SIGHUP)
        served.wait_for("reload failed")
        failure = [e for e in served.events() if e["msg"].startswith("reload failed")][0]
        assert failure["error"].startswith(f"{policy}:3: "), failure
        assert served.lookup(pair.client4, 34000)["verdict"]["score"] == 2.5  # the old policy stays
    finally:
        assert served.stop() == 0  # stop() waits a bounded time: a hang fails here
    assert '"msg": "stopped"' in log.read_text()


def test_sigterm_stops_it_amid_a_storm_of_signals(pair, tmp_path):
    """Signals land at any point of the main loop. Hundreds of SIGHUPs at random moments while it
    serves, then SIGTERM: it answers, reloads (SIGHUPs that arrive together coalesce into one reload)
    and stops. (A handler that took a lock, Event.set, could deadlock against the Event.wait it
    interrupted; that window is microseconds wide, so this storm only sometimes reached it.)"""
    log = tmp_path / "serve.log"
    served = Served(pair, str(tmp_path / "api.sock"), str(log))
    rng = random.Random(5)
    try:
        for _ in range(400):
            os.kill(served.proc.pid, signal.SIGHUP)
            time.sleep(rng.uniform(0, 0.003))
        pair.connect(pair.server4, 1, 0, 34500)
        assert served.lookup(pair.client4, 34500, wait_ms=2000)["found"]
    finally:
        assert served.stop() == 0  # stop() waits a bounded time: a hang fails here
    text = log.read_text()
    assert '"msg": "reloaded"' in text and '"msg": "stopped"' in text


def test_drops_privileges_after_opening_the_capture(pair, tmp_path):
    os.chmod(tmp_path, 0o755)
    served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"), "--user", "nobody")
    try:
        status = open(f"/proc/{served.proc.pid}/status").read()
        uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
        assert set(uid_line.split()[1:]) == {"65534"}, uid_line
        assert os.stat(tmp_path / "api.sock").st_uid == 65534
        pair.connect(pair.server4, 1, 0, 35000)  # still capturing, still answering
        assert served.lookup(pair.client4, 35000, wait_ms=2000)["found"]
    finally:
        assert served.stop() == 0


# --- faults, signals and operations -------------------------------------------------------------------

METRICS_PORT = 9325


def _raw_stderr(text: str) -> list[str]:
    """What reached stderr outside the JSON log lines (a raw traceback, an 'Exception in thread')."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("{")]


def test_a_log_on_a_full_disk_is_counted_and_capture_goes_on(pair, tmp_path):
    """--log on /dev/full (every write fails with ENOSPC): SYNs are still captured and answered, the
    failure is logged once for the whole episode and counted in the metrics."""
    log = tmp_path / "serve.log"
    served = Served(pair, str(tmp_path / "api.sock"), str(log), "--log", "/dev/full",
                    "--metrics", f"127.0.0.1:{METRICS_PORT}")
    try:
        for port in (36001, 36002, 36003):
            pair.connect(pair.server4, 1, 0, port)
            assert served.lookup(pair.client4, port, wait_ms=2000)["found"], port
        metrics = served.scrape(METRICS_PORT)
        assert served.proc.poll() is None
    finally:
        assert served.stop() == 0
    failures = [e for e in served.events() if e["msg"].startswith("cannot write the p0f log")]
    assert len(failures) == 1 and "No space left" in failures[0]["error"], failures
    assert metrics["fingerprintd_log_write_errors_total"] >= 1
    assert metrics["fingerprintd_log_lines_lost_total"] == 3
    assert metrics["fingerprintd_up"] == 1


def _health_watch(sock: str, seen: list, done: threading.Event) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            for reply in health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30):
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError:
        pass  # the server went away
    finally:
        done.set()


def _dies(served: Served, part: str, cause) -> None:
    """`cause()` kills a part: the process logs it as JSON, health turns NOT_SERVING and it exits 1."""
    seen: list[str] = []
    done = threading.Event()
    threading.Thread(target=_health_watch, args=(served.sock, seen, done), daemon=True).start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == ["SERVING"]
    cause()
    rc = served.proc.wait(20)
    served.logfile.close()
    done.wait(10)
    assert rc == 1, open(served.log).read()
    fatal = [e for e in served.events() if e["level"] == "critical"]
    assert len(fatal) == 1 and fatal[0]["part"] == part, fatal
    assert "NOT_SERVING" in seen, seen
    assert not _raw_stderr(open(served.log).read()), open(served.log).read()


def test_capture_interface_removed_underneath_stops_it_with_status_1(pair, tmp_path):
    served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"))
    _dies(served, "capture", lambda: pair.ns(pair.srv, "ip", "link", "del", pair.vsrv))


INJECT = r"""
import sys
from fingerprintd import cli, compat, service

def boom(*args, **kwargs):
    raise RuntimeError("injected fault")

if sys.argv[1] == "capture":
    service.Service.ingest_blob = boom  # the capture loop hands it each next_batch (either implementation)
elif sys.argv[1] == "p0f-socket":
    compat.p0f_answer = boom
else:
    compat.AnalyzerServer.allowed = boom
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("part", ["capture", "p0f-socket", "p0f-analyzer"])
def test_a_thread_killed_by_an_exception_stops_it_with_status_1(pair, tmp_path, part):
    """An exception nobody expected, in the capture thread (on the first SYN), the p0f socket's (on
    the first query) or the analyzer's (on the first datagram), injected by replacing a function it
    calls."""
    p0f = str(tmp_path / "p0f.sock")
    served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"), "--p0f-socket", p0f,
                    "--analyzer-udp", "127.0.0.1:2345", program=("-c", INJECT, part))

    def cause():
        if part == "capture":
            pair.connect(pair.server4, 1, 0, 36100)
        elif part == "p0f-analyzer":
            pair.ns(pair.srv, sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                    f".sendto(b'[{pair.client4}]:36100 1', ('127.0.0.1', 2345))")
        else:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(p0f)
                s.sendall(struct.pack("=IB16s", 0x50304601, 4, socket.inet_aton(pair.client4)))
                s.settimeout(10)
                try:
                    s.recv(232)
                except OSError:
                    pass

    _dies(served, part, cause)
    fatal = [e for e in served.events() if e["level"] == "critical"][0]
    assert fatal["error"] == "injected fault" and "RuntimeError" in fatal["traceback"]


STEADY_FLOOD = r"""
import socket, struct, sys, time
# Spoofed Linux-shaped SYNs to port 25 as fast as one process sends them, for at most 30 s.
dst = socket.inet_aton(sys.argv[2])
opts = bytes.fromhex("020405b4") + b"\x04\x02" + b"\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"
eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
end = time.monotonic() + 30
i = 0
while time.monotonic() < end:
    for _ in range(1000):
        i += 1
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 60, i & 0xFFFF, 0x4000, 50, 6, 0,
                         struct.pack("!I", 0x0B000000 + i % (1 << 24)), dst)
        tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, 25, i, 0, 0xA0, 0x02, 29200, 0, 0)
        s.send(eth + ip + tcp + opts)
"""


def test_sigterm_amid_a_syn_flood_stops_without_a_traceback(pair, tmp_path):
    """A SYN flood keeps the kernel ring from ever running empty; SIGTERM must still stop the capture
    thread between two batches (it once went on past the stop and died on its closed handle:
    'Exception in thread capture: ValueError: pcap is closed')."""
    log = tmp_path / "serve.log"
    served = Served(pair, str(tmp_path / "api.sock"), str(log))
    flood = subprocess.Popen(["ip", "netns", "exec", pair.cli, sys.executable, "-c", STEADY_FLOOD, pair.vcli,
                              pair.server4])
    try:
        deadline = time.monotonic() + 20
        while served.stats()["packets"] < 50_000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served.proc.poll() is None
        assert served.stop() == 0
    finally:
        flood.kill()
        flood.wait()
    text = log.read_text()
    assert not _raw_stderr(text), text[-3000:]
    assert '"msg": "stopped"' in text


def test_sighup_while_a_large_database_loads_is_not_fatal(pair, tmp_path):
    """The database is a FIFO the test writes slowly: the SIGHUP lands while the service is reading
    it. It must be queued (and act as a reload once serving), not kill the process."""
    fifo = tmp_path / "big.fp"
    os.mkfifo(fifo)
    text = (ROOT / "signatures" / "p0f.fp").read_text()
    log = tmp_path / "serve.log"
    served = Served(pair, str(tmp_path / "api.sock"), str(log), "--signatures", str(fifo), wait=False)
    try:
        with open(fifo, "w") as fh:  # blocks until the service opens it to load
            fh.write(text[: len(text) // 2])
            fh.flush()
            time.sleep(0.3)
            os.kill(served.proc.pid, signal.SIGHUP)
            time.sleep(0.3)
            assert served.proc.poll() is None, log.read_text()
            assert '"msg": "serving"' not in log.read_text()  # it really was still loading
            fh.write(text[len(text) // 2:])
        served.wait_for('"msg": "serving"')
        with open(fifo, "w") as fh:  # the queued SIGHUP reloads: it reads the database again
            fh.write(text)
        served.wait_for('"msg": "reloaded"')
        pair.connect(pair.server4, 1, 0, 36200)
        assert served.lookup(pair.client4, 36200, wait_ms=2000)["found"]
    finally:
        assert served.stop() == 0


def test_log_is_reopened_after_logrotate_renames_it(pair, tmp_path):
    """What contrib/logrotate/fingerprintd does: rename the file (no copytruncate), then SIGHUP the
    service (postrotate); the next lines land in a new file at the configured path."""
    snippet = (ROOT / "contrib" / "logrotate" / "fingerprintd").read_text()
    assert "copytruncate" not in snippet and "create" in snippet
    post = snippet.split("postrotate", 1)[1].split("endscript", 1)[0]
    assert "--signal=HUP" in post and "fingerprintd.service" in post
    p0f_log = tmp_path / "p0f.log"
    served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"), "--log", str(p0f_log))
    try:
        pair.connect(pair.server4, 1, 0, 36301)
        assert served.lookup(pair.client4, 36301, wait_ms=2000)["found"]
        os.rename(p0f_log, tmp_path / "p0f.log.1")
        os.kill(served.proc.pid, signal.SIGHUP)
        served.wait_for('"msg": "reloaded"')
        pair.connect(pair.server4, 1, 0, 36302)
        assert served.lookup(pair.client4, 36302, wait_ms=2000)["found"]
        deadline = time.monotonic() + 5
        while not (p0f_log.exists() and "/36302|" in p0f_log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert served.stop() == 0
    old, new = (tmp_path / "p0f.log.1").read_text(), p0f_log.read_text()
    assert "/36301|" in old and "/36302|" not in old
    assert "/36302|" in new and "/36301|" not in new


def test_classes_reload_on_sighup(pair, tmp_path):
    """A changed --classes file takes effect after SIGHUP; a bad one is refused with file:line and
    the old classes stay."""
    classes = tmp_path / "classes.toml"
    classes.write_text("[[class]]\nmail_class = 'server'\nos_name = '^Linux$'\n")
    log = tmp_path / "serve.log"
    served = Served(pair, str(tmp_path / "api.sock"), str(log), "--classes", str(classes))
    try:
        pair.connect(pair.server4, 1, 0, 36401)
        first = served.lookup(pair.client4, 36401, wait_ms=2000)
        assert first["observation"]["mail_class"] == "MAIL_CLASS_SERVER"
        classes.write_text("[[class]]\nmail_class = 'embedded'\nos_name = '^Linux$'\n")
        os.kill(served.proc.pid, signal.SIGHUP)
        served.wait_for('"msg": "reloaded"')
        pair.connect(pair.server4, 1, 0, 36402)
        second = served.lookup(pair.client4, 36402, wait_ms=2000)
        assert second["observation"]["mail_class"] == "MAIL_CLASS_EMBEDDED"
        classes.write_text("[[class]]\nmail_class = 'embedded'\nos_name = '^Linux$'\n\n[[class]]\nmail_class = 'pda'\n")
        os.kill(served.proc.pid, signal.SIGHUP)
        served.wait_for("reload failed")
        failure = [e for e in served.events() if e["msg"].startswith("reload failed")][0]
        assert failure["error"].startswith(f"{classes}:6: "), failure
        pair.connect(pair.server4, 1, 0, 36403)
        third = served.lookup(pair.client4, 36403, wait_ms=2000)
        assert third["observation"]["mail_class"] == "MAIL_CLASS_EMBEDDED"  # the old classes stay
    finally:
        assert served.stop() == 0


def test_metrics_scrape_after_real_syns_and_the_dashboard_queries_exist(pair, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[[rule]]\nname = 'linux'\nos_name = '^Linux$'\nscore = 1.0\naction = 'tempfail'\n")
    served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"), "--policy", str(policy),
                    "--metrics", f"127.0.0.1:{METRICS_PORT}", "--analyzer-udp", "127.0.0.1:2345",
                    "--p0f-socket", str(tmp_path / "p0f.sock"), "--log", str(tmp_path / "p0f.log"))
    try:
        pair.connect(pair.server4, 4, 0, 36501)
        pair.connect(pair.server6, 2, 0, 36511)
        for port in (36504, 36512):
            assert served.lookup(pair.client4 if port < 36510 else pair.client6, port, wait_ms=2000)["found"]
        with socket.socket(socket.AF_UNIX) as s:  # one p0f-socket query, one bad one
            s.connect(str(tmp_path / "p0f.sock"))
            s.sendall(struct.pack("=IB16s", 0x50304601, 4, socket.inet_aton(pair.client4)) + bytes(21))
            s.settimeout(5)
            got = b""
            while len(got) < 464:
                got += s.recv(464)
        stats = served.stats()
        metrics = served.scrape(METRICS_PORT)
    finally:
        assert served.stop() == 0
    assert metrics["fingerprintd_packets_total"] == stats["packets"] >= 6
    assert metrics['fingerprintd_syns_total{mail_class="server"}'] == 6
    assert metrics['fingerprintd_syn_verdicts_total{action="tempfail"}'] == 6
    assert metrics['fingerprintd_observations_total{kind="syn"}'] == stats["fingerprinted"] == 6
    assert metrics['fingerprintd_table_entries{table="connections"}'] == 6
    assert metrics['fingerprintd_table_entries{table="hosts"}'] == 2
    assert metrics[f'fingerprintd_kernel_received_total{{interface="{pair.vsrv}"}}'] >= 6
    assert metrics[f'fingerprintd_kernel_dropped_total{{interface="{pair.vsrv}"}}'] == 0
    assert metrics["fingerprintd_lookups_total"] >= 3 and metrics["fingerprintd_lookup_hits_total"] >= 3
    assert metrics["fingerprintd_match_cache_hits_total"] + metrics["fingerprintd_match_cache_misses_total"] == 6
    assert metrics["fingerprintd_p0f_socket_queries_total"] == 2
    assert "fingerprintd_p0f_socket_bad_queries_total" in metrics  # counted by compat.py itself
    assert any(k.startswith("fingerprintd_analyzer_") for k in metrics)
    # Every query of the shipped Grafana dashboard names metrics this scrape has.
    import re

    dashboard = json.loads((ROOT / "contrib" / "grafana" / "fingerprintd.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    names = {k.split("{")[0] for k in metrics} | served.metric_names
    for expr in exprs:
        for name in re.findall(r"\bfingerprintd_[a-z0-9_]+", expr):
            assert name in names, (name, expr)


def test_two_services_in_one_process_export_their_own_metrics_and_the_api_histogram(tmp_path):
    """Each service's collector lives in its own registry (no 'Duplicated timeseries' in the default
    one), and a prometheus_client Histogram that the API server keeps (registry=None) is exported."""
    import types
    import urllib.request

    from prometheus_client import Histogram
    from prometheus_client.parser import text_string_to_metric_families

    from fingerprintd.config import Config
    from fingerprintd.metrics import MetricsServer
    from fingerprintd.service import Service

    services, servers = [], []
    try:
        for i in range(2):
            svc = Service(Config(listen=[f"unix:{tmp_path}/api{i}.sock"], max_hosts=100 + i))
            latency = Histogram("fingerprintd_lookup_seconds", "Lookup latency", registry=None)
            for _ in range(i + 1):
                latency.observe(0.001)
            svc.grpc_server = types.SimpleNamespace(lookup_seconds=latency)
            services.append(svc)
            servers.append(MetricsServer("127.0.0.1:0", svc))
        scraped = []
        for srv in servers:
            text = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=10).read().decode()
            scraped.append({(s.name, tuple(sorted(s.labels.items()))): s.value
                            for f in text_string_to_metric_families(text) for s in f.samples})
    finally:
        for srv in servers:
            srv.stop()
    for i, samples in enumerate(scraped):
        assert samples[("fingerprintd_table_capacity", (("table", "hosts"),))] == 100 + i
        assert samples[("fingerprintd_lookup_seconds_count", ())] == i + 1
        assert samples[("fingerprintd_packets_total", ())] == 0
