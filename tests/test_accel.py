"""The compiled accelerator against the pure-Python reference: same batches in, same everything out.

Both implementations get the same frames - real captures, crafted host series, and random and mutated
batches from hypothesis - and must give equal observations (every field, host records included), equal
counters, the same match-cache counts and the same output bytes in every format.  The pure-Python modules
are the oracle: they are what the rest of the suite checks against p0f itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fingerprintd import accel, capture, engine, packet, report
from fingerprintd.matcher import Matcher
from fingerprintd.mode import FIXED, P0F_BUGS
from fingerprintd.signatures import load
from tests.alike import SEEDS, batches, frames, host_series, read_batches
from tests.conftest import CORPUS, OUR_DB, ROOT, STOCK_DB, need
from tests.craft import write_pcap

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
                blob, meta = engine.join_batch(batch)
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
        into(*engine.join_batch(batch), linktype, lambda view: chunks.append(bytes(view)))  # noqa: B023 - called at once
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


CORPUS_FILES = sorted((CORPUS / "pcaps").glob("*")) if (CORPUS / "pcaps").exists() else []


@pytest.mark.parametrize("mode", [FIXED, P0F_BUGS], ids=["default", "p0f-bugs"])
def test_every_corpus_capture_alike(mode):
    """The shared corpus (91 real captures: mail, web, scans, NAT, VLANs, IPv6) through both, every port."""
    need(bool(CORPUS_FILES), f"the shared corpus is missing ({CORPUS})")
    db = load(STOCK_DB if STOCK_DB.exists() else OUR_DB, mode)
    fingerprinted = 0
    for path in CORPUS_FILES:
        try:
            batches, linktype = read_batches(path)
        except capture.CaptureError:
            continue  # a file libpcap cannot read is no test of either path
        for blobs in (False, True):
            pure, compiled = run_both(batches, linktype, db, blobs=blobs)
            assert_same(pure, compiled)
        fingerprinted += sum(pure[1]["fingerprinted"].values())
    assert fingerprinted > 1000  # the corpus did reach the matcher


def test_host_series_alike(tmp_path):
    """Crafted per-host series reaching host change, ip sharing and uptime (from SYNs and from ACKs)."""
    for db_path in (OUR_DB, STOCK_DB):
        if not db_path.exists():
            continue
        path = tmp_path / "hosts.pcap"
        write_pcap(path, host_series(db_path, seed=20261201))
        batches, linktype = read_batches(path)
        for mode in (FIXED, P0F_BUGS):
            pure, compiled = run_both(batches, linktype, load(db_path, mode), ports=(25,))
            assert_same(pure, compiled)
            records = pure[1]["records"]
            assert records.get("host change") and records.get("ip sharing") and records.get("uptime"), records


# --- random and mutated batches --------------------------------------------------------------------------

_DBS = {mode: load(OUR_DB, mode) for mode in (FIXED, P0F_BUGS)}


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
    for seed in SEEDS:
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
