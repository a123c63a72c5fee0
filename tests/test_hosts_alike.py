"""The compiled host table (fingerprintd/_chosts, compiled from hosts.py by setup.py) against the pure one.

Random batches of SYNs (a few sources and ports, IPv4 and IPv6, OS matches, tools and unknown stacks,
host-change and uptime records) go into both at small bounds while their shared clock moves on: after
every batch both must answer every lookup, host read and counter alike, and call their arrival hooks
with the same SYNs.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fingerprintd import accel
from fingerprintd.classes import bundled_classes
from fingerprintd.engine import Engine
from fingerprintd.hosts import HostTable
from fingerprintd.matcher import Matcher
from fingerprintd.nat import NatRecord, Uptime
from fingerprintd.signatures import load
from tests.alike import host_fields, syn_fields
from tests.conftest import OUR_DB, need
from tests.craft import STACKS, frame

STACK_NAMES = ("linux", "win7", "nmap", "unknown")
SOURCES = [bytes([198, 51, 100, i]) for i in range(5)] + [bytes(15) + bytes([i]) for i in range(1, 4)]
RECORDS = (None, NatRecord("host change", "ttl tcp", (1, 0, 0, 0)), NatRecord("ip sharing", "ttl", (0, 1, 0, 0)))


def _bases() -> dict:
    import random

    rng = random.Random(3)
    engine = Engine(Matcher(load(OUR_DB), classes=bundled_classes()))
    out = {}
    for i, name in enumerate(STACK_NAMES):
        obs = engine.feed(bytes(frame(STACKS[name], "203.0.113.7", "192.0.2.25", 40000 + i, 25, rng)), 1,
                          1_700_000_000)
        assert obs is not None, name
        out[name] = obs
    return out


BASES = _bases()

syn = st.tuples(st.sampled_from(STACK_NAMES), st.integers(0, len(SOURCES) - 1), st.integers(1, 4),
                st.integers(0, len(RECORDS) - 1), st.booleans())
batches = st.lists(st.tuples(st.lists(syn, max_size=12), st.sampled_from([0.0, 0.01, 0.5, 3.0, 11.0])),
                   min_size=1, max_size=12)


def _observation(name: str, src: int, port: int, record: int, uptime: bool, ts: float):
    base = BASES[name]
    ip = SOURCES[src]
    pkt = base.pkt._replace(src=ip, sport=40000 + port, ts=ts, ip_ver=6 if len(ip) == 16 else 4,
                            dst=base.pkt.dst if len(ip) == 4 else bytes(15) + b"\x19")
    return base._replace(pkt=pkt, nat=RECORDS[record], uptime=Uptime(int(ts) % 1000, 49, 100.0) if uptime else None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_compiled_host_table_answers_like_the_pure_one(plan):
    need(accel.available(), "the compiled accelerator is not built (pip install -e . builds it; see setup.py)")
    now = [100.0]
    pure = HostTable(max_connections=6, max_hosts=4, ttl=10.0, timer=lambda: now[0])
    compiled = accel.compiled().hosts.HostTable(max_connections=6, max_hosts=4, ttl=10.0, timer=lambda: now[0])
    assert type(compiled) is not HostTable  # really the compiled class
    arrived_pure: list = []
    arrived_compiled: list = []
    pure.arrival_hooks = (lambda syns: arrived_pure.extend((s.src, s.sport) for s in syns),)
    compiled.arrival_hooks = (lambda syns: arrived_compiled.extend((s.src, s.sport) for s in syns),)
    ts = 1_700_000_000.0
    for syns, step in plan:
        now[0] += step
        ts += step
        batch = [_observation(*s, ts=ts + k * 0.001) for k, s in enumerate(syns)]
        for table in (pure, compiled):
            table.add_batch(batch)
        assert arrived_pure == arrived_compiled
        for ip in SOURCES:
            assert host_fields(pure.host(ip)) == host_fields(compiled.host(ip))
            for port in range(5):
                got_pure, host_pure = pure.lookup(ip, 40000 + port if port else 0)
                got_compiled, host_compiled = compiled.lookup(ip, 40000 + port if port else 0)
                assert syn_fields(got_pure) == syn_fields(got_compiled), (ip, port)
                assert host_fields(host_pure) == host_fields(host_compiled), (ip, port)
        assert pure.sizes() == compiled.sizes()
        assert (pure.added, pure.lookups, pure.hits) == (compiled.added, compiled.lookups, compiled.hits)
