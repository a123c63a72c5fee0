"""The scoring scenarios and the learning curves, as tables: `python -m benchmarks.scoring`.

* Scenario table: each row of tests/scenarios.py (a SYN built to a labeled line
  of the bundled signatures, the names Postfix would pass) through the real
  service's gRPC API, the policy service's decider and the milter, with the
  bundled policy; what each filter's header says.
* Learning curves: streams with known spam ratios per bucket (real SYN shapes,
  a fresh client address per message) into a fresh reputation file; the
  adjustment after n messages, beside its limit MAX_ADJUSTMENT * (2p - 1);
  then what floods from one source do.

`--kernel` (root) adds real Linux-kernel SYNs from a network namespace at MTU 1500 and 1280.
"""

from __future__ import annotations

import argparse
import random
import socket
import tempfile
import time
from pathlib import Path

from fingerprintd.learn import verdict_fields
from fingerprintd.policy import load_policy
from fingerprintd.reputation import MAX_ADJUSTMENT, Reputation, SqliteStore
from tests.conftest import ROOT
from tests.scenarios import (
    KERNEL_PORTS,
    KERNEL_ROWS,
    ROWS,
    STREAMS,
    Api,
    Row,
    kernel_syns,
    public_address,
    simulate,
    syn,
    through_filters,
)

POINTS = (10, 20, 21, 30, 50, 100, 200, 400)


def scenario_table(kernel: bool) -> list[str]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        api = Api(Path(tmp))
        try:
            rows: list[tuple[Row, int]] = []
            for i, row in enumerate(ROWS):
                port = 42000 + i
                api.service.ingest([syn(row, port, random.Random(row.name), int(time.time()))], 1)
                rows.append((row, port))
            if kernel:
                syns = kernel_syns(Path(tmp))
                api.service.ingest([syns[p] for p in KERNEL_PORTS], 1)
                rows += list(zip(KERNEL_ROWS, KERNEL_PORTS, strict=True))
            out.append(f"{'sender':<40} {'stack':<26} {'client_name / helo':<58} {'want':<5} "
                       f"{'policyd':>7} {'milter':>7}  rules")
            failed = 0
            for row, port in rows:
                prepended, added = through_filters(api, row, port)
                obs, _ = api.service.hosts.lookup(socket.inet_aton(row.ip), port, 0)
                scores = [verdict_fields(v)["score"] if v else "-" for v in (prepended, added)]
                rules = verdict_fields(prepended)["rules"] if prepended else "(no header)"
                ok = row.ok(None if prepended is None else float(scores[0])) and prepended == added
                failed += not ok
                names = f"{row.client_name} / {row.helo}"
                out.append(f"{row.name:<40} {obs.fp.os_text[:26]:<26} {names[:58]:<58} {row.want:<5} "
                           f"{scores[0]:>7} {scores[1]:>7}  {rules}{'' if ok else '   <-- FAILS'}")
            out.append(f"{len(rows) - failed} of {len(rows)} rows meet their bound")
        finally:
            api.close()
    return out


def learning_curves() -> list[str]:
    policy = load_policy(ROOT / "signatures" / "policy.toml")
    out = [f"{'stream (spam share)':<56} {'static':>6}  " + " ".join(f"{'n=' + str(n):>6}" for n in POINTS)
           + f"  {'limit':>6}"]
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "rep.sqlite")
        rep = Reputation(store)
        for stream in STREAMS:
            key, curve, static = simulate(stream, max(POINTS), policy, rep)
            limit = MAX_ADJUSTMENT * (2 * stream.spam_ratio - 1)
            out.append(f"{stream.name + f' ({stream.spam_ratio:.0%})':<56} {static:>+6.2f}  "
                       + " ".join(f"{curve[n - 1]:>+6.2f}" for n in POINTS) + f"  {limit:>+6.2f}")
            out.append(f"    id {key}")
        # Floods from one source: alone, and beside balanced evidence.
        rng = random.Random(3)
        now = 1_790_000_000.0
        key = "00000000f1/desktop/nordns-bare"
        one = [rep.record(key, True, "198.51.100.7", f"<a{i}@x>", now=now) for i in range(10_000)]
        net = [rep.record(key, True, f"198.51.100.{rng.randrange(256)}", f"<b{i}@x>", now=now) for i in range(10_000)]
        out.append("")
        out.append(f"flood of 10,000 spam reports from one address: {one.count('counted')} counted; from one /24: "
                   f"{net.count('counted')} more; adjustment {rep.adjustment(key, now=now):+.2f} "
                   f"(minimum evidence {rep.min_evidence:g})")
        key = "00000000f2/desktop/nordns-bare"
        for i in range(40):
            rep.record(key, i % 2 == 0, public_address(rng), f"<c{i}@x>", now=now)
        before = rep.adjustment(key, now=now)
        for i in range(10_000):
            rep.record(key, False, f"192.0.2.{rng.randrange(256)}", f"<d{i}@x>", now=now)
        after = rep.adjustment(key, now=now)
        out.append(f"beside 40 balanced outcomes: a 10,000-report ham flood from one /24 moves the adjustment "
                   f"{before:+.2f} -> {after:+.2f} (stated cap {rep.flood_cap:.2f})")
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", action="store_true", help="add real kernel SYN rows (root: network namespaces)")
    args = ap.parse_args()
    print("Scenario table (bundled policy; policy service and milter in-process, Postfix-style names)")
    print("\n".join(scenario_table(args.kernel)))
    print()
    print("Learning curves (adjustment after n messages; bundled policy's static score beside it)")
    print("\n".join(learning_curves()))


if __name__ == "__main__":
    main()
