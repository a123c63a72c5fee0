"""Loading large signature databases: near-linear, beside p0f 3.09b and the floor of reading the file.

    .venv/bin/pytest -s benchmarks/test_load.py

The bundled database plus 20k, 50k and 200k generated lines (tests/bigdb.py:
valid, none covered by another).  For each: `fingerprintd signatures check`
(a process: start-up, parse, p0f's "already covered" check, the never-wins
report), the service's start-up load (parse and Matcher, in-process), p0f
loading the same file (`p0f -f FILE -r one.pcap`; its own registration check
compares every pair), and the floor: reading the file and splitting its
lines.  Reported: seconds, and the growth from 20k to 200k lines (10 is
linear, 100 quadratic), in CPU seconds (the machine may be shared: wall
seconds are printed beside).  Goal (issue 10): 200k lines load in < 10 s.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from scapy.all import IP, UDP, Ether  # type: ignore[attr-defined]

from fingerprintd.data import default_signatures
from fingerprintd.matcher import Matcher
from fingerprintd.signatures import load
from tests import bigdb
from tests.craft import write_pcap

SIZES = (20_000, 50_000, 200_000)


def _cpu(cmd: list[str]) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, output) of a child: CPU is what other load on the machine leaves alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu, wall, out.stdout + out.stderr


def test_load_large_databases(benchmark, p0f_bin, tmp_path):
    one = tmp_path / "one.pcap"
    write_pcap(one, [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(dst="192.0.2.1") / UDP()])
    base = Path(default_signatures()).read_text()
    rows = {}

    def run_all() -> None:
        for n in SIZES:
            path = tmp_path / f"big{n}.fp"
            path.write_text(base + "\n[tcp:request]\n" + "".join(bigdb.lines(n)))
            t0 = time.process_time()
            lines = path.read_text().split("\n")
            floor = time.process_time() - t0
            t0, w0 = time.process_time(), time.perf_counter()
            db = load(path)
            Matcher(db)
            serve, serve_wall = time.process_time() - t0, time.perf_counter() - w0
            check, check_wall, check_out = _cpu([sys.executable, "-m", "fingerprintd", "signatures", "check",
                                                 str(path)])
            p0f, p0f_wall, p0f_out = _cpu([p0f_bin, "-f", str(path), "-r", str(one)])
            ours_n = int(re.search(r"OK, (\d+) signatures", check_out).group(1))  # type: ignore[union-attr]
            theirs_n = int(re.search(r"Loaded (\d+) signatures", p0f_out).group(1))  # type: ignore[union-attr]
            assert ours_n == theirs_n == db.sig_count, (check_out[-500:], p0f_out[-500:])
            rows[n] = {"lines": len(lines), "floor_s": floor, "serve_load_s": serve, "check_s": check, "p0f_s": p0f,
                       "serve_load_wall_s": serve_wall, "check_wall_s": check_wall, "p0f_wall_s": p0f_wall}

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    lo, hi = rows[SIZES[0]], rows[SIZES[-1]]
    print()
    for n, r in rows.items():
        print(f"{n:>7} extra lines, CPU s (wall): signatures check {r['check_s']:.2f} ({r['check_wall_s']:.2f}), "
              f"serve's load {r['serve_load_s']:.2f} ({r['serve_load_wall_s']:.2f}), "
              f"p0f {r['p0f_s']:.2f} ({r['p0f_wall_s']:.2f}), read+split {r['floor_s'] * 1e3:.0f} ms")
        benchmark.extra_info[str(n)] = {k: round(v, 3) for k, v in r.items()}
    growth = {k: round(hi[k] / max(lo[k], 1e-3), 1) for k in ("check_s", "serve_load_s", "p0f_s", "floor_s")}
    benchmark.extra_info["growth_20k_to_200k"] = growth
    print(f"growth 20k -> 200k lines in CPU time (10 = linear; check includes ~0.3 s of start-up): {growth}")
