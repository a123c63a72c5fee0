"""p0f's host records (host change, ip sharing, uptime), against the p0f 3.09b binary.

The crafted conformance set gives every SYN its own client, so only its
servers collect scores.  Here each client sends a series of SYNs the way one
host, a NAT or a host that changes would: the same stack again, another line
of the same OS, another OS, a tool, TTL and MSS changes, source ports going
back, timestamps that do or do not progress like one clock, at intervals
around p0f's limits; some connections complete, so timestamps are read from
their ACKs and FINs too.  With --p0f-bugs the log must equal p0f's line for
line; by default the two signals that today's stacks set off on one host are
not scored (fingerprintd/nat.py), and a real kernel host is never "ip sharing".
"""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fingerprintd.mode import P0F_BUGS
from fingerprintd.signatures import load
from tests.conftest import HOST_RECORDS, OUR_DB, STOCK_DB, diff_report, need, run_p0f, run_replay
from tests.craft import Shape, frame, shape_from_sig, write_pcap
from tests.netns import LISTENER, NetnsPair, can_use_netns

SERVER4, SERVER6 = "192.0.2.25", "2001:db8:25::25"
T0 = 1_700_000_000.0


class _Clock:
    """A host's TCP timestamp clock: ticks at `hz` from a random offset."""

    def __init__(self, rng: random.Random, hz: float) -> None:
        self.base = rng.randrange(1 << 32)
        self.hz = hz

    def at(self, t: float) -> int:
        return int(self.base + (t - T0) * self.hz) & 0xFFFFFFFF


def _host_series(rng: random.Random, n: int, ver: int, sigs: list, packets: list, t: float) -> float:
    """One client's SYNs (and some whole connections); returns the time after them."""
    client = f"10.9.{n >> 8 & 255}.{n & 255}" if ver == 4 else f"2001:db8:9::{n:x}"
    server = SERVER4 if ver == 4 else SERVER6
    profiles = [s for s in rng.sample(sigs, 3)]
    base = [shape_from_sig(s, rng, ver=ver) for s in profiles]
    clock = _Clock(rng, rng.choice((1000, 1000, 250, 100, 10)))
    port = rng.randrange(20000, 60000)
    for _ in range(rng.randrange(4, 16)):
        shape = base[0] if rng.random() < 0.6 else rng.choice(base)
        roll = rng.random()
        if roll < 0.1:
            shape = replace(shape, ttl=max(1, shape.ttl - rng.choice((1, 2, 3, 9))))
        elif roll < 0.2:
            shape = replace(shape, mss=rng.choice((1460, 1400, 1380, 1220)))
        t += rng.choice((0.005, 0.03, 0.05, 0.2, 1.0, 5.0, 30.0, 700.0))
        ts1 = clock.at(t) if rng.random() < 0.75 else rng.randrange(1 << 32)
        port = port + rng.randrange(1, 40) if rng.random() < 0.8 else port - rng.randrange(1, 300)
        port = min(max(port, 1025), 65535)
        shape = replace(shape, ts1=ts1)
        seq = rng.randrange(1, 1 << 32)
        packets.append((t, frame(shape, client, server, port, 25, rng, seq=seq)))
        if rng.random() < 0.35 and "ts" in shape.layout:  # a whole connection: its ACKs carry timestamps
            _connection(rng, shape, client, server, port, seq, clock, t, packets)
    return t


def _connection(rng, shape: Shape, client: str, server: str, port: int, seq: int, clock: _Clock, t: float,
                packets: list) -> None:
    from scapy.all import IP, TCP, Ether, IPv6  # type: ignore[attr-defined]

    srv_seq = rng.randrange(1, 1 << 32)
    srv_clock = _Clock(rng, 1000)
    synack = Shape(ver=shape.ver, mss=1460, win=65160, wscale=7, ts1=srv_clock.at(t), ts2=clock.at(t), synack=True,
                   quirks=frozenset({"df"} if shape.ver == 4 else ()))
    packets.append((t + 0.001, frame(synack, server, client, 25, port, rng, seq=srv_seq, ack=seq + 1)))

    def seg(src, dst, sport, dport, sq, ak, flags, tsv, tse, when, data=b""):
        ip = IP(src=src, dst=dst, ttl=shape.ttl, flags=2) if shape.ver == 4 else IPv6(src=src, dst=dst,
                                                                                        hlim=shape.ttl)
        tcp = TCP(sport=sport, dport=dport, seq=sq, ack=ak, flags=flags, window=502,
                  options=[("NOP", None), ("NOP", None), ("Timestamp", (tsv, tse))])
        # Both MACs given: scapy would otherwise resolve them on the network.
        packets.append((when, Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / tcp / data))

    cseq, sseq = seq + 1, srv_seq + 1
    t1 = t + 0.002
    seg(client, server, port, 25, cseq, sseq, "A", clock.at(t1), srv_clock.at(t), t1)
    when = t1 + rng.choice((0.01, 0.04, 0.3))
    if rng.random() < 0.5:  # the client speaks first, then hangs up
        seg(client, server, port, 25, cseq, sseq, "PA", clock.at(when), srv_clock.at(t), when, b"EHLO x\r\n")
        cseq += 8
        when += rng.choice((0.02, 0.2))
        seg(client, server, port, 25, cseq, sseq, "FA", clock.at(when), srv_clock.at(t), when)
    else:  # the server greets (p0f stops tracking there)
        seg(server, client, 25, port, sseq, cseq, "PA", srv_clock.at(when), clock.at(t1), when, b"220 x\r\n")


def nat_packets(db_path: Path, seed: int) -> list:
    db = load(db_path)
    rng = random.Random(seed)
    os_sigs = [s for s in db.request if not s.label.is_app and s.mss is not None]
    tools = [s for s in db.request if s.label.is_app and s.label.sys]
    timed: list = []
    t = T0
    for n in range(1, 120):
        ver = 4 if n % 4 else 6
        t = _host_series(rng, n, ver, [s for s in os_sigs if s.ver in (None, ver)], timed, t)
        if tools and n % 7 == 0:  # a tool from a host whose OS is on file
            client = f"10.9.{n >> 8 & 255}.{n & 255}" if ver == 4 else f"2001:db8:9::{n:x}"
            tool = rng.choice([s for s in tools if s.ver in (None, ver)] or tools)
            t += 0.5
            timed.append((t, frame(shape_from_sig(tool, rng, ver=ver), client, SERVER4 if ver == 4 else SERVER6,
                                   rng.randrange(1025, 65535), 25, rng, seq=rng.randrange(1, 1 << 32))))
    packets = []
    for when, pkt in timed:
        pkt.time = when
        packets.append(pkt)
    return packets


@pytest.fixture(scope="module", params=["stock", "ours"])
def nat_capture(request, tmp_path_factory):
    db = STOCK_DB if request.param == "stock" else OUR_DB
    need(db.exists(), f"{db} is not installed")
    path = tmp_path_factory.mktemp("nat") / "nat.pcap"
    write_pcap(path, nat_packets(db, seed=20261201))
    return db, path


def test_host_records_match_p0f(p0f_bin, nat_capture, tmp_path):
    db, pcap = nat_capture
    expected = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log", db=db)
    got = run_replay(pcap, tmp_path / "ours.log", "--all-ports", "--p0f-bugs", db=db)
    assert got == expected, diff_report(expected, got)


def test_nat_set_walks_every_path(p0f_bin, nat_capture, tmp_path):
    """The oracle's own records show the set reaches each kind and each reason."""
    db, pcap = nat_capture
    lines = [ln for ln in run_p0f(p0f_bin, pcap, tmp_path / "p0f.log", db=db) if any(m in ln for m in HOST_RECORDS)]
    kinds = {ln.split("mod=")[1].split("|")[0] for ln in lines}
    assert kinds == {"host change", "ip sharing", "uptime"}, kinds
    reasons = {w for ln in lines if "reason=" in ln for w in ln.split("reason=")[1].split("|")[0].split()}
    assert reasons >= {"os_diff", "sig_diff", "x_known", "tstamp", "ttl", "port", "mtu", "app_vs_os"}, reasons
    assert any("subj=srv" in ln for ln in lines if "mod=uptime" in ln)  # read from a server's segment


def _one_host(clock_jumps: bool, port_drops: bool, os_change: bool) -> list:
    """Twelve SYNs of one Linux host to one server, changing only what is asked."""
    rng = random.Random(5)
    linux = Shape(ttl=64, mss=1460, win=64240, wscale=7)
    windows = Shape(ttl=128, mss=1460, win=64240, wscale=8, layout=("mss", "nop", "ws", "nop", "nop", "sok"))
    out, clock, port = [], _Clock(rng, 1000), 40000
    for i in range(12):
        t = T0 + i * 2.0
        shape = windows if os_change and i % 2 else linux
        port = port - 500 if port_drops and i % 2 else port + 3
        shape = replace(shape, ts1=rng.randrange(1 << 32) if clock_jumps else clock.at(t))
        pkt = frame(shape, "10.9.0.1", SERVER4, port, 25, rng, seq=rng.randrange(1, 1 << 32))
        pkt.time = t
        out.append(pkt)
    return out


def _records(lines: list[str], kind: str) -> list[str]:
    return [ln for ln in lines if f"mod={kind}|" in ln]


def test_default_mode_ignores_timestamp_jumps_and_port_drops(p0f_bin, tmp_path):
    pcap = tmp_path / "one.pcap"
    write_pcap(pcap, _one_host(clock_jumps=True, port_drops=True, os_change=False))
    p0f = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log")
    assert _records(p0f, "ip sharing")  # p0f: one host whose timestamps jump looks shared
    assert "tstamp" in " ".join(p0f) and "port" in " ".join(p0f)
    assert run_replay(pcap, tmp_path / "bugs.log", "--p0f-bugs") == p0f
    ours = run_replay(pcap, tmp_path / "ours.log")
    assert not _records(ours, "ip sharing")
    assert all("tstamp" not in ln and "port" not in ln.split("reason=")[-1] for ln in _records(ours, "host change"))


def test_default_mode_keeps_the_real_signals(p0f_bin, tmp_path):
    """Another OS from one address is still a host change, then ip sharing, in both modes."""
    pcap = tmp_path / "two.pcap"
    write_pcap(pcap, _one_host(clock_jumps=False, port_drops=False, os_change=True))
    p0f = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log")
    ours = run_replay(pcap, tmp_path / "ours.log")
    for lines in (p0f, ours):
        assert "reason=os_diff" in " ".join(_records(lines, "host change"))
        assert _records(lines, "ip sharing")


def test_one_real_kernel_host_is_not_shared(p0f_bin, tmp_path):
    """One real Linux host connecting to two MX addresses in turn: the kernel picks each
    connection's port from a per-destination offset and its timestamp offset per
    connection, so p0f calls the host shared; by default it is neither shared nor
    changed.  --p0f-bugs still equals p0f."""
    ok, why = can_use_netns()
    need(ok, why)
    pcap = tmp_path / "kernel.pcap"
    with NetnsPair(net=79) as pair:
        pair.start_listener()
        second4, second6 = "10.79.0.3", "fd00:79::3"
        pair.ns(pair.srv, "ip", "addr", "add", f"{second4}/24", "dev", pair.vsrv)
        pair.ns(pair.srv, "ip", "-6", "addr", "add", f"{second6}/64", "dev", pair.vsrv, "nodad")
        listener = subprocess.Popen(["ip", "netns", "exec", pair.srv, sys.executable, "-c", LISTENER, second4,
                                     second6], stdout=subprocess.PIPE, text=True)
        pair.procs.append(listener)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        cap = pair.capture(pcap)
        try:
            for _ in range(15):
                for server in (pair.server4, second4, pair.server6, second6):
                    pair.connect(server, count=2)  # the kernel picks the ports
        finally:
            pair.stop_capture(cap)
    p0f = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log")
    assert _records(p0f, "ip sharing")  # p0f's heuristics misfire on this one host
    assert run_replay(pcap, tmp_path / "bugs.log", "--p0f-bugs") == p0f
    ours = run_replay(pcap, tmp_path / "ours.log")
    assert len(_records(ours, "syn")) == 120
    assert not _records(ours, "ip sharing") and not _records(ours, "host change"), \
        "\n".join(_records(ours, "ip sharing") + _records(ours, "host change"))


def _uptime_minutes(text: str) -> int:
    days, _, hrs, _, mins = text.split()[:5]
    return (int(days) * 24 + int(hrs)) * 60 + int(mins)


def test_the_service_path_keeps_the_records_for_the_p0f_api_and_grpc(p0f_bin, tmp_path):
    """Live, the service's books (RecentSyns) score each SYN like p0f; the host table keeps the
    time of the last host change / ip sharing record and the last uptime, and the p0f API answer
    (last_chg, last_nat, uptime_min, up_mod_days) and gRPC's Host report them.  The oracle is
    p0f's own log of the same capture: the record times and the uptime it printed."""
    from fingerprintd import compat
    from fingerprintd.classes import bundled_classes
    from fingerprintd.engine import Engine
    from fingerprintd.flows import RecentSyns
    from fingerprintd.hosts import HostTable
    from fingerprintd.matcher import Matcher
    from fingerprintd.server import host_pb

    rng = random.Random(11)
    linux = Shape(ttl=64, mss=1460, win=29200, wscale=7)  # p0f's "Linux 3.11 and newer"
    windows = Shape(ttl=128, mss=1460, win=8192, wscale=8, layout=("mss", "nop", "ws", "nop", "nop", "sok"))
    clock = _Clock(rng, 1000)
    plan = [(linux, 0.0), (linux, 2.0), (windows, 4.0), (linux, 6.0), (windows, 8.0), (linux, 10.0),
            (windows, 12.0), (linux, 14.0), (linux, 20.0)]
    packets = []
    for i, (shape, dt) in enumerate(plan):
        pkt = frame(replace(shape, ts1=clock.at(T0 + dt)), "10.9.0.7", SERVER4, 40000 + i, 25, rng,
                    seq=rng.randrange(1, 1 << 32))
        pkt.time = T0 + dt
        packets.append(pkt)
    pcap = tmp_path / "host.pcap"
    write_pcap(pcap, packets)
    p0f = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log")
    changes = _records(p0f, "host change")
    sharing = _records(p0f, "ip sharing")
    uptimes = _records(p0f, "uptime")
    assert changes and sharing and uptimes, p0f  # the oracle set all three off

    def service_engine() -> Engine:
        return Engine(Matcher(load(STOCK_DB, P0F_BUGS), classes=bundled_classes()), flows=RecentSyns())

    engine = service_engine()
    table = HostTable()
    for pkt in packets:
        t = float(pkt.time)
        for obs in engine.feed_batch([(int(t), round(t % 1 * 1e6), bytes(pkt))], 1):
            table.add(obs)

    def stamp(line: str) -> int:  # the time of a p0f log line, in the log's local time
        import time

        return int(time.mktime(time.strptime(line[1:20], "%Y/%m/%d %H:%M:%S")))

    answer = compat._RESPONSE.unpack(compat.p0f_answer(
        compat._QUERY.pack(compat.QUERY_MAGIC, 4, bytes([10, 9, 0, 7]) + bytes(12)), table))
    uptime_min, up_mod_days, last_nat, last_chg = answer[5:9]
    assert last_chg == stamp(changes[-1]) and last_nat == stamp(sharing[-1])
    want_up = uptimes[-1].split("uptime=")[1].split("|")[0]
    assert uptime_min == _uptime_minutes(want_up) and up_mod_days == int(want_up.split("modulo ")[1].split()[0])
    _, host = table.lookup(bytes([10, 9, 0, 7]), 0)
    msg = host_pb(host)
    assert int(msg.last_host_change) == last_chg and int(msg.last_ip_sharing) == last_nat
    assert msg.uptime_minutes == uptime_min
    # The records are policy conditions: a rule on ip_sharing fires for this address only.
    from fingerprintd.policy import parse_policy

    policy = parse_policy('[[rule]]\nname = "shared"\nip_sharing = true\nscore = 0.7\n'
                          '[[rule]]\nname = "changed"\nhost_change = true\nscore = 0.2\n'
                          '[[rule]]\nname = "steady"\nhost_change = false\nscore = -0.1\n')
    fp = host.latest.fp
    assert policy.verdict(fp, bytes([10, 9, 0, 7]), host=host).rules == ("shared", "changed")
    other = HostTable()
    other.add(service_engine().feed_batch([(int(T0), 0, bytes(packets[0]))], 1)[0])  # one SYN, no records
    _, quiet = other.lookup(bytes([10, 9, 0, 7]), 0)
    assert policy.verdict(fp, bytes([10, 9, 0, 7]), host=quiet).rules == ("steady",)
    assert policy.verdict(fp, bytes([10, 9, 0, 7])).rules == ()  # no host record: the conditions are unknown


def test_host_conditions_must_be_booleans():
    from fingerprintd.policy import PolicyError, parse_policy
    from tests.conftest import assert_fails_at

    assert_fails_at(lambda: parse_policy('[[rule]]\nname = "x"\nip_sharing = "yes"\n', "p.toml"), PolicyError,
                    "p.toml", 3, "ip_sharing must be true or false")
