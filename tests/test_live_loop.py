"""The service's compiled capture path (_replay.LiveLoop) against its pure one, batch for batch.

`Service.ingest_blob` runs the live books, the match, the host records, the table's records and the p0f
log on C structs when the accelerator is built, and makes Observations only for Watch streams and Redis.
The pure path (Engine.feed_blob on flows.RecentSyns, then HostTable.add_batch and the p0f log formatter)
is the oracle: both services get the same batches - random and mutated frames, retransmissions, crafted
host series that set off host change, ip sharing and uptime, a reload between batches - and must give the
same log bytes, counters, policy actions, Watch observations and table answers.
"""

from __future__ import annotations

import gc
import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fingerprintd import accel, engine, packet
from fingerprintd.config import Config
from fingerprintd.hosts import host_table
from fingerprintd.service import LogFile, Service, live_loop
from tests.alike import batches, host_fields, host_series, read_batches, syn_fields
from tests.conftest import OUR_DB, need
from tests.craft import Shape, frame, write_pcap


class Clock:
    """The tables' shared clock: both services' entries expire alike."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _service(compiled: bool, tmp_path, tag: str, clock: Clock, ports: list[int]) -> Service:
    with accel.selected(compiled):
        svc = Service(Config(ports=ports, max_connections=64, max_hosts=16, ttl_seconds=30))
        svc.hosts = svc.lookups = host_table(64, 16, 30, timer=clock)
        svc._loop = live_loop(svc.engine, svc.hosts)
    svc.log = LogFile(str(tmp_path / f"{tag}.log"))
    return svc


def _pair(tmp_path, ports=(25,)) -> tuple[Service, Service]:
    need(accel.available(), "the compiled accelerator is not built (pip install -e . builds it; see setup.py)")
    clock = Clock()
    pure = _service(False, tmp_path, "pure", clock, list(ports))
    compiled = _service(True, tmp_path, "compiled", clock, list(ports))
    assert pure._loop is None and type(compiled._loop).__name__ == "LiveLoop"  # two paths, really
    return pure, compiled


def _seen(svc: Service, q) -> dict:
    """Everything a client of the service can see, and its counters."""
    sources = {(o.pkt.src, o.pkt.sport) for o in list(q.queue)} if q is not None else set()
    sources |= {(s.src, s.sport) for s in svc.hosts.connections._data.values()}
    table = {}
    for ip, port in sorted(sources):
        got, host = svc.hosts.lookup(ip, port)
        table[(ip, port)] = (syn_fields(got), host_fields(host), host_fields(svc.hosts.host(ip)))
    with open(svc.log.path, "rb") as fh:
        log = fh.read()
    return {"log": log, "summary": svc.engine.summary(), "actions": svc.syn_actions, "table": table,
            "added": svc.hosts.added, "watched": list(q.queue) if q is not None else None}


def _feed_both(pure: Service, compiled: Service, batches, linktype: int, watch: bool, reload_at: int = -1) -> tuple:
    queues = [svc.subscribe() if watch else None for svc in (pure, compiled)]
    for n, batch in enumerate(batches):
        if n == reload_at:
            for svc in (pure, compiled):
                assert svc.reload()
        for svc in (pure, compiled):
            svc.ingest(batch, linktype)
    return _seen(pure, queues[0]), _seen(compiled, queues[1])


def _assert_same(seen_pure: dict, seen_compiled: dict) -> None:
    for key in seen_pure:
        assert seen_compiled[key] == seen_pure[key], key
    if seen_pure["watched"] is not None:
        for a, b in zip(seen_pure["watched"], seen_compiled["watched"], strict=True):
            assert type(b) is type(a) and type(b.pkt) is type(a.pkt)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(batches(), st.sampled_from([packet.LINK_ETHERNET, packet.LINK_LINUX_SLL2]), st.booleans(),
       st.sampled_from([(25,), (25, 40000)]), st.integers(-1, 3))
def test_random_and_mutated_batches_alike(tmp_path_factory, bs, linktype, watch, ports, reload_at):
    """Random and mutated frames (every skip reason, SYN+ACKs, other ports, IPv6, VLANs), fed twice over
    with the same ISNs (retransmissions) and then with new ones."""
    if linktype == packet.LINK_LINUX_SLL2:  # the same frames behind a cooked header
        bs = [[(s, u, b"\x08\x00" + bytes(18) + f[14:]) for s, u, f in b] for b in bs]
    again = [[(s, u, f) for s, u, f in b] for b in bs]
    renumbered = [[(s, u, _new_isn(f, 7)) for s, u, f in b] for b in bs]
    pure, compiled = _pair(tmp_path_factory.mktemp("live"), ports)
    _assert_same(*_feed_both(pure, compiled, bs + again + renumbered, linktype, watch, reload_at))


def _new_isn(frame: bytes, n: int) -> bytes:
    data = bytearray(frame)
    if len(data) >= 54 and data[12:14] == b"\x08\x00" and data[14] == 0x45:
        struct.pack_into("!I", data, 38, (struct.unpack_from("!I", data, 38)[0] + n) & 0xFFFFFFFF)
    return bytes(data)


def test_host_series_alike(tmp_path):
    """Crafted per-host series: host change, ip sharing and uptime records reach the log, the table and
    Watch alike, with and without a Watch stream (the compiled path then makes no Observation)."""
    path = tmp_path / "hosts.pcap"
    write_pcap(path, host_series(OUR_DB, seed=20261202))
    batches, linktype = read_batches(path)
    for watch in (False, True):
        (tmp_path / f"w{watch}").mkdir()
        pure, compiled = _pair(tmp_path / f"w{watch}")
        seen_pure, seen_compiled = _feed_both(pure, compiled, batches, linktype, watch, reload_at=len(batches) // 2)
        _assert_same(seen_pure, seen_compiled)
        records = seen_pure["summary"]["records"]
        assert records.get("host change") and records.get("ip sharing") and records.get("uptime"), records


def test_the_live_books_forget_the_oldest(tmp_path):
    """More distinct 4-tuples than the books hold: a SYN sent again after its entry left is fingerprinted
    again on both paths, one sent again while remembered is a retransmission."""
    pure, compiled = _pair(tmp_path)
    for compiled_path, svc in ((False, pure), (True, compiled)):
        with accel.selected(compiled_path):
            svc.engine.flows = engine.live_books(8, 4)
            svc._loop = live_loop(svc.engine, svc.hosts)
    assert type(compiled._loop).__name__ == "LiveLoop"
    rng = random.Random(5)
    frames = [bytes(frame(Shape(), f"10.3.0.{i}", "192.0.2.25", 41000 + i, 25, rng, seq=77)) for i in range(12)]
    batches = [[(1_700_000_000, 0, f) for f in frames[:6]], [(1_700_000_001, 0, f) for f in frames[:6]],
               [(1_700_000_002, 0, f) for f in frames],
               [(1_700_000_003, 0, f) for f in (frames[3], frames[0], frames[1], frames[2])]]
    seen_pure, seen_compiled = _feed_both(pure, compiled, batches, packet.LINK_ETHERNET, watch=True)
    _assert_same(seen_pure, seen_compiled)
    skipped = seen_pure["summary"]["skipped"]
    # 6 again at once, the 6 again among 12 (the books hold 8: the 4 oldest leave), then those 4, the
    # youngest of them first (one more entry kept would still hold it): fingerprinted again.
    assert skipped["retransmitted-syn"] == 6 + 6, skipped
    assert seen_pure["summary"]["fingerprinted"]["syn"] == 6 + 6 + 4


def test_the_live_loops_records_are_out_of_the_collectors_sight(tmp_path):
    """The compiled path's Syns are untracked by the garbage collector (a full table of them paused the
    capture thread for over 100 ms in its middle generation); the pure path's stay tracked."""
    pure, compiled = _pair(tmp_path)
    rng = random.Random(9)
    batch = [(1_700_000_000, i, bytes(frame(Shape(), f"10.4.0.{i}", "192.0.2.25", 42000 + i, 25, rng)))
             for i in range(20)]
    for svc in (pure, compiled):
        svc.ingest(batch, packet.LINK_ETHERNET)
    kept = {name: list(svc.hosts.connections._data.values()) for name, svc in (("pure", pure), ("compiled", compiled))}
    assert len(kept["compiled"]) == len(kept["pure"]) == 20
    assert not any(gc.is_tracked(syn) for syn in kept["compiled"])
    assert all(gc.is_tracked(syn) for syn in kept["pure"])
