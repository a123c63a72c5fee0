"""The gRPC API contract: answers, every INVALID_ARGUMENT, streaming, auth, health."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fingerprintd.config import Config
from fingerprintd.server import Limits, build_server
from fingerprintd.service import Service
from fingerprintd.v1 import fingerprintd_pb2 as pb
from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc
from tests.craft import STACKS, frame

RNG = random.Random(4)


def syn(stack: str, src: str, sport: int, dport: int = 25) -> tuple[int, int, bytes]:
    shape = STACKS[stack]
    if ":" in src:
        shape = replace(shape, ver=6, quirks=shape.quirks - {"df", "id+"})
    data = bytes(frame(shape, src, "192.0.2.25" if ":" not in src else "2001:db8::25", sport, dport, RNG,
                       seq=RNG.randrange(1, 1 << 31)))
    return (int(time.time()), 0, data)


@pytest.fixture
def api(tmp_path):
    service = Service(Config(listen=[f"unix:{tmp_path}/api.sock"], max_batch=100, max_wait_ms=2000))
    server, _ = build_server(service, service.cfg.listen)
    server.start()
    channel = grpc.insecure_channel(f"unix:{tmp_path}/api.sock")
    yield service, pb_grpc.FingerprintStub(channel), channel
    channel.close()
    server.stop(0)


def test_lookup_by_connection_and_by_ip(api):
    service, stub, _ = api
    service.ingest([syn("linux", "203.0.113.5", 40001), syn("winxp", "203.0.113.5", 40002),
                    syn("linux", "2001:db8::5", 40003)], 1)
    r = stub.Lookup(pb.LookupRequest(ip="203.0.113.5", port=40001))
    assert r.found and r.observation.os_name == "Linux" and r.observation.label == "Linux 3.11 and newer"
    assert r.verdict.score == 0 and r.verdict.header.startswith("Linux 3.11 and newer; dist: 9;")
    assert r.observation.mail_class == r.verdict.mail_class == pb.MAIL_CLASS_SERVER
    # With the MTA's names: an MTA whose verified name its HELO agrees with.
    names = pb.Context(client_name="mx1.example.net", reverse_name="mx1.example.net", helo_name="mx1.example.net")
    mta = stub.Lookup(pb.LookupRequest(ip="203.0.113.5", port=40001, context=names))
    assert (mta.verdict.score, list(mta.verdict.rules), mta.verdict.bucket) == (-0.3, ["server-mta"], "fcrdns-match")
    assert mta.verdict.header.endswith(f"; id: {mta.verdict.id}; client: 203.0.113.5; score: -0.3")
    latest = stub.Lookup(pb.LookupRequest(ip="::ffff:203.0.113.5"))
    assert latest.observation.client_port == 40002 and latest.verdict.rules == ["windows-xp"]
    assert latest.verdict.mail_class == pb.MAIL_CLASS_DESKTOP
    assert latest.host.seen_count == 2 and latest.host.host_changed and list(latest.host.os_names) == ["Linux",
                                                                                                        "Windows"]
    v6 = stub.Lookup(pb.LookupRequest(ip="IPv6:2001:DB8::5", port=40003))
    assert v6.found and v6.observation.ip_version == 6 and v6.observation.client_ip == "2001:db8::5"
    miss = stub.Lookup(pb.LookupRequest(ip="198.51.100.9", port=1))
    assert not miss.found and not miss.HasField("observation")


@contextmanager
def serving(tmp_path, max_wait_ms: int = 60_000, limits: Limits | None = None, **channel_options):
    """A service and its server on a unix socket, and a channel to it."""
    service = Service(Config(listen=[f"unix:{tmp_path}/w.sock"], max_batch=100, max_wait_ms=max_wait_ms))
    server, _ = build_server(service, service.cfg.listen, limits=limits)
    server.start()
    channel = grpc.insecure_channel(f"unix:{tmp_path}/w.sock", options=list(channel_options.items()))
    try:
        yield service, server, pb_grpc.FingerprintStub(channel)
    finally:
        channel.close()
        server.stop(0).wait(5)


def sample(metric, **labels) -> float:
    """The value of a prometheus_client metric's sample (its _total for a counter)."""
    values = [s.value for s in metric.collect()[0].samples if s.labels == labels and not s.name.endswith("_created")]
    assert len(values) == 1, values
    return values[0]


def scraped(service, server, name: str, **labels) -> float:
    """The value of a sample the service's metrics collector exports, as a scrape would read it."""
    from fingerprintd.metrics import ServiceCollector

    service.grpc_server = server
    values = [s.value for m in ServiceCollector(service).collect() for s in m.samples
              if s.name == name and s.labels == labels]
    assert len(values) == 1, values
    return values[0]


def test_lookup_waits_end_when_the_syn_arrives(tmp_path):
    # The server would wait 60 s; the client gives up after 10: answered at all means the
    # arrival ended the wait, by connection and (port 0) by address alone.
    with serving(tmp_path) as (service, server, stub):
        threading.Timer(0.1, service.ingest, ([syn("win7", "203.0.113.6", 41000)], 1)).start()
        r = stub.Lookup(pb.LookupRequest(ip="203.0.113.6", port=41000, wait_ms=60_000), timeout=10)
        assert r.found and r.observation.os_name == "Windows" and r.observation.client_port == 41000
        threading.Timer(0.1, service.ingest, ([syn("linux", "203.0.113.7", 41001)], 1)).start()
        r = stub.Lookup(pb.LookupRequest(ip="203.0.113.7", wait_ms=60_000), timeout=10)
        assert r.found and r.observation.os_name == "Linux" and r.observation.client_port == 41001
        stub.Lookup(pb.LookupRequest(ip="203.0.113.7"))
        counts = {s.labels["waited"]: s.value for s in server.servicer.lookup_seconds.collect()[0].samples
                  if s.name.endswith("_count") and s.labels["method"] == "Lookup"}
        assert counts == {"yes": 2, "no": 1} and server.stats()["waits"] == 2


def test_batch_keeps_order(api):
    service, stub, _ = api
    service.ingest([syn("linux", f"203.0.113.{i}", 42000 + i) for i in range(1, 51)], 1)
    queries = [pb.LookupRequest(ip=f"203.0.113.{i}", port=42000 + i) for i in range(1, 61)]
    r = stub.LookupBatch(pb.LookupBatchRequest(queries=queries))
    assert [x.found for x in r.results] == [True] * 50 + [False] * 10
    assert [x.observation.client_port for x in r.results[:50]] == list(range(42001, 42051))


@pytest.mark.parametrize("call,request_,needle", [
    ("Lookup", pb.LookupRequest(ip="not-an-ip"), "not an IP address"),
    ("Lookup", pb.LookupRequest(ip=""), "not an IP address"),
    ("Lookup", pb.LookupRequest(ip="192.0.2.1", port=70000), "port out of range"),
    ("Lookup", pb.LookupRequest(ip="192.0.2.1", wait_ms=60000), "over the limit"),
    ("LookupBatch", pb.LookupBatchRequest(queries=[pb.LookupRequest(ip="192.0.2.1")] * 101), "over the limit"),
    ("LookupBatch", pb.LookupBatchRequest(queries=[pb.LookupRequest(ip="192.0.2.1"), pb.LookupRequest(ip="x")]),
     "not an IP address"),
])
def test_invalid_argument(api, call, request_, needle):
    _, stub, _ = api
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, call)(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()


def watch_two(api, request: pb.WatchRequest, syns: list) -> list:
    """The first two observations a Watch stream yields while `syns` are ingested."""
    service, stub, _ = api
    stream = stub.Watch(request)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend([next(stream), next(stream)]))
    reader.start()
    time.sleep(0.3)
    service.ingest(syns, 1)
    reader.join(5)
    stream.cancel()
    return got


def test_watch_streams_filtered_observations(api):
    _, stub, _ = api
    got = watch_two(api, pb.WatchRequest(os_name_regex="^Windows$"),
                    [syn("linux", "203.0.113.20", 43001), syn("win7", "203.0.113.21", 43002),
                     syn("unknown", "203.0.113.22", 43003), syn("winxp", "203.0.113.23", 43004)])
    assert [o.client_port for o in got] == [43002, 43004]
    with pytest.raises(grpc.RpcError) as err:
        next(stub.Watch(pb.WatchRequest(os_name_regex="(")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_by_mail_class(api):
    _, stub, _ = api
    got = watch_two(api, pb.WatchRequest(mail_classes=[pb.MAIL_CLASS_MOBILE, pb.MAIL_CLASS_UNKNOWN]),
                    [syn("linux", "203.0.113.30", 44001), syn("android", "203.0.113.31", 44002),
                     syn("win7", "203.0.113.32", 44003), syn("unknown", "203.0.113.33", 44004)])
    assert [(o.client_port, o.mail_class) for o in got] == [(44002, pb.MAIL_CLASS_MOBILE),
                                                             (44004, pb.MAIL_CLASS_UNKNOWN)]
    for bad in (pb.MAIL_CLASS_UNSPECIFIED, 42):
        with pytest.raises(grpc.RpcError) as err:
            next(stub.Watch(pb.WatchRequest(mail_classes=[bad])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a mail class" in err.value.details()


def test_stats_add_up(api):
    service, stub, _ = api
    first = syn("linux", "203.0.113.30", 44001)
    service.ingest([first, first, (0, 0, b"\x00" * 30), syn("win7", "203.0.113.31", 44002, dport=80)], 1)
    stub.Lookup(pb.LookupRequest(ip="203.0.113.30", port=44001))
    s = stub.Stats(pb.StatsRequest())
    assert s.packets == 4 and s.fingerprinted == 1
    assert dict(s.skipped) == {"retransmitted-syn": 1, "not-ip": 1, "other-port": 1}
    assert s.packets == s.fingerprinted + sum(s.skipped.values())
    assert s.connections == 1 and s.hosts == 1 and s.lookups == 1 and s.lookup_hits == 1
    assert s.match_cache_misses >= 1 and s.uptime_seconds > 0
    assert dict(s.syn_mail_classes) == {"server": 1}


def test_health_and_reflection(api):
    _, _, channel = api
    h = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="fingerprintd.v1.Fingerprint"))
    assert h.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert "fingerprintd.v1.Fingerprint" in names and "grpc.health.v1.Health" in names


def test_token(tmp_path):
    service = Service(Config(listen=[f"unix:{tmp_path}/t.sock"]))
    server, _ = build_server(service, service.cfg.listen, token="s3cret")
    server.start()
    try:
        with grpc.insecure_channel(f"unix:{tmp_path}/t.sock") as ch:
            stub = pb_grpc.FingerprintStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Lookup(pb.LookupRequest(ip="192.0.2.1"))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                stub.Lookup(pb.LookupRequest(ip="192.0.2.1"), metadata=[("authorization", "Bearer wrong")])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                next(stub.Watch(pb.WatchRequest(), timeout=5))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.Lookup(pb.LookupRequest(ip="192.0.2.1"), metadata=[("authorization", "Bearer s3cret")])
            assert not ok.found
            h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert h.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


def test_reload_keeps_the_old_files_on_error(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[[rule]]\nname = 'linux'\nos_name = '^Linux$'\nscore = 1.5\n")
    service = Service(Config(listen=[f"unix:{tmp_path}/r.sock"], policy=str(policy)))
    service.ingest([syn("linux", "203.0.113.40", 45001)], 1)
    obs, _ = service.hosts.lookup(bytes([203, 0, 113, 40]), 45001)
    assert service.policy.verdict(obs.fp, obs.pkt.src).score == 1.5
    policy.write_text("[[rule]]\nname = 'linux'\nos_name = '^Linux$'\nscore = 2.5\n")
    assert service.reload() and service.policy.verdict(obs.fp, obs.pkt.src).score == 2.5
    policy.write_text("[[rule]]\nname = 'linux'\nos_name = '(\n")
    assert not service.reload() and service.policy.verdict(obs.fp, obs.pkt.src).score == 2.5
    assert service.reloads == 1


@pytest.mark.parametrize("compiled", [False, True], ids=["pure", "compiled"])
def test_reload_keeps_the_running_implementation(compiled, tmp_path):
    """A SIGHUP's new matcher is of the implementation the service started with (it was the pure one)."""
    from fingerprintd import accel
    from fingerprintd.matcher import Matcher
    from tests.conftest import need

    if compiled:
        need(accel.available(), "the compiled accelerator is not built")
    with accel.selected(compiled):
        service = Service(Config(listen=[f"unix:{tmp_path}/r.sock"]))
    started = type(service.engine.matcher)
    assert (started is Matcher) is not compiled
    assert service.reload() and type(service.engine.matcher) is started


def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                           "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert),
                           "-days", "1"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    service = Service(Config(listen=["localhost:0"]))
    server, _ = build_server(service, [], tls=(key.read_bytes(), cert.read_bytes()))
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    server.start()
    try:
        service.ingest([syn("linux", "203.0.113.50", 46001)], 1)
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds) as ch:
            r = pb_grpc.FingerprintStub(ch).Lookup(pb.LookupRequest(ip="203.0.113.50", port=46001), timeout=10)
            assert r.found and r.observation.os_name == "Linux"
        with grpc.insecure_channel(f"localhost:{port}") as ch:  # plaintext to a TLS port fails
            with pytest.raises(grpc.RpcError):
                pb_grpc.FingerprintStub(ch).Lookup(pb.LookupRequest(ip="203.0.113.50"), timeout=3)
    finally:
        server.stop(0)


def test_idle_streams_and_waits_leave_lookups_answered(tmp_path):
    # Once, 16 unread Watch streams or 16 waiting Lookups took every worker thread, and
    # every fresh Lookup (each milter and policy lookup) timed out and failed open.
    # One client, default limits: 200 streams (64 open, the rest refused), 200 waits.
    with serving(tmp_path) as (service, server, stub):
        service.ingest([syn("linux", "203.0.113.60", 47000)], 1)
        streams = [stub.Watch(pb.WatchRequest()) for _ in range(200)]
        waits = [stub.Lookup.future(pb.LookupRequest(ip="198.51.100.1", port=1000 + i, wait_ms=60_000))
                 for i in range(200)]
        deadline = time.monotonic() + 20
        while (server.stats()["open_waits"], server.stats()["open_streams"]) != (200, 64):
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.05)
        while sum(s.done() for s in streams) < 136:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = [s for s in streams if s.done()]
        assert len(refused) == 136 and {s.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        service.ingest([syn("linux", "198.51.100.2", 48000 + i) for i in range(300)], 1)  # for nobody's reading
        for _ in range(20):
            r = stub.Lookup(pb.LookupRequest(ip="203.0.113.60", port=47000), timeout=2)
            assert r.found and r.observation.os_name == "Linux" and r.observation.client_port == 47000
        r = stub.LookupBatch(pb.LookupBatchRequest(queries=[pb.LookupRequest(ip="203.0.113.60", port=47000)]),
                             timeout=2)
        assert [x.observation.client_port for x in r.results] == [47000]
        stats = server.stats()
        assert (stats["open_waits"], stats["open_streams"]) == (200, 64)
        assert not any(w.done() for w in waits) and sum(s.done() for s in streams) == 136
        for call in (*streams, *waits):
            call.cancel()
        while server.stats()["open_waits"] or server.stats()["open_streams"]:  # and all of it is released
            assert time.monotonic() < deadline + 10, server.stats()
            time.sleep(0.05)


def test_watch_overflow_drops_and_counts_and_the_stream_lives_on(tmp_path):
    # No BDP probing: the client's window stays at its 64 KiB, so an unread stream backs up fast.
    with serving(tmp_path, limits=Limits(watch_queue=20), **{"grpc.http2.bdp_probe": 0}) as (service, server, stub):
        stream = stub.Watch(pb.WatchRequest())
        deadline = time.monotonic() + 10
        while not server.stats()["open_streams"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        total = 3000
        for i in range(0, total, 100):
            service.ingest([syn("linux", "203.0.113.70", 10000 + j) for j in range(i, i + 100)], 1)
        while server.stats()["watch_observations"] < total:  # all handed to the stream (or dropped)
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.02)
        drops = server.stats()["watch_drops"]
        assert drops > 0
        # What was not dropped still arrives, oldest first, and nothing else.
        got = [next(stream).client_port for _ in range(total - drops)]
        assert got[0] == 10000 and got == sorted(got) and len(set(got)) == total - drops
        assert server.stats()["open_streams"] == 1
        service.ingest([syn("win7", "203.0.113.71", 9999)], 1)  # the same stream carries on
        assert next(stream).client_port == 9999
        exported = scraped(service, server, "fingerprintd_watch_stream_drops_total")
        assert server.stats()["watch_drops"] == drops == exported
        stream.cancel()


def test_per_client_limits_refuse_with_resource_exhausted(tmp_path):
    with serving(tmp_path, limits=Limits(streams_per_client=3, waits_per_client=2)) as (service, server, stub):
        service.ingest([syn("linux", "203.0.113.80", 49000)], 1)
        streams = [stub.Watch(pb.WatchRequest()) for _ in range(3)]
        waits = [stub.Lookup.future(pb.LookupRequest(ip="198.51.100.3", port=1 + i, wait_ms=60_000))
                 for i in range(2)]
        deadline = time.monotonic() + 10
        while (server.stats()["open_waits"], server.stats()["open_streams"]) != (2, 3):
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as err:
            next(stub.Watch(pb.WatchRequest(), timeout=5))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "Watch streams from" in err.value.details()
        for call in (stub.Lookup, lambda r, **kw: stub.LookupBatch(pb.LookupBatchRequest(queries=[r]), **kw)):
            with pytest.raises(grpc.RpcError) as err:
                call(pb.LookupRequest(ip="198.51.100.3", port=9, wait_ms=60_000), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "waiting lookups" in err.value.details()
        # A lookup that needs no wait is never refused, even with wait_ms set.
        for wait_ms in (0, 60_000):
            r = stub.Lookup(pb.LookupRequest(ip="203.0.113.80", port=49000, wait_ms=wait_ms), timeout=5)
            assert r.found
        assert server.stats()["refused_streams_per_client"] == 1 and server.stats()["refused_waits_per_client"] == 2
        refused = [scraped(service, server, "fingerprintd_grpc_refused_total", limit=limit)
                   for limit in ("streams_per_client", "waits_per_client", "streams", "waits")]
        metrics = server.servicer
        assert refused == [1, 2, 0, 0]
        assert (sample(metrics.open, kind="streams"), sample(metrics.open, kind="waits")) == (3, 2)
        # A slot given back is a slot to take again.
        streams.pop().cancel()
        waits.pop().cancel()
        while (server.stats()["open_waits"], server.stats()["open_streams"]) != (1, 2):
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.02)
        streams.append(stub.Watch(pb.WatchRequest()))
        late = stub.Lookup.future(pb.LookupRequest(ip="198.51.100.4", port=7, wait_ms=60_000))
        service.ingest([syn("win7", "198.51.100.4", 7)], 1)
        assert late.result(timeout=10).found
        service.ingest([syn("win7", "198.51.100.5", 8)], 1)
        assert next(streams[-1]).client_ip in ("198.51.100.4", "198.51.100.5")
        for call in (*streams, *waits):
            call.cancel()


def test_batch_waits_once_for_all_its_addresses(tmp_path):
    # Four SYNs arrive late but within the wait, three never do, and the last
    # one's arrives after one wait is over.  A batch that waited per address
    # (1 s for each missing one in turn) would be asking for the last one only
    # after 4 s, and find it.
    with serving(tmp_path) as (service, _, stub):
        late = [syn("linux", f"203.0.113.{90 + i}", 50000 + i) for i in range(4)]
        threading.Timer(0.3, service.ingest, (late, 1)).start()
        after = threading.Timer(1.8, service.ingest, ([syn("win7", "203.0.113.99", 50009)], 1))
        after.start()
        queries = ([pb.LookupRequest(ip=f"203.0.113.{90 + i}", port=50000 + i, wait_ms=1000) for i in range(4)]
                   + [pb.LookupRequest(ip=f"198.51.100.{i}", port=50005, wait_ms=1000) for i in range(3)]
                   + [pb.LookupRequest(ip="203.0.113.99", port=50009, wait_ms=1000)])
        r = stub.LookupBatch(pb.LookupBatchRequest(queries=queries), timeout=30)
        assert [x.found for x in r.results] == [True] * 4 + [False] * 4
        assert [x.observation.client_port for x in r.results[:4]] == [50000, 50001, 50002, 50003]
        after.join()
        assert stub.Lookup(pb.LookupRequest(ip="203.0.113.99", port=50009)).found  # it did arrive, later


def test_global_caps_refuse_with_resource_exhausted(tmp_path):
    with serving(tmp_path, limits=Limits(streams=2, waits=1)) as (_, server, stub):
        streams = [stub.Watch(pb.WatchRequest()) for _ in range(2)]
        wait = stub.Lookup.future(pb.LookupRequest(ip="198.51.100.6", port=1, wait_ms=60_000))
        deadline = time.monotonic() + 10
        while (server.stats()["open_waits"], server.stats()["open_streams"]) != (1, 2):
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as err:
            next(stub.Watch(pb.WatchRequest(), timeout=5))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams in all" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.Lookup(pb.LookupRequest(ip="198.51.100.6", port=2, wait_ms=60_000), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "lookups in all" in err.value.details()
        assert server.stats()["refused_streams"] == 1 and server.stats()["refused_waits"] == 1
        for call in (*streams, wait):
            call.cancel()
