"""fingerprintd against p0f 3.09b, same files, same run; results as ratios.

    make bench        (or: pytest benchmarks --benchmark-only)

Each benchmark stores its numbers in pytest-benchmark's extra_info (see
--benchmark-json) and prints a one-line summary with the ratio to p0f.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fingerprintd import accel, packet
from fingerprintd.matcher import Matcher
from fingerprintd.signatures import load

ROOT = Path(__file__).resolve().parent.parent
# p0f's own database, for both tools: with the bundled one our default mode names families p0f calls ???
# (the stack-rules fallback), and the outputs would differ by design.
DB = Path("/etc/p0f/p0f.fp") if Path("/etc/p0f/p0f.fp").exists() else ROOT / "signatures" / "p0f.fp"
COMPARED = ("mod=syn|", "mod=mtu|", "mod=syn+ack|")


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Wall and CPU seconds and peak RSS of one child process.

    The RSS comes from GNU time run as the child: wait4's ru_maxrss would
    also count the pages the child shared with this (large) process before exec.
    """
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        assert os.waitstatus_to_exitcode(status) == 0, cmd
        maxrss_kb = int(rss.read().split()[-1])
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_mb": maxrss_kb / 1024}


def run_p0f(p0f: str, pcap: Path, log: Path) -> dict:
    log.unlink(missing_ok=True)
    return timed([p0f, "-f", str(DB), "-r", str(pcap), "-o", str(log)])


def run_ours(pcap: Path, log: Path, compiled: bool = True, fmt: str = "p0f-log") -> dict:
    """One `fingerprintd replay` (the compiled accelerator, or the pure-Python path as FINGERPRINTD_NO_EXTENSIONS
    selects it)."""
    env = dict(os.environ)
    # As installed: Python keeps the modules' bytecode (a sandbox setting that turns that off would make
    # every run compile the package from source, ~0.1 s that no user pays).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if compiled:
        env.pop(accel.ENV, None)
    else:
        env[accel.ENV] = "1"
    return timed([sys.executable, "-m", "fingerprintd", "replay", "--format", fmt, "--signatures", str(DB),
                  "--progress", "off", "-o", str(log), str(pcap)], env)


def _best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["wall"])


@pytest.fixture(scope="session")
def p0f_per_syn(p0f_bin, syn_200k, tmp_path_factory) -> float:
    """p0f's CPU seconds per SYN on the 200k file (best of 3), for the micro ratios."""
    log = tmp_path_factory.mktemp("p0f") / "p0f.log"
    return _best([run_p0f(p0f_bin, syn_200k, log) for _ in range(3)])["cpu"] / 200_000


# syn_200k: cold and adversarial (every SYN its own stack, unique senders, junk options);
# syn_200k_h8k: 8,000 senders, but still a fresh stack per SYN; syn_200k_mx: 8,000 senders on 300 stacks.
@pytest.mark.parametrize("capture", ["syn_200k", "syn_200k_h8k", "syn_200k_mx"])
def test_replay_200k_vs_p0f(benchmark, request, p0f_bin, capture, tmp_path):
    """Whole-file replay, p0f-log output to a file, p0f and both our implementations on the same capture."""
    need_compiled = accel.available()
    syn_200k = request.getfixturevalue(capture)
    p0f_log, our_log, pure_log = tmp_path / "p0f.log", tmp_path / "ours.log", tmp_path / "pure.log"
    p0f_runs, our_runs, pure_runs = [], [], []

    def one_round() -> None:  # interleaved, so machine load hits all alike
        p0f_runs.append(run_p0f(p0f_bin, syn_200k, p0f_log))
        if need_compiled:
            our_runs.append(run_ours(syn_200k, our_log, compiled=True))
        pure_runs.append(run_ours(syn_200k, pure_log, compiled=False))

    benchmark.pedantic(one_round, rounds=3, iterations=1)
    p0f, pure = _best(p0f_runs), _best(pure_runs)
    ours = _best(our_runs) if our_runs else pure
    def compared(log: Path) -> list[str]:
        # The observations and mtu lines; the host records differ from p0f's in the default mode by design
        # (fingerprintd/nat.py) and are compared in tests/test_nat.py.
        return [ln for ln in log.read_text().splitlines() if ln.split("] ", 1)[1].startswith(COMPARED)]

    expected = compared(p0f_log)
    identical = compared(our_log if our_runs else pure_log) == expected
    identical_pure = compared(pure_log) == expected
    info = {
        "syns": 200_000,
        "implementation": "compiled accelerator" if our_runs else "pure Python (accelerator not built)",
        "p0f_wall_s": round(p0f["wall"], 3), "ours_wall_s": round(ours["wall"], 3),
        "pure_wall_s": round(pure["wall"], 3),
        "p0f_cpu_s": round(p0f["cpu"], 3), "ours_cpu_s": round(ours["cpu"], 3), "pure_cpu_s": round(pure["cpu"], 3),
        "p0f_syn_per_s": round(200_000 / p0f["wall"]), "ours_syn_per_s": round(200_000 / ours["wall"]),
        "speedup_wall": round(p0f["wall"] / ours["wall"], 2),
        "speedup_cpu": round(p0f["cpu"] / ours["cpu"], 2),
        "pure_speedup_wall": round(p0f["wall"] / pure["wall"], 2),
        "p0f_maxrss_mb": round(p0f["maxrss_mb"], 1), "ours_maxrss_mb": round(ours["maxrss_mb"], 1),
        "identical_output": identical, "identical_output_pure": identical_pure,
    }
    benchmark.extra_info.update(info)
    print(f"\nreplay {capture}: fingerprintd ({info['implementation']}) {info['ours_syn_per_s']}/s, "
          f"p0f -o {info['p0f_syn_per_s']}/s, ratio {info['speedup_wall']}x wall, {info['speedup_cpu']}x CPU; "
          f"pure Python {info['pure_speedup_wall']}x wall; identical output: {identical} (pure: {identical_pure})")
    assert identical and identical_pure  # a benchmark of wrong answers measures nothing


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_replay_formats_vs_p0f(benchmark, p0f_bin, syn_200k_mx, fmt, tmp_path):
    """Our other formats on the mail server's day, beside p0f writing its log (p0f has neither format: the
    ratio says what choosing one costs against p0f's only one), both implementations in the same rounds."""
    need_compiled = accel.available()
    runs: dict[str, list[dict]] = {"p0f": [], "ours": [], "pure": []}

    def one_round() -> None:
        runs["p0f"].append(run_p0f(p0f_bin, syn_200k_mx, tmp_path / "p0f.log"))
        if need_compiled:
            runs["ours"].append(run_ours(syn_200k_mx, tmp_path / "ours.out", True, fmt))
        runs["pure"].append(run_ours(syn_200k_mx, tmp_path / "pure.out", False, fmt))

    benchmark.pedantic(one_round, rounds=3, iterations=1)
    p0f, pure = _best(runs["p0f"]), _best(runs["pure"])
    ours = _best(runs["ours"]) if runs["ours"] else pure
    identical = (tmp_path / "ours.out").read_bytes() == (tmp_path / "pure.out").read_bytes() if need_compiled \
        else True
    info = {"format": fmt, "p0f_wall_s": round(p0f["wall"], 3), "ours_wall_s": round(ours["wall"], 3),
            "pure_wall_s": round(pure["wall"], 3), "speedup_wall": round(p0f["wall"] / ours["wall"], 2),
            "pure_speedup_wall": round(p0f["wall"] / pure["wall"], 2), "identical_to_pure": identical}
    benchmark.extra_info.update(info)
    print(f"\nreplay syn_200k_mx --format {fmt}: {info['speedup_wall']}x p0f -o (wall), pure Python "
          f"{info['pure_speedup_wall']}x; compiled output identical to pure: {identical}")
    assert identical


def test_memory_flat_with_file_size(benchmark, syn_50k, syn_200k, tmp_path):
    small = benchmark.pedantic(lambda: run_ours(syn_50k, tmp_path / "a.log"), rounds=1, iterations=1)
    large = run_ours(syn_200k, tmp_path / "b.log")
    benchmark.extra_info.update({"maxrss_50k_mb": round(small["maxrss_mb"], 1),
                                 "maxrss_200k_mb": round(large["maxrss_mb"], 1)})
    print(f"\npeak RSS: 50k SYNs {small['maxrss_mb']:.1f} MB, 200k SYNs {large['maxrss_mb']:.1f} MB")


def _frames(pcap: Path, n: int) -> list[bytes]:
    import pcapy

    r = pcapy.open_offline(str(pcap))
    out = []
    while len(out) < n:
        hdr, data = r.next()
        if hdr is None:
            break
        out.append(data)
    return out


def test_parse(benchmark, syn_200k, p0f_per_syn):
    frames = _frames(syn_200k, 20_000)
    parse = packet.parse

    def run() -> None:
        for f in frames:
            parse(f, 1, 0.0)

    benchmark(run)
    per = benchmark.stats.stats.median / len(frames)
    benchmark.extra_info.update({"us_per_syn": round(per * 1e6, 2),
                                 "p0f_us_per_syn_whole": round(p0f_per_syn * 1e6, 2)})
    print(f"\nparse: {per * 1e6:.2f} us/SYN (p0f's whole pipeline: {p0f_per_syn * 1e6:.2f} us/SYN)")


@pytest.mark.parametrize("impl", ["pure", "compiled"])
@pytest.mark.parametrize("cached", [False, True], ids=["cold", "cached"])
def test_match(benchmark, syn_200k, p0f_per_syn, cached, impl):
    """The matcher alone, on the first 20k SYNs of the cold capture, pure and compiled (_cmatcher): cold, one SYN
    per distinct stack with the cache cleared, so every call is a miss (us per miss); cached, every SYN a hit."""
    pkts = [p for p in (packet.parse(f, 1, 0.0) for f in _frames(syn_200k, 20_000)) if not isinstance(p, str)]
    if not cached:
        pkts = list({p.shape: p for p in pkts}.values())
    matcher = (accel.compiled().matcher.Matcher if impl == "compiled" else Matcher)(load(DB))

    def run() -> None:
        if not cached:
            matcher.cache.clear()
        fp = matcher.fingerprint
        for p in pkts:
            fp(p, True)

    run()
    benchmark(run)
    per = benchmark.stats.stats.median / len(pkts)
    benchmark.extra_info.update({"us_per_syn" if cached else "us_per_miss": round(per * 1e6, 2),
                                 "distinct_keys": len(matcher.cache),
                                 "p0f_us_per_syn_whole": round(p0f_per_syn * 1e6, 2)})
    print(f"\nmatch, {impl} ({'cached' if cached else 'cold'}): {per * 1e6:.2f} us per "
          f"{'SYN' if cached else 'miss'}, {len(matcher.cache)} distinct keys "
          f"(p0f's whole pipeline: {p0f_per_syn * 1e6:.2f} us/SYN)")
