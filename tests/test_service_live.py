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
from tests.netns import NetnsPair, can_use_netns

VARIANTS = [
    ("defaults", {}),
    ("ttl128", {"net.ipv4.ip_default_ttl": 128}),
    ("no-timestamps", {"net.ipv4.tcp_timestamps": 0}),
    ("ecn", {"net.ipv4.tcp_ecn": 1}),
    ("bare", {"net.ipv4.tcp_timestamps": 0, "net.ipv4.tcp_sack": 0, "net.ipv4.tcp_window_scaling": 0}),
    ("flowlabel0", {"net.ipv6.auto_flowlabels": 0}),
]


def fpd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fingerprintd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


class Served:
    def __init__(self, pair: NetnsPair, sock: str, log: str, *extra: str) -> None:
        self.sock = sock
        self.logfile = open(log, "w")
        self.log = log
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", pair.srv, sys.executable, "-m", "fingerprintd", "serve", "-i", pair.vsrv,
             "--grpc", f"unix:{sock}", *extra], stderr=self.logfile, cwd=ROOT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if '"msg": "serving"' in open(log).read():
                return
            assert self.proc.poll() is None, open(log).read()
            time.sleep(0.05)
        raise RuntimeError("the service did not start: " + open(log).read())

    def lookup(self, ip: str, port: int = 0, wait_ms: int = 0) -> dict:
        out = fpd("lookup", ip, "--port", str(port), "--wait-ms", str(wait_ms), "--server", f"unix:{self.sock}",
                  "--json")
        assert out.returncode in (0, 1), out.stderr
        return json.loads(out.stdout)

    def stats(self) -> dict:
        import grpc

        from fingerprintd.v1 import fingerprintd_pb2 as pb
        from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

        with grpc.insecure_channel(f"unix:{self.sock}") as ch:
            s = pb_grpc.FingerprintStub(ch).Stats(pb.StatsRequest(), timeout=5)
        return {"packets": s.packets, "fingerprinted": s.fingerprinted, "skipped": dict(s.skipped),
                "kernel_dropped": s.kernel_dropped, "connections": s.connections, "hosts": s.hosts}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(10)
        self.logfile.close()
        return rc


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


def _syn_frames(n: int, dst_ip: str) -> list[bytes]:
    """n SYNs to port 25 from n spoofed sources (Linux-shaped), as raw Ethernet frames."""
    opts = bytes.fromhex("020405b4") + b"\x04\x02" + b"\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"
    frames = []
    dst = socket.inet_aton(dst_ip)
    for i in range(n):
        src = struct.pack("!I", 0x0B000000 + i * 7919 % (1 << 24))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + len(opts), i & 0xFFFF or 1, 0x4000, 50, 6, 0, src, dst)
        tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, 25, i + 1, 0, (5 + len(opts) // 4) << 4, 0x02, 29200, 0, 0)
        frames.append(b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp + opts)
    return frames


FLOOD_SENDER = r"""
import socket, sys, time
frames = [bytes.fromhex(l) for l in sys.stdin.read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for i, f in enumerate(frames):
    s.send(f)
    if i % 2000 == 1999:
        time.sleep(0.02)  # a bounded burst: about 50k frames/s at most
print(len(frames))
"""


def test_syn_flood_stays_within_bounds_and_counters_add_up(pair, tmp_path):
    n = 20_000
    served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"),
                    "--max-connections", "2000", "--max-hosts", "1000")
    try:
        frames = _syn_frames(n, pair.server4)
        out = subprocess.run(["ip", "netns", "exec", pair.cli, sys.executable, "-c", FLOOD_SENDER, pair.vcli],
                             input="\n".join(f.hex() for f in frames), capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == str(n), out.stderr
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
        deadline = time.monotonic() + 5
        while '"msg": "reloaded"' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served.lookup(pair.client4, 34000)["verdict"]["score"] == 2.5
        policy.write_text("[[rule]]\nname = 'linux'\nscore = [\n")
        os.kill(served.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reload failed" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        failure = [json.loads(ln) for ln in log.read_text().splitlines() if "reload failed" in ln][0]
        assert failure["error"].startswith(f"{policy}:3: ")
        assert served.lookup(pair.client4, 34000)["verdict"]["score"] == 2.5  # the old policy stays
    finally:
        t0 = time.monotonic()
        assert served.stop() == 0
        assert time.monotonic() - t0 < 5
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
        t0 = time.monotonic()
        assert served.stop() == 0
        assert time.monotonic() - t0 < 5
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
