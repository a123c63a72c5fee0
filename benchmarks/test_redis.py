"""Publishing to and looking up in Redis (--redis), each beside a baseline in the same run.

    make bench    (a private redis-server: unix socket, no persistence)

* Publish rate per sensor: observations/s from `Publisher.offer` until Redis
  has them all (2 keys each; 3 with the rspamd keys), beside redis-benchmark's
  SET rate and a plain redis-py pipeline of the same SETs on the same server;
  and the service's ingest path (capture -> table -> queue) with and without
  publishing, the cost the capture thread sees.
* Cross-sensor Lookup: p50/p99 of sensor B's gRPC Lookup for connections only
  sensor A saw (B answers from Redis), beside A's Lookup of the same
  connections from its own table; both servers in their own processes.
* Redis memory per million connections: INFO memory before and after
  publishing, for one connection per address (a spoofed flood) and for eight
  per address, with and without the rspamd keys.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.common import measure, publish

ROOT = Path(__file__).resolve().parent.parent
N_PUBLISH = 200_000
N_LOOKUP = 20_000
N_MEMORY = 250_000


def frames(n: int, per_host: int = 1, base: int = 0x0D000000) -> list[bytes]:
    """n Linux-shaped SYNs to 192.0.2.25:25, `per_host` connections from each source address."""
    opts = bytes.fromhex("020405b4") + b"\x04\x02" + b"\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"
    dst = socket.inet_aton("192.0.2.25")
    out = []
    for i in range(n):
        src = struct.pack("!I", base + (i // per_host) * 7919 % (1 << 24))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 60, i & 0xFFFF or 1, 0x4000, 50, 6, 0, src, dst)
        tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, 25, i + 1, 0, 0xA0, 0x02, 29200, 0, 0)
        out.append(b"\x02\x00\x00\x00\x00\x09\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp + opts)
    return out


def client_of(i: int, per_host: int = 1, base: int = 0x0D000000) -> tuple[str, int]:
    return socket.inet_ntoa(struct.pack("!I", base + (i // per_host) * 7919 % (1 << 24))), 1024 + i % 60000


class Redis:
    def __init__(self, d: Path) -> None:
        if not shutil.which("redis-server"):
            pytest.skip("redis-server is not installed (make test installs it)")
        self.sock = str(d / "redis.sock")
        self.proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", self.sock, "--save", "",
                                      "--appendonly", "no", "--dir", str(d)], stdout=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(unix_socket_path=self.sock)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


def _service(url: str, **kw):
    from fingerprintd.config import Config
    from fingerprintd.service import Service

    return Service(Config(redis_url=url, **kw))


def _drain(svc, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not svc.publisher.idle():
        assert time.monotonic() < deadline, svc.publisher.stats()
        time.sleep(0.001)


def _publish_rate(url: str, batch: list[list], rspamd: str = "") -> float:
    """Observations/s from offer() to the last reply, with the table's records as the service has them."""
    svc = _service(url, redis_rspamd_prefix=rspamd, redis_queue=sum(len(b) for b in batch))
    for b in batch:
        for obs in b:
            svc.hosts.add(obs)
    svc.open_store()
    try:
        t0 = time.perf_counter()
        for b in batch:
            svc.publisher.offer(b)
        _drain(svc)
        took = time.perf_counter() - t0
        assert svc.publisher.stats()["published"] == sum(len(b) for b in batch)
        assert svc.publisher.stats()["dropped"] == 0
    finally:
        svc.publisher.stop()
    return sum(len(b) for b in batch) / took


def _ingest_rate(url: str, fr: list[bytes]) -> float:
    """SYN/s through Service.ingest (the capture thread's work), until published when url is given."""
    svc = _service(url, redis_queue=len(fr)) if url else _service("")
    if url:
        svc.open_store()
    now = int(time.time())
    t0 = time.perf_counter()
    for i in range(0, len(fr), 512):
        svc.ingest([(now, 0, f) for f in fr[i:i + 512]], 1)
    if url:
        _drain(svc)
        svc.publisher.stop()
    return len(fr) / (time.perf_counter() - t0)


def test_publish_rate(benchmark, redis_server, tmp_path):
    from fingerprintd.data import default_signatures
    from fingerprintd.engine import Engine
    from fingerprintd.matcher import Matcher
    from fingerprintd.signatures import load

    fr = frames(N_PUBLISH)
    eng = Engine(Matcher(load(default_signatures())))
    now = int(time.time())
    batches = [eng.feed_batch([(now, 0, f) for f in fr[i:i + 512]], 1) for i in range(0, len(fr), 512)]
    results: dict = {}
    out = subprocess.run(["redis-benchmark", "-s", redis_server.sock, "-t", "set", "-n", "400000", "-P", "1000",
                          "-d", "45", "-r", "1000000", "-q"], capture_output=True, text=True, timeout=300)
    results["redis_benchmark_set_per_s_P1000"] = float(re.findall(r"SET: ([\d.]+) requests per second",
                                                                  out.stdout)[-1])
    # A plain redis-py pipeline of the same SETs (2 per observation), on the same server.
    sets = [(b"bench:c:%d" % i, b"x" * 45) for i in range(2 * N_PUBLISH)]
    t0 = time.perf_counter()
    for i in range(0, len(sets), 2000):
        pipe = redis_server.client.pipeline(transaction=False)
        for key, value in sets[i:i + 2000]:
            pipe.set(key, value, px=600_000)
        pipe.execute()
    results["redis_py_pipeline_set_per_s"] = round(len(sets) / (time.perf_counter() - t0))
    results["redis_py_pipeline_observations_per_s"] = results["redis_py_pipeline_set_per_s"] // 2
    redis_server.client.flushall()
    results["publisher_observations_per_s"] = round(_publish_rate(redis_server.url, batches))
    redis_server.client.flushall()
    results["publisher_with_rspamd_keys_observations_per_s"] = round(_publish_rate(redis_server.url, batches, "p0f"))
    redis_server.client.flushall()
    results["ingest_syn_per_s_without_redis"] = round(_ingest_rate("", fr))
    results["ingest_syn_per_s_with_redis_until_published"] = round(_ingest_rate(redis_server.url, fr))
    r = results
    r["ratio_publisher_over_redis_py_pipeline"] = round(
        r["publisher_observations_per_s"] / r["redis_py_pipeline_observations_per_s"], 2)
    r["ratio_ingest_with_over_without_redis"] = round(
        r["ingest_syn_per_s_with_redis_until_published"] / r["ingest_syn_per_s_without_redis"], 2)
    publish(benchmark, r)


def serve(sock: str, url: str, count: int) -> None:
    """A sensor for the lookup benchmark: `count` SYNs ingested and published (0: an empty table)."""
    from fingerprintd.server import build_server
    from fingerprintd.service import tune_gc

    svc = _service(url, listen=[sock])
    svc.open_store()
    fr = frames(count)
    now = int(time.time())
    for i in range(0, count, 512):
        svc.ingest([(now, 0, f) for f in fr[i:i + 512]], 1)
    _drain(svc)
    tune_gc()
    server, _ = build_server(svc, [sock])
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def _start(*args: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.test_redis", *args], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p



def test_cross_sensor_lookup(benchmark, redis_server, tmp_path):
    import grpc

    from fingerprintd.v1 import fingerprintd_pb2 as pb
    from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

    a = _start("serve", f"unix:{tmp_path}/a.sock", redis_server.url, str(N_LOOKUP))
    b = _start("serve", f"unix:{tmp_path}/b.sock", redis_server.url, "0")
    results: dict = {}
    try:
        for name in ("a", "b"):
            with grpc.insecure_channel(f"unix:{tmp_path}/{name}.sock") as ch:
                stub = pb_grpc.FingerprintStub(ch)

                def call(rng, stub=stub):
                    ip, port = client_of(rng.randrange(N_LOOKUP))
                    assert stub.Lookup(pb.LookupRequest(ip=ip, port=port), timeout=5).found

                for n in (1, 16):
                    key = "local_table_a" if name == "a" else "cross_sensor_b"
                    results[f"{key}_{n}"] = measure(call, n)
    finally:
        a.kill()
        b.kill()
    r = results
    for n in (1, 16):
        r[f"p99_ratio_cross_over_local_{n}"] = round(r[f"cross_sensor_b_{n}"]["p99_ms"] / r[f"local_table_a_{n}"]
                                                     ["p99_ms"], 2)
    publish(benchmark, r)


def test_redis_memory_per_million_connections(benchmark, redis_server):
    results: dict = {}
    for per_host in (1, 8):
        for rspamd in ("", "p0f"):
            redis_server.client.flushall()
            before = redis_server.used_memory()
            svc = _service(redis_server.url, redis_rspamd_prefix=rspamd, redis_queue=N_MEMORY)
            svc.open_store()
            fr = frames(N_MEMORY, per_host)
            now = int(time.time())
            for i in range(0, len(fr), 512):
                svc.ingest([(now, 0, f) for f in fr[i:i + 512]], 1)
            _drain(svc)
            svc.publisher.stop()
            keys = redis_server.client.dbsize()
            used = redis_server.used_memory() - before
            name = f"{per_host}_per_host{'_rspamd' if rspamd else ''}"
            results[f"keys_per_connection_{name}"] = round(keys / N_MEMORY, 3)
            results[f"mib_per_million_connections_{name}"] = round(used / N_MEMORY * 1e6 / 2**20, 1)
    r = results
    publish(benchmark, r)


LIVE_RATES = (10_000, 20_000, 30_000, 40_000, 50_000, 60_000)


def test_capture_zero_loss_with_publishing(benchmark, redis_server, tmp_path):
    """`serve` sniffing a veth, SYNs injected at rising rates: the highest rate without loss, with --redis
    and without it, in the same run; with it, the keys Redis got beside the SYNs the sensor took."""
    from benchmarks.live import SENDER, syn_frames
    from tests.netns import NetnsPair, can_use_netns

    ok, why = can_use_netns()
    if not ok:
        pytest.skip(why)
    import grpc

    from fingerprintd.v1 import fingerprintd_pb2 as pb
    from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

    frames_path = tmp_path / "frames.hex"
    frames_path.write_text("\n".join(f.hex() for f in syn_frames(65_536, "192.0.2.25")))
    results: dict = {}
    with NetnsPair(net=95) as pair:
        for name, extra in (("without_redis", []), ("with_redis", ["--redis", redis_server.url])):
            redis_server.client.flushall()
            log = open(tmp_path / f"{name}.log", "w")
            serve = subprocess.Popen(["ip", "netns", "exec", pair.srv, sys.executable, "-m", "fingerprintd", "serve",
                                      "-i", pair.vsrv, "--grpc", f"unix:{tmp_path}/{name}.sock", "--ttl", "5",
                                      *extra], stderr=log, cwd=ROOT)
            rows = {}
            try:
                deadline = time.monotonic() + 20
                while '"msg": "serving"' not in (tmp_path / f"{name}.log").read_text():
                    assert time.monotonic() < deadline and serve.poll() is None
                    time.sleep(0.05)
                with grpc.insecure_channel(f"unix:{tmp_path}/{name}.sock") as ch:
                    stub = pb_grpc.FingerprintStub(ch)
                    for rate in LIVE_RATES:
                        before = stub.Stats(pb.StatsRequest()).packets
                        r = subprocess.run(["ip", "netns", "exec", pair.cli, sys.executable, "-c", SENDER, pair.vcli,
                                            str(frames_path), str(rate), "2.0"], check=True, capture_output=True,
                                           text=True, timeout=120)
                        sent, elapsed = r.stdout.split()
                        time.sleep(1.5)
                        got = stub.Stats(pb.StatsRequest()).packets - before
                        rows[rate] = {"sent": int(sent), "reached_per_s": round(int(sent) / float(elapsed)),
                                      "lost": int(sent) - got}
            finally:
                serve.send_signal(signal.SIGTERM)
                serve.wait(20)
                log.close()
            knee = 0
            for rate in LIVE_RATES:
                if rows[rate]["lost"]:
                    break
                knee = rate
            results[f"{name}_zero_loss_syn_per_s"] = knee
            results[name] = {str(r): v for r, v in rows.items()}
            if extra:
                stopped = [ln for ln in (tmp_path / f"{name}.log").read_text().splitlines() if '"stopped"' in ln]
                results["with_redis_at_stop"] = {k: v for k, v in json.loads(stopped[-1]).items()
                                                 if k.startswith("redis_")}
    publish(benchmark, results)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
