"""The compiled accelerator against the pure-Python reference: same batches in, same everything out.

Both implementations get the same frames - real captures, crafted host series, and random and mutated
batches from hypothesis - and must give equal observations (every field, host records included), equal
counters, the same match-cache counts and the same output bytes in every format.  The pure-Python modules
are the oracle: they are what the rest of the suite checks against p0f itself.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import TCP  # type: ignore[attr-defined]

from fingerprintd import accel, capture, engine, packet, report
from fingerprintd.matcher import Matcher
from fingerprintd.mode import FIXED, P0F_BUGS
from fingerprintd.signatures import load
from tests.conftest import CORPUS, OUR_DB, ROOT, STOCK_DB, need
from tests.craft import Shape, frame, shape_from_sig, write_pcap

FORMATS = ("p0f-log", "jsonl", "text")


@pytest.fixture(autouse=True, scope="module")
def _built():
    need(accel.available(), "the compiled accelerator is not built (pip install -e . builds it; see setup.py)")


def _engine(compiled: bool, db, ports, live: bool = False) -> engine.Engine:
    """An engine in the mode `db` was read in (the only mode it can have)."""
    with accel.selected(compiled):
        flows = engine.live_books() if live else None
        return engine.Engine(Matcher(db), ports=ports, flows=flows, host_records=not live)


def _formatters(compiled: bool) -> dict:
    with accel.selected(compiled):
        return {name: report.FORMATTERS[name]() for name in FORMATS}


def run_both(batches, linktype: int, db, ports=None, live: bool = False, blobs: bool = False) -> tuple:
    """Feed the same batches to both, in `db`'s mode; (observations, summary, output) per implementation."""
    results = []
    for compiled in (False, True):
        eng = _engine(compiled, db, ports, live)
        fmts = _formatters(compiled)
        observations, text = [], {name: [] for name in FORMATS}
        for batch in batches:
            if blobs:
                blob, meta = _as_blob(batch)
                got = eng.feed_blob(blob, meta, linktype)
            else:
                got = eng.feed_batch(batch, linktype)
            observations.extend(got)
            for name, fmt in fmts.items():
                text[name].append(report.join_lines(fmt)(got))
        out = {k: "".join(v).encode() for k, v in text.items()}
        if not live:
            out.update(_replayed(compiled, batches, linktype, db, ports))
        results.append((observations, eng.summary(), out))
    return results[0], results[1]


REPLAYED = tuple(f"replay {name}" for name in FORMATS)


def _written(into, batches, linktype: int) -> bytes:
    """What a replayer hands its `write`, batch after batch (a view lives only during its call)."""
    chunks: list[bytes] = []
    for batch in batches:
        into(*_as_blob(batch), linktype, lambda view: chunks.append(bytes(view)))  # noqa: B023 - called at once
    return b"".join(chunks)


def _replayed(compiled: bool, batches, linktype: int, db, ports) -> dict:
    """`replay`'s own loop (report.replayer: C structs when compiled) in each format, each on a fresh
    engine: its bytes, and its engine's counters."""
    out = {}
    for name in FORMATS:
        eng = _engine(compiled, db, ports)
        with accel.selected(compiled):
            into = report.replayer(eng, name)
        out[f"replay {name}"] = _written(into, batches, linktype)
        out[f"replay {name} summary"] = json.dumps(eng.summary(), sort_keys=True).encode()
    return out


def _as_blob(batch) -> tuple[bytes, bytes]:
    """A batch as pcapy's next_batch hands it over: one buffer, and (sec, usec, offset, caplen) records."""
    blob, meta = bytearray(), bytearray()
    for sec, usec, data in batch:
        meta += engine.BATCH_META.pack(sec, usec, len(blob), len(data))
        blob += data
    return bytes(blob), bytes(meta)


def assert_same(pure, compiled) -> None:
    (p_obs, p_sum, p_out), (c_obs, c_sum, c_out) = pure, compiled
    assert len(c_obs) == len(p_obs)
    for a, b in zip(p_obs, c_obs, strict=True):
        assert b == a  # tuples: every field of the observation, its packet, fingerprint and records
        assert type(b) is type(a) and type(b.pkt) is type(a.pkt)
    assert c_sum == p_sum
    for name in FORMATS:
        assert c_out[name] == p_out[name], name
    assert c_out.keys() == p_out.keys()
    for name in c_out:
        assert c_out[name] == p_out[name], name
    for name in FORMATS:  # the replay loop is fed as the engine is, so it writes what the formatter does
        if f"replay {name}" in p_out:
            assert p_out[f"replay {name}"] == p_out[name]


def _read(path: Path) -> tuple[list, int]:
    cap = capture.open_offline(str(path), None)
    return list(cap.batches()), cap.linktype


CORPUS_FILES = sorted((CORPUS / "pcaps").glob("*")) if (CORPUS / "pcaps").exists() else []


@pytest.mark.parametrize("mode", [FIXED, P0F_BUGS], ids=["default", "p0f-bugs"])
def test_every_corpus_capture_alike(mode):
    """The shared corpus (91 real captures: mail, web, scans, NAT, VLANs, IPv6) through both, every port."""
    need(bool(CORPUS_FILES), f"the shared corpus is missing ({CORPUS})")
    db = load(STOCK_DB if STOCK_DB.exists() else OUR_DB, mode)
    fingerprinted = 0
    for path in CORPUS_FILES:
        try:
            batches, linktype = _read(path)
        except capture.CaptureError:
            continue  # a file libpcap cannot read is no test of either path
        for blobs in (False, True):
            pure, compiled = run_both(batches, linktype, db, blobs=blobs)
            assert_same(pure, compiled)
        fingerprinted += sum(pure[1]["fingerprinted"].values())
    assert fingerprinted > 1000  # the corpus did reach the matcher


def _host_series(db_path: Path, seed: int) -> list:
    """Per-host SYN series that set off host change, ip sharing and uptime records: each client switches
    between a few of the database's stacks, shifts its TTL and MSS, and stamps its SYNs from one clock
    (sometimes from no clock at all), with whole connections (SYN+ACK, ACKs with timestamps) now and then."""
    db = load(db_path)
    rng = random.Random(seed)
    sigs = [sig for sig in db.request if not sig.label.is_app and sig.mss is not None and sig.ver in (None, 4)]
    packets, t = [], 1_700_000_000.0
    for n in range(80):
        client = f"10.9.{n >> 8}.{n & 255}"
        base = [shape_from_sig(sig, rng, ver=4) for sig in rng.sample(sigs, 3)]
        hz = rng.choice((1000, 250, 100))
        port = rng.randrange(20000, 60000)
        for _ in range(rng.randrange(4, 16)):
            shape = base[0] if rng.random() < 0.6 else rng.choice(base)
            if rng.random() < 0.2:
                shape = replace(shape, ttl=max(1, shape.ttl - rng.choice((1, 2, 9))), mss=rng.choice((1460, 1380)))
            t += rng.choice((0.005, 0.05, 1.0, 30.0, 700.0))
            ts1 = int(t * hz) & 0xFFFFFFFF if rng.random() < 0.8 else rng.randrange(1 << 32)
            shape = replace(shape, ts1=ts1)
            port = min(max(port + rng.randrange(-50, 40), 1025), 65535)
            seq = rng.randrange(1, 1 << 32)
            syn = frame(shape, client, "192.0.2.25", port, 25, rng, seq=seq)
            syn.time = t
            packets.append(syn)
            if rng.random() < 0.3:  # the connection: SYN+ACK, then the client's ACK with a later timestamp
                synack = frame(replace(shape, synack=True, ts1=rng.randrange(1 << 32)), "192.0.2.25", client, 25,
                               port, rng, seq=rng.randrange(1, 1 << 32), ack=seq + 1)
                synack.time = t + 0.001
                ack = frame(replace(shape, ts1=(ts1 + hz) & 0xFFFFFFFF), client, "192.0.2.25", port, 25, rng,
                            seq=seq + 1, ack=synack[TCP].seq + 1)
                ack[TCP].flags = "A"
                ack.time = t + 1.0
                packets += [synack, ack]
    packets.sort(key=lambda p: p.time)
    return packets


def test_host_series_alike(tmp_path):
    """Crafted per-host series reaching host change, ip sharing and uptime (from SYNs and from ACKs)."""
    for db_path in (OUR_DB, STOCK_DB):
        if not db_path.exists():
            continue
        path = tmp_path / "hosts.pcap"
        write_pcap(path, _host_series(db_path, seed=20261201))
        batches, linktype = _read(path)
        for mode in (FIXED, P0F_BUGS):
            pure, compiled = run_both(batches, linktype, load(db_path, mode), ports=(25,))
            assert_same(pure, compiled)
            records = pure[1]["records"]
            assert records.get("host change") and records.get("ip sharing") and records.get("uptime"), records


# --- random and mutated batches --------------------------------------------------------------------------

_RNG = random.Random(14)
_DBS = {mode: load(OUR_DB, mode) for mode in (FIXED, P0F_BUGS)}
_SHAPES = [Shape(), Shape(ver=6, quirks=frozenset()), Shape(ttl=117, mss=1440, win=64240, wscale=8,
           layout=("mss", "nop", "ws", "nop", "nop", "sok"), ts1=0), Shape(synack=True),
           Shape(extra={"vlans": (7,)}), Shape(payload=b"GET / HTTP/1.0\r\n")]
_CLIENTS = ["10.1.0.1", "10.1.0.2", "2001:db8::7"]


def _seed_frames() -> list[bytes]:
    out = []
    for shape in _SHAPES:
        for client in _CLIENTS:
            if (":" in client) != (shape.ver == 6):
                continue
            server = "192.0.2.25" if shape.ver == 4 else "2001:db8::25"
            kw = {"vlans": shape.extra["vlans"]} if "vlans" in shape.extra else {}
            out.append(bytes(frame(shape, client, server, 40000, 25, _RNG, seq=1000, **kw)))
    # The same connections' ACK, FIN and RST (flow books, uptime from any packet of a tracked flow).
    for i, flags in enumerate((0x10, 0x11, 0x04, 0x18)):
        data = bytearray(out[i % 2])
        tcp = 14 + (data[14] & 0x0F) * 4 if data[12:14] == b"\x08\x00" else 54
        data[tcp + 13] = flags
        struct.pack_into("!I", data, tcp + 4, 1001)
        out.append(bytes(data))
    return out


_SEEDS = _seed_frames()


@st.composite
def frames(draw):
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "grow", "seq", "port"]))
        if op == "flip":
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif op == "set":
            # Option kinds and lengths, the window scale's limit, flag bytes, IP version nibbles.
            data[draw(st.integers(0, len(data) - 1))] = draw(st.sampled_from(
                [0, 1, 2, 3, 4, 5, 8, 10, 14, 15, 0x12, 0x40, 0x45, 0x60, 0xFF]))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "grow":
            data += draw(st.binary(max_size=32))
        elif op in ("seq", "port") and len(data) > 60:
            tcp = 34 if data[12:14] == b"\x08\x00" and data[14] == 0x45 else 54
            at = tcp + 4 if op == "seq" else tcp
            struct.pack_into("!H", data, at, draw(st.integers(0, 3)))
        if not data:
            break
    return bytes(data)


@st.composite
def batches(draw):
    # Capture times from the epoch (JSON writes times under 1 s in exponent form) to near pcap's 32-bit end,
    # microseconds of every size the metadata can carry.
    t = draw(st.sampled_from([0, 1_700_000_000, 4_290_000_000]))
    usecs = st.one_of(st.integers(0, 999_999), st.sampled_from([0, 12, 1_000_000, 4_294_967_295]))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for data in draw(st.lists(st.one_of(frames(), st.binary(max_size=120)), max_size=40)):
            t += draw(st.sampled_from([0, 0, 0, 1, 31, 7300]))
            batch.append((t, draw(usecs), data))
        out.append(batch)
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.sampled_from([packet.LINK_ETHERNET, packet.LINK_RAW, packet.LINK_LINUX_SLL2,
                                   packet.LINK_NULL, 147]),
       st.sampled_from([FIXED, P0F_BUGS]), st.sampled_from([None, (25,)]), st.booleans(), st.booleans())
def test_random_and_mutated_batches_alike(bs, linktype, mode, ports, live, blobs):
    if linktype == packet.LINK_RAW:  # the same frames without their Ethernet header
        bs = [[(s, u, f[14:]) for s, u, f in b] for b in bs]
    pure, compiled = run_both(bs, linktype, _DBS[mode], ports, live=live, blobs=blobs)
    assert_same(pure, compiled)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(frames(), st.binary(max_size=300)), st.sampled_from([1, 0, 12, 101, 108, 113, 228, 229, 276, 147]),
       st.sampled_from([FIXED, P0F_BUGS]))
def test_parse_alike(data, linktype, mode):
    """The parser alone, on mutated frames and any bytes at all: the same Packet or the same skip reason."""
    want = packet.parse(data, linktype, 12.5, mode)
    got = accel.compiled().speedups.parse(data, linktype, 12.5, mode)
    assert got == want and type(got) is type(want)


def test_parse_alike_on_every_single_byte_change():
    """Each seed frame with each of its bytes set to each of the 256 values, read with each link type that
    can carry it, both modes: the same Packet or the same skip reason (every branch a byte can reach)."""
    fast = accel.compiled().speedups.parse
    checked = 0
    for seed in _SEEDS:
        raw = seed[14:] if seed[12:14] in (b"\x08\x00", b"\x86\xdd") else None
        for data, linktype in ((seed, packet.LINK_ETHERNET), (raw, packet.LINK_RAW)):
            if data is None:
                continue
            buf = bytearray(data)
            for pos in range(min(len(buf), 120)):
                keep = buf[pos]
                for value in range(256):
                    buf[pos] = value
                    frame_ = bytes(buf)
                    for mode in (FIXED, P0F_BUGS):
                        want = packet.parse(frame_, linktype, 3.0, mode)
                        assert fast(frame_, linktype, 3.0, mode) == want, (frame_.hex(), linktype, mode)
                        checked += 1
                buf[pos] = keep
    assert checked > 500_000


# --- the boundary: one p0f mode for every stage ---------------------------------------------------------

def test_every_stage_follows_the_database_mode():
    """The mode is read in with the signatures and nowhere else: the matcher takes it from the database, the
    engine from the matcher, the compiled loops read the engine's bools derived from it; neither the matcher
    nor the engine accepts a mode (or a bool) of its own."""
    for mode in (FIXED, P0F_BUGS):
        bugs = mode is P0F_BUGS
        db = load(OUR_DB, mode)
        for compiled in (False, True):
            with accel.selected(compiled):
                eng = engine.build_engine(db)
            assert db.mode is eng.matcher.mode is eng.mode is mode
            assert (eng.p0f_bugs, eng.nat_exact) == (bugs, bugs)
            assert eng.matcher.flow_twin is not bugs and (eng.matcher.fallback is None) is bugs
    for make in (lambda: Matcher(db, p0f_bugs=False), lambda: engine.Engine(Matcher(db), p0f_bugs=False)):
        with pytest.raises(TypeError):
            make()
    with pytest.raises(AttributeError):
        eng.p0f_bugs = False  # derived from the mode, not a switch of its own


# --- selection -------------------------------------------------------------------------------------------

def _version(env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "fingerprintd", "--version"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_version_names_the_implementation():
    assert _version({}).endswith("(compiled accelerator)")
    assert _version({accel.ENV: "1"}).endswith("(pure Python)")


def test_environment_variable_forces_pure_python():
    code = "from fingerprintd import accel, engine; print(accel.ACCEL is None, engine.live_books().__module__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, accel.ENV: "1"}, cwd=ROOT)
    assert proc.stdout.split() == ["True", "fingerprintd.flows"], proc.stderr


def test_a_stale_build_is_not_used(tmp_path):
    """A compiled copy older than its source (flows.py edited since the build) falls back to pure Python."""
    mod = accel.compiled().flows
    assert accel._stale(mod, "flows.py") is False
    saved = mod.__source_sha256__
    try:
        mod.__source_sha256__ = "0" * 64
        assert accel._load(warn=False) is None
    finally:
        mod.__source_sha256__ = saved
    assert accel._load(warn=False) is not None
