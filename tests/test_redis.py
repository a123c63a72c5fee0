"""Several MX hosts, one view: observations shared through a real Redis (Debian's redis-server).

Every test starts its own redis-server (a unix socket in tmp_path, a free
loopback port when a TCP client needs one, no persistence).  In-process: one
service publishes, another that never saw the SYN answers from Redis exactly
what the first answers from its own table (gRPC, the p0f socket, the
analyzer, the milter's client); an outage with a small queue loses only what
went past the bound.  Live (root): two sensors in two network namespaces
sniffing their own veth, a kernel connection seen by one answered by the
other; Redis stopped and restarted during a SYN stream; Debian's rspamd
reading the keys with no p0f socket at all.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from fingerprintd import store
from fingerprintd.compat import QUERY_MAGIC, AnalyzerServer, P0fSocketServer, analyzer_reply, p0f_answer
from fingerprintd.config import Config
from fingerprintd.hosts import normalize_ip
from fingerprintd.redisrep import RedisReputationStore
from fingerprintd.server import build_server
from fingerprintd.service import Service
from fingerprintd.v1 import fingerprintd_pb2 as pb
from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc
from tests.conftest import ROOT, need
from tests.craft import Shape, frame
from tests.helpers import free_port, rspamc_symbols, send_frames, start_rspamd, wait_for_port
from tests.netns import NetnsPair, can_use_netns

RNG = random.Random(13)
STACKS = {  # shapes p0f's database names (as in the host-table tests)
    "linux": Shape(ttl=55, mss=1460, win=29200, wscale=7),
    "winxp": Shape(ttl=113, mss=1460, win=65535, wscale=0, layout=("mss", "nop", "nop", "sok")),
    "nmap": Shape(ttl=50, mss=1460, win=1024, wscale=0, layout=("mss",), quirks=frozenset()),
    "unknown": Shape(ttl=60, mss=1460, win=1234, wscale=3, layout=("mss", "ws", "nop", "sok")),
}


class RedisServer:
    """A private redis-server: unix socket in `d` (and a loopback port with tcp=True), nothing on disk."""

    def __init__(self, d: Path, tcp: bool = False, *extra: str) -> None:
        need(shutil.which("redis-server") is not None, "redis-server is not installed (make test installs it)")
        self.dir = d
        self.sock = str(d / "redis.sock")
        self.port = free_port() if tcp else 0
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--unixsocket", self.sock,
               "--unixsocketperm", "777", "--save", "", "--appendonly", "no", "--dir", str(self.dir),
               "--protected-mode", "no", *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "redis-server exited"
            try:
                self.client().ping()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self, **kw):
        import redis

        return redis.Redis(unix_socket_path=self.sock, **kw)

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-s", self.sock, *args], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path, tcp=True)
    yield server
    server.stop()


def syn(stack: str, src: str, sport: int) -> tuple[int, int, bytes]:
    shape = STACKS[stack]
    if ":" in src:
        shape = replace(shape, ver=6, quirks=shape.quirks - {"df", "id+"})
    dst = "192.0.2.25" if ":" not in src else "2001:db8::25"
    return (int(time.time()), 0, bytes(frame(shape, src, dst, sport, 25, RNG, seq=RNG.randrange(1, 1 << 31))))


def settle(service: Service, seconds: float = 20) -> None:
    """Until the service's publisher has written all it was given (or the time is up)."""
    deadline = time.monotonic() + seconds
    while not service.publisher.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.publisher.idle(), service.publisher.stats()


def _fields(msg) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True)


SENT = [("linux", "203.0.113.5", 40001), ("winxp", "203.0.113.5", 40002), ("nmap", "203.0.113.6", 40003),
        ("unknown", "198.51.100.9", 40004), ("linux", "2001:db8::5", 40005),
        # The latest SYN is a tool's, p0f's API reports the earlier OS match: it travels on its own.
        ("linux", "198.51.100.7", 40006), ("nmap", "198.51.100.7", 40007)]


@contextmanager
def _two_services(redis_server, tmp_path, **cfg):
    """Services A and B, each with its API, both on one Redis (and Config(**cfg)): (services, stubs)."""
    services, servers, stubs = [], [], []
    try:
        for name in ("a", "b"):
            svc = Service(Config(listen=[f"unix:{tmp_path}/{name}.sock"], redis_url=redis_server.url, **cfg))
            svc.open_store()
            server, _ = build_server(svc, svc.cfg.listen)
            server.start()
            services.append(svc)
            servers.append(server)
            stubs.append(pb_grpc.FingerprintStub(grpc.insecure_channel(f"unix:{tmp_path}/{name}.sock")))
        yield services, stubs
    finally:
        for svc, server in zip(services, servers, strict=True):
            server.stop(0)
            svc.publisher.stop()


@pytest.fixture
def two(redis_server, tmp_path):
    """Service A (publishes what it is fed) and service B (fed nothing), both on one Redis, each with its API."""
    with _two_services(redis_server, tmp_path, redis_rspamd_prefix="p0f") as two:
        yield two


def test_what_one_service_saw_the_other_answers_alike(two):
    (a, b), (stub_a, stub_b) = two
    a.ingest([syn(*s) for s in SENT], 1)
    settle(a)
    for _, ip, port in SENT:
        for asked_port in (port, 0):
            mine = stub_a.Lookup(pb.LookupRequest(ip=ip, port=asked_port))
            theirs = stub_b.Lookup(pb.LookupRequest(ip=ip, port=asked_port))
            assert mine.found, (ip, asked_port)
            want = _fields(mine)
            # Only the number of distinct signatures travels: the rest of the history is the same.
            assert _fields(theirs) == want, (ip, asked_port)
    # An uptime record travels with its SYN too (made here: it takes a host with one timestamp clock).
    from fingerprintd.nat import Uptime

    obs = a.engine.feed(syn("linux", "203.0.113.77", 40100)[2], 1, int(time.time()))._replace(
        uptime=Uptime(1234, 49, 100.0))
    a.hosts.add(obs)
    a.publisher.offer([obs])
    settle(a)
    mine = stub_a.Lookup(pb.LookupRequest(ip="203.0.113.77", port=40100))
    assert mine.observation.uptime_minutes == 1234
    assert _fields(stub_b.Lookup(pb.LookupRequest(ip="203.0.113.77", port=40100))) == _fields(mine)
    assert b.stats()["fingerprinted"] == 0 and b.hosts.sizes()["connections"] == 0  # B saw nothing itself
    assert b.reader.stats()["hits"] >= 2 * len(SENT)
    assert not stub_b.Lookup(pb.LookupRequest(ip="203.0.113.5", port=40009)).found  # never sent
    assert not stub_b.Lookup(pb.LookupRequest(ip="192.0.2.200")).found


def test_a_host_the_table_let_go_names_its_os_from_redis_as_locally(redis_server, tmp_path):
    # A table of one address: of two SYNs in one batch, the first one's host is gone before the publisher
    # writes it, so its history travels made from that SYN alone.
    with _two_services(redis_server, tmp_path, max_hosts=1) as ((a, b), (_, stub_b)):
        let_go, other = syn("linux", "203.0.113.90", 40200), syn("winxp", "198.51.100.90", 40201)
        a.ingest([let_go, other], 1)
        settle(a)
        assert a.hosts.lookup(normalize_ip("203.0.113.90"))[1] is None  # A's table let it go
        remote = [stub_b.Lookup(pb.LookupRequest(ip="203.0.113.90", port=p)) for p in (40200, 0)]
        assert b.stats()["fingerprinted"] == 0  # B answers from Redis
        b.ingest([let_go], 1)  # now B saw the same SYN itself
        local = [stub_b.Lookup(pb.LookupRequest(ip="203.0.113.90", port=p)) for p in (40200, 0)]
    for r, mine in zip(remote, local, strict=True):
        assert r.found and list(r.host.os_names) == list(mine.host.os_names) == ["Linux"]
        assert _fields(r) == _fields(mine)


def test_publishing_reads_the_table_without_counting_lookups(two):
    """The publisher reads each published SYN's host history from the table: Stats counts only lookups."""
    (a, _), (stub_a, _) = two
    a.ingest([syn(*s) for s in SENT], 1)
    settle(a)
    assert a.publisher.stats()["published"] >= len(SENT)
    assert (a.stats()["lookups"], a.stats()["lookup_hits"]) == (0, 0)
    assert stub_a.Lookup(pb.LookupRequest(ip="203.0.113.5", port=40001)).found
    assert (a.stats()["lookups"], a.stats()["lookup_hits"]) == (1, 1)


def test_p0f_socket_analyzer_and_milter_client_answer_from_redis(two, tmp_path):
    from p0f import P0f

    from fingerprintd.mail import VerdictClient

    (a, b), (stub_a, _) = two
    a.ingest([syn(*s) for s in SENT], 1)
    settle(a)
    sock = P0fSocketServer(str(tmp_path / "b-p0f.sock"), b.lookups)
    udp = AnalyzerServer("127.0.0.1", 0, b.lookups, ["127.0.0.0/8"])
    sock.start()
    udp.start()
    client = VerdictClient(f"unix:{tmp_path}/b.sock", timeout=5.0)
    try:
        for _, ip, port in SENT:
            addr = normalize_ip(ip)
            query = struct.pack("=IB16s", QUERY_MAGIC, 4 if len(addr) == 4 else 6, addr)
            assert p0f_answer(query, b.lookups) == p0f_answer(query, a.hosts), ip
            if len(addr) == 4:  # PyPI's p0f client, on B's socket (it sends IPv6 queries as type 4)
                info = P0f(str(tmp_path / "b-p0f.sock"), timeout=5).get_info(ip)
                assert info["first_seen"].timestamp() > 0 and info["total_conn"] >= 1
            reply = analyzer_reply(f"[{ip}]:{port} n1".encode(), a.hosts)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(5)
                c.sendto(f"[{ip}]:{port} n1".encode(), ("127.0.0.1", udp.port))
                assert c.recv(2048) == reply, ip
            outcome = client.lookup(ip, port)  # what the milter and the policy service ask
            assert outcome.reply is not None and outcome.reply.found, (ip, outcome)
            assert outcome.reply.verdict.header == stub_a.Lookup(pb.LookupRequest(ip=ip, port=port)).verdict.header
        latest = P0f(str(tmp_path / "b-p0f.sock"), timeout=5).get_info("203.0.113.5")
        assert latest["os_name"].rstrip(b"\0") == b"Windows"
    finally:
        client.close()
        sock.stop()
        udp.stop()


def test_rspamd_keys_hold_the_p0f_answer_with_the_tables_ttl(two):
    (a, _), _ = two
    a.ingest([syn(*s) for s in SENT], 1)
    settle(a)
    r = store_client(a)
    for _, ip, _ in SENT:
        addr = normalize_ip(ip)
        query = struct.pack("=IB16s", QUERY_MAGIC, 4 if len(addr) == 4 else 6, addr)
        value = r.get(f"p0f{ip}".encode())  # rspamd's key: prefix .. ip:to_string()
        assert value is not None and len(value) == 232 and value == p0f_answer(query, a.hosts), ip
        assert 0 < r.ttl(f"p0f{ip}") <= 600
        assert 0 < r.pttl(store.host_key(addr)) <= 600_000
    assert r.get(b"p0f2001:db8::5") is not None  # IPv6 as inet_ntop prints it


def store_client(service: Service):
    import redis

    return redis.Redis(connection_pool=service.reader.pool)


def test_an_outage_drops_only_what_went_past_the_bound(redis_server, caplog):
    svc = Service(Config(redis_url=redis_server.url, redis_queue=50))
    svc.open_store()
    svc.publisher.backoff = (0.05, 0.2)
    caplog.set_level(logging.INFO, logger="fingerprintd")
    try:
        svc.ingest([syn("linux", "203.0.113.10", 41000 + i) for i in range(20)], 1)
        settle(svc)
        redis_server.stop()
        during = [syn("winxp", "203.0.113.11", 42000 + i) for i in range(300)]
        for i in range(0, 300, 10):  # batches, as the capture gives them
            svc.ingest(during[i:i + 10], 1)
            time.sleep(0.005)
        # Local answers are untouched by the outage.
        assert svc.lookups.lookup(normalize_ip("203.0.113.11"), 42299)[0] is not None
        deadline = time.monotonic() + 10
        while svc.publisher.stats()["outages"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        redis_server.start()
        settle(svc)
        st = svc.publisher.stats()
        keys = {k for k in redis_server.client().scan_iter(match=b"fpd:c:*", count=1000)}
        # Redis came back empty (no persistence): what it holds is exactly what was kept.
        assert len(keys) == 300 - st["dropped"], st
        assert 300 - 50 - store.BATCH <= st["dropped"] <= 300 - 50, st
        assert st["published"] == 20 + 300 - st["dropped"] and st["outages"] == 1 and st["errors"] >= 1
        warnings = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
        assert len(warnings) == 1  # once per outage, however many retries
        assert [r for r in caplog.records if "redis reachable again" in r.getMessage()]
    finally:
        svc.publisher.stop()


def test_lookups_skip_a_dead_redis_and_come_back(redis_server):
    svc = Service(Config(redis_url=redis_server.url))
    svc.open_store()
    try:
        svc.ingest([syn("linux", "203.0.113.20", 43000)], 1)
        settle(svc)
        other = Service(Config(redis_url=redis_server.url))
        other.open_store()
        other.reader.pause = 0.2
        ip = normalize_ip("203.0.113.20")
        assert other.lookups.lookup(ip, 43000)[0] is not None
        redis_server.stop()
        assert other.lookups.lookup(ip, 43000) == (None, None)
        assert other.lookups.lookup(ip, 43000) == (None, None)
        st = other.reader.stats()
        assert st["errors"] == 1 and st["skipped"] == 1  # the second did not try a Redis just found dead
        redis_server.start()
        svc.ingest([syn("linux", "203.0.113.20", 43001)], 1)
        settle(svc)
        time.sleep(0.25)
        assert other.lookups.lookup(ip, 43001)[0] is not None
        other.publisher.stop()
    finally:
        svc.publisher.stop()


def _readme_acl() -> str:
    from tests import snippets

    return snippets.snippet(*snippets.REDIS_ACL).strip()


def test_the_readmes_acl_user_publishes_and_reads_its_prefix_only(redis_server, tmp_path):
    line = _readme_acl()
    password = re.search(r">(\S+)", line).group(1)
    assert redis_server.cli(*line.split()) == "OK"
    (tmp_path / "pw").write_text(password + "\n")
    url = f"redis://fingerprintd@127.0.0.1:{redis_server.port}/0"
    svc = Service(Config(redis_url=url, redis_password_file=str(tmp_path / "pw"), redis_rspamd_prefix="p0f",
                         redis_reputation=True))
    svc.open_store()
    try:
        # One set of pools (the password file read once) for the reputation, the publisher and the reader.
        shared = svc.reputation.store
        assert shared.redis.connection_pool is svc.publisher.pool and shared.reads.connection_pool is svc.reader.pool
        svc.ingest([syn("linux", "203.0.113.30", 44000)], 1)
        settle(svc)
        st = svc.publisher.stats()
        assert st["published"] == 1 and st["rejected"] == 0 and st["errors"] == 0, st
        # Every reputation call works for that user too (the scripts' commands included).
        rep, key = svc.reputation, "0123456789/server/x"
        assert [rep.record(key, True, f"198.{i}.0.1", f"<{i}@x>") for i in range(2)] == ["counted"] * 2
        assert rep.record(key, True, "198.0.0.1", "<0@x>") == "duplicate-message"
        assert rep.learned(key).spam == pytest.approx(2, rel=0.01) and rep.store.read_errors == 0
        assert rep.decay() == 0 and [x.key for x in rep.explain()] == [key] and rep.reset(key)
        other = Service(Config(redis_url=f"redis://fingerprintd:{password}@127.0.0.1:{redis_server.port}/0"))
        other.open_store()
        assert other.lookups.lookup(normalize_ip("203.0.113.30"), 44000)[0] is not None
        other.publisher.stop()
        import redis

        limited = redis.Redis(host="127.0.0.1", port=redis_server.port, username="fingerprintd", password=password)
        redis_server.client().set("session:1", "secret")
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.set("session:2", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.get("session:1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.flushall()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=redis_server.port, username="fingerprintd", password="wrong").ping()
    finally:
        svc.publisher.stop()


def test_a_refused_write_is_counted_not_retried(redis_server):
    """An ACL that does not allow the rspamd keys: those writes are refused (counted), the rest lands."""
    redis_server.cli("ACL", "SETUSER", "narrow", "on", ">pw", "resetkeys", "~fpd:*", "resetchannels", "-@all",
                     "+set", "+get", "+mget", "+setex")
    svc = Service(Config(redis_url=f"redis://narrow:pw@127.0.0.1:{redis_server.port}/0", redis_rspamd_prefix="p0f"))
    svc.open_store()
    try:
        svc.ingest([syn("linux", "203.0.113.31", 44100 + i) for i in range(3)], 1)
        settle(svc)
        st = svc.publisher.stats()
        assert st["rejected"] == 3 and st["published"] == 3 and st["errors"] == 0, st
        assert redis_server.client().exists(store.conn_key(normalize_ip("203.0.113.31"), 44100))
    finally:
        svc.publisher.stop()


def test_redis_options_are_checked():
    from fingerprintd.cli import build_parser
    from fingerprintd.config import ConfigError, apply_arguments

    for bad in (["--redis", "http://x"], ["--redis", "redis://127.0.0.1:99999"], ["--redis", "redis:///0"],
                ["--redis", "unix://"], ["--redis-rspamd-prefix", "p0f"]):
        with pytest.raises(ConfigError):
            apply_arguments(Config(), build_parser().parse_args(["serve", *bad]))
    for good in ("redis://u:p@127.0.0.1:6379/0", "rediss://redis.example:6380", "unix:///run/redis/redis.sock"):
        apply_arguments(Config(), build_parser().parse_args(["serve", "--redis", good]))


def test_serve_stops_with_one_line_on_an_unreadable_password_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fingerprintd", "serve", "--grpc", f"unix:{tmp_path}/api.sock",
                          "--redis", f"unix://{tmp_path}/redis.sock", "--redis-password-file", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert "nope" in last and "Traceback" not in out.stderr, out.stderr


# --- live: kernel SYNs in network namespaces --------------------------------------------------------


class Sensor:
    """`fingerprintd serve` in a pair's server namespace, sniffing its veth, publishing to Redis."""

    def __init__(self, pair: NetnsPair, d: Path, name: str, *extra: str) -> None:
        self.pair = pair
        self.sock = str(d / f"{name}.sock")
        self.log = d / f"{name}.log"
        self._logfile = open(self.log, "w")
        self.proc = subprocess.Popen(["ip", "netns", "exec", pair.srv, sys.executable, "-m", "fingerprintd", "serve",
                                      "-i", pair.vsrv, "--grpc", f"unix:{self.sock}", *extra],
                                     stderr=self._logfile, cwd=ROOT)
        deadline = time.monotonic() + 30
        while '"msg": "serving"' not in self.log.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        self.stub = pb_grpc.FingerprintStub(grpc.insecure_channel(f"unix:{self.sock}"))

    def lookup(self, ip: str, port: int = 0, wait_ms: int = 0) -> pb.LookupResponse:
        return self.stub.Lookup(pb.LookupRequest(ip=ip, port=port, wait_ms=wait_ms), timeout=10)

    def events(self, needle: str) -> list[dict]:
        return [json.loads(ln) for ln in self.log.read_text().splitlines() if needle in ln]

    def scrape(self, port: int) -> dict[str, float]:
        out = self.pair.ns(self.pair.srv, sys.executable, "-c", "import urllib.request; print(urllib.request."
                           f"urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode())")
        return {ln.split()[0]: float(ln.split()[1]) for ln in out.stdout.splitlines()
                if ln.startswith("fingerprintd_redis") or ln.startswith("fingerprintd_observations")}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(15)
        self._logfile.close()
        return rc


@pytest.fixture
def netns_ok():
    ok, why = can_use_netns()
    need(ok, why)


def test_two_sensors_one_redis_a_connection_seen_by_a_is_answered_by_b(netns_ok, redis_server, tmp_path):
    from p0f import P0f

    from fingerprintd.mail import VerdictClient

    with NetnsPair(net=91) as pa, NetnsPair(net=92) as pb_:
        pa.start_listener()
        pb_.start_listener()
        a = Sensor(pa, tmp_path, "a", "--redis", redis_server.url)
        b = Sensor(pb_, tmp_path, "b", "--redis", redis_server.url, "--p0f-socket", str(tmp_path / "b-p0f.sock"))
        try:
            pa.connect(pa.server4, 1, 0, 38001)
            pa.connect(pa.server6, 1, 0, 38002)
            for ip, port in ((pa.client4, 38001), (pa.client6, 38002)):
                mine = a.lookup(ip, port, wait_ms=3000)
                assert mine.found and mine.observation.os_name == "Linux"
                theirs = b.lookup(ip, port, wait_ms=3000)  # B looks in Redis while it waits
                assert theirs.found, ip
                assert _fields(theirs.observation) == _fields(mine.observation)
                assert theirs.verdict.header == mine.verdict.header
            b_stats = b.stub.Stats(pb.StatsRequest(), timeout=5)
            assert b_stats.fingerprinted == 0  # B's veth never carried these SYNs
            info = P0f(str(tmp_path / "b-p0f.sock"), timeout=5).get_info(pa.client4)
            assert info["os_name"].rstrip(b"\0") == b"Linux" and info["distance"] == 0
            client = VerdictClient(f"unix:{b.sock}", timeout=5.0)
            try:
                outcome = client.lookup(pa.client4, 38001)  # the milter's lookup
                assert outcome.reply is not None and outcome.reply.found
                assert outcome.reply.verdict.header.startswith("Linux")
            finally:
                client.close()
        finally:
            assert a.stop() == 0
            assert b.stop() == 0


def _spoofed(n: int, first: int, dst_ip: str) -> list[bytes]:
    out = []
    for i in range(first, first + n):
        src = socket.inet_ntoa(struct.pack("!I", 0x0B000000 + i))
        out.append(bytes(frame(STACKS["linux"], src, dst_ip, 20000 + i % 40000, 25, RNG,
                               seq=RNG.randrange(1, 1 << 31))))
    return out


def test_redis_stopped_and_restarted_during_a_syn_stream(netns_ok, redis_server, tmp_path):
    metrics = 9471
    with NetnsPair(net=93) as pair:
        s = Sensor(pair, tmp_path, "s", "--redis", redis_server.url, "--redis-queue", "300",
                   "--metrics", f"127.0.0.1:{metrics}")

        def send(n: int, first: int) -> None:
            send_frames(pair, _spoofed(n, first, pair.server4), 50, 0.01)  # about 5k SYNs/s, not a burst

        def seen() -> float:
            return s.scrape(metrics).get('fingerprintd_observations_total{kind="syn"}', 0)

        def wait_for(cond, what: str) -> dict:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                m = s.scrape(metrics)
                if cond(m):
                    return m
                time.sleep(0.2)
            raise AssertionError(f"{what}: {s.scrape(metrics)}")

        try:
            send(200, 0)
            wait_for(lambda m: m.get("fingerprintd_redis_published_total") == 200, "phase 1 published")
            redis_server.stop()
            send(1000, 200)  # Redis is down all along
            m = wait_for(lambda m: m.get('fingerprintd_observations_total{kind="syn"}') == 1200, "phase 2 seen")
            assert m["fingerprintd_redis_up"] == 0 and m["fingerprintd_redis_dropped_total"] > 0
            # Local lookups are unaffected.
            last = socket.inet_ntoa(struct.pack("!I", 0x0B000000 + 1199))
            assert s.lookup(last, 20000 + 1199).found
            redis_server.start()
            m = wait_for(lambda m: m.get("fingerprintd_redis_queued") == 0 and m.get("fingerprintd_redis_up") == 1,
                         "drained after the restart")
            dropped = m["fingerprintd_redis_dropped_total"]
            send(100, 1200)
            m = wait_for(lambda m: m.get("fingerprintd_redis_queued") == 0 and m.get("fingerprintd_redis_up") == 1
                         and m.get('fingerprintd_observations_total{kind="syn"}') == 1300, "resumed")
            assert m["fingerprintd_redis_dropped_total"] == dropped  # nothing dropped once it is back
            keys = sum(1 for _ in redis_server.client().scan_iter(match=b"fpd:c:*", count=1000))
            # Redis restarted empty: it holds what was kept through the outage and what came after.
            assert keys == 1100 - dropped, m
            assert m["fingerprintd_redis_published_total"] == 1300 - dropped
            assert 1000 - 300 - store.BATCH <= dropped <= 1000 - 300
            assert seen() == 1300
            assert len(s.events("redis unreachable")) == 1 and len(s.events("redis reachable again")) == 1
        finally:
            assert s.stop() == 0
    stopped = s.events('"msg": "stopped"')[0]
    assert stopped["redis_dropped"] == dropped


RSPAMD_P0F = """enabled = true;
socket = "{sock}";
timeout = 2s;
symbol = "P0F";
servers = "127.0.0.1:{port}";
prefix = "p0f";
patterns {{
  LINUX_OS = "^Linux.*";
}}
"""


def test_rspamd_reads_the_sensors_keys_without_a_socket(netns_ok, redis_server, tmp_path):
    """Debian's rspamd, its p0f module pointed at the same Redis and at a p0f socket that does not exist."""
    need(shutil.which("rspamd") is not None and shutil.which("rspamc") is not None, "rspamd is not installed")
    port, rspamd = start_rspamd(tmp_path / "rspamd", RSPAMD_P0F.format(sock=tmp_path / "no-such.sock",
                                                                          port=redis_server.port))
    message = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\nMessage-ID: <1@example.org>\r\n\r\nhi\r\n"
    try:
        with NetnsPair(net=94) as pair:
            pair.start_listener()
            a = Sensor(pair, tmp_path, "a", "--redis", redis_server.url, "--redis-rspamd-prefix", "p0f")
            try:
                pair.connect(pair.server4, 1, 0, 39001)
                assert a.lookup(pair.client4, 39001, wait_ms=3000).found
                deadline = time.monotonic() + 10
                while not redis_server.client().exists(f"p0f{pair.client4}") and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                assert a.stop() == 0
        wait_for_port(port, rspamd)
        lines, text = rspamc_symbols(port, pair.client4, message)
        assert "P0F" in lines and "link=Ethernet or modem" in lines["P0F"] and "distance=0" in lines["P0F"], text
        assert "[Linux 4.19 and newer]" in lines["LINUX_OS"], text
        # Not in Redis, and the socket is not there: no symbol.
        assert "P0F" not in rspamc_symbols(port, "198.51.100.5", message)[0]
    finally:
        rspamd.terminate()
        rspamd.wait(20)


def test_rediss_url_publishes_over_tls(tmp_path):
    """redis-server's own TLS port, a private CA: the URL's rediss:// and ssl_ca_certs are all it takes."""
    need(shutil.which("openssl") is not None, "openssl is not installed")
    ca, key, cert = tmp_path / "ca.pem", tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
                    "-keyout", tmp_path / "ca-key.pem", "-out", ca], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key,
                    "-out", tmp_path / "req.pem"], check=True, capture_output=True)
    (tmp_path / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", tmp_path / "req.pem", "-CA", ca,
                    "-CAkey", tmp_path / "ca-key.pem", "-CAcreateserial", "-days", "1",
                    "-extfile", tmp_path / "ext.cnf", "-out", cert], check=True, capture_output=True)
    tls_port = free_port()
    server = RedisServer(tmp_path, False, "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
    a, b = Service(Config(redis_url=url)), Service(Config(redis_url=url))
    a.open_store()
    b.open_store()
    try:
        a.ingest([syn("linux", "203.0.113.40", 45000)], 1)
        settle(a)
        assert a.publisher.stats()["published"] == 1 and a.publisher.stats()["errors"] == 0
        assert b.lookups.lookup(normalize_ip("203.0.113.40"), 45000)[0] is not None
        assert server.client().exists(store.conn_key(normalize_ip("203.0.113.40"), 45000))
    finally:
        a.publisher.stop()
        b.publisher.stop()
        server.stop()


def test_stopping_with_redis_down_counts_what_it_could_not_write(redis_server):
    svc = Service(Config(redis_url=redis_server.url))
    svc.open_store()
    redis_server.stop()
    svc.ingest([syn("linux", "203.0.113.50", 46000 + i) for i in range(25)], 1)
    svc.publisher.stop(flush=0.5)
    st = svc.publisher.stats()
    assert st["dropped"] == 25 and st["published"] == 0 and st["queued"] == 0, st
    assert not svc.publisher.alive()


# --- shared reputation (issue 13, part 4) -------------------------------------------------------------


@pytest.fixture
def two_learning(redis_server, tmp_path):
    """Services A and B keeping their reputation in one Redis, each with its API."""
    with _two_services(redis_server, tmp_path, redis_reputation=True) as (services, stubs):
        for svc in services:
            svc.reputation.store.cache_seconds = 0.0  # here: every lookup reads Redis (in service: 5 s)
        yield services, stubs


def test_feedback_given_on_one_host_moves_the_score_on_the_other(two_learning):
    (a, b), (stub_a, stub_b) = two_learning
    a.ingest([syn("winxp", "203.0.113.60", 47000)], 1)
    settle(a)
    before = stub_b.Lookup(pb.LookupRequest(ip="203.0.113.60", port=47000))  # B answers from Redis
    key = before.verdict.id
    assert before.found and key and before.verdict.learned == 0
    results = [stub_a.Feedback(pb.FeedbackRequest(id=key, spam=True, client_ip=f"198.{i}.7.1",
                                                  message_id=f"<{i}@x>")).result for i in range(25)]
    assert results == ["counted"] * 25
    mine = stub_a.Lookup(pb.LookupRequest(ip="203.0.113.60", port=47000)).verdict
    theirs = stub_b.Lookup(pb.LookupRequest(ip="203.0.113.60", port=47000)).verdict
    assert mine.learned > 0.3 and theirs.learned == mine.learned and theirs.score == mine.score
    assert theirs.score == pytest.approx(before.verdict.score + theirs.learned)
    # The abuse marks are shared too: the same message or client given to B does not count again.
    again = stub_b.Feedback(pb.FeedbackRequest(id=key, spam=True, client_ip="198.3.7.1", message_id="<3@x>"))
    assert again.result == "duplicate-message"
    assert stub_b.Feedback(pb.FeedbackRequest(id=key, spam=True, client_ip="198.4.7.1")).result == "duplicate-client"
    assert a.reputation.explain()[0].key == key and len(b.reputation.explain()) == 1


def test_increments_from_two_hosts_add_up(redis_server):
    """Two stores (two hosts) adding to one key at once: nothing is lost to a read-modify-write."""
    import threading as th

    stores = [RedisReputationStore(*store.open_pools(redis_server.url), cache_seconds=0.0) for _ in range(2)]

    def add(s) -> None:
        for _ in range(300):
            s.increment("0123456789/desktop/x", 1.0, 0.5, 1_800_000_000.0)

    threads = [th.Thread(target=add, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spam, ham, first, last = stores[1].get("0123456789/desktop/x")
    assert (spam, ham, first, last) == (1200.0, 600.0, 1_800_000_000.0, 1_800_000_000.0)


def test_marks_decay_and_reset_follow_the_callers_clock_on_every_host(redis_server):
    a, b = (RedisReputationStore(*store.open_pools(redis_server.url), cache_seconds=0.0) for _ in range(2))
    t0 = 1_800_000_000.0
    assert a.claim("m:1", t0, 100) and not b.claim("m:1", t0 + 50, 100) and b.claim("m:1", t0 + 101, 100)
    assert [a.count_up("s:k", 2, t0, 100) for _ in range(3)] == [True, True, False]
    assert not b.count_up("s:k", 2, t0 + 50, 100) and b.count_up("s:k", 2, t0 + 101, 100)
    a.increment("0123456789/server/x", 0.01, 0.0, t0)
    a.increment("0123456789/server/y", 5.0, 0.0, t0)
    assert b.decay(t0, 0.05) == 1 and [k for k, *_ in a.items()] == ["0123456789/server/y"]
    assert a.reset("0123456789/server/y") and b.get("0123456789/server/y") is None and not b.reset("none/x/y")


def test_a_dead_redis_gives_no_learned_part_and_no_stall(redis_server):
    from fingerprintd.reputation import Reputation

    s = RedisReputationStore(*store.open_pools(redis_server.url), cache_seconds=0.0)
    rep = Reputation(s)
    s.increment("0123456789/desktop/x", 1e9, 0.0, 1_800_000_000.0)
    assert rep.adjustment("0123456789/desktop/x") == 1.0
    redis_server.stop()
    assert rep.adjustment("0123456789/desktop/x") == 0.0 and s.read_errors == 1
    assert rep.adjustment("0123456789/desktop/x") == 0.0 and s.read_errors == 1  # skipped for a moment
