"""Accuracy on labeled captures: fingerprintd's database beside p0f 3.09b's.

    python -m benchmarks.accuracy [../shared/corpus] [--json]

For every labeled host in labels.csv (a capture, a host address, whether it
sent SYNs or answered with SYN+ACKs, and what it really runs), every one of
its SYNs (or SYN+ACKs) is fingerprinted with each database, and the host is
counted once per database as:

* correct-specific: a non-generic line of the right OS family,
* correct-generic: a generic line of the right family,
* unknown: `???` only,
* wrong: another family (or a tool's line for an OS, or the reverse).

A host with several SYNs takes its most common verdict.  Families: Windows,
Linux (Android is Linux's family too, but counted as its own row), macOS
(with iOS), tool (scanners), other.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from fingerprintd.capture import all_tcp_filter, compile_filter, open_offline
from fingerprintd.engine import Engine
from fingerprintd.matcher import Matcher
from fingerprintd.signatures import load

ROOT = Path(__file__).resolve().parent.parent
STOCK = Path("/etc/p0f/p0f.fp")
OURS = ROOT / "signatures" / "p0f.fp"
OUTCOMES = ("correct-specific", "correct-generic", "unknown", "wrong")


def family_of_label(label: str) -> str:
    low = label.lower()
    if any(w in low for w in ("nmap", "scan", "flood", "tool")):
        return "tool"
    if low.startswith("android"):
        return "Android"
    if low.startswith(("macos", "ios", "mac os")):
        return "macOS"
    if low.startswith("windows"):
        return "Windows"
    if low.startswith("linux"):
        return "Linux"
    return "other"


def family_of_verdict(klass: str, name: str) -> str:
    if klass == "!":
        return "tool"
    low = name.lower()
    if low.startswith("windows"):
        return "Windows"
    if low in ("mac os x", "macos x", "ios", "macos"):
        return "macOS"
    if low == "linux":
        return "Linux"
    return "other:" + name


def _verdicts(pcap: Path, db_path: Path) -> dict[tuple[bytes, bool], list[tuple[str, str, bool]]]:
    """(address, sent SYNs?) -> [(class, name, generic)] for every SYN / SYN+ACK in the capture."""
    engine = Engine(Matcher(load(db_path)), ports=None)
    cap = open_offline(str(pcap), lambda lt: all_tcp_filter(compile_filter(all_tcp_filter(), lt) is None))
    out: dict = defaultdict(list)
    for batch in cap.batches():
        for obs in engine.feed_batch(batch, cap.linktype):
            label = obs.fp.label
            verdict = (label.klass, label.name, label.generic) if label else ("", "???", False)
            out[(obs.pkt.src, obs.fp.to_server)].append(verdict)
    return out


def evaluate(corpus: Path, db_path: Path) -> dict:
    import ipaddress

    rows = list(csv.DictReader(open(corpus / "labels.csv", newline="")))
    cache: dict[Path, dict] = {}
    table: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        pcap = corpus / "pcaps" / row["pcap"]
        if pcap not in cache:
            cache[pcap] = _verdicts(pcap, db_path)
        addr = ipaddress.ip_address(row["host_ip"]).packed
        seen = cache[pcap].get((addr, row["role"] == "S"), [])
        want = family_of_label(row["label"])
        if not seen:
            table[want]["no SYN seen"] += 1
            continue
        klass, name, generic = Counter(seen).most_common(1)[0][0]
        if name == "???":
            outcome = "unknown"
        elif family_of_verdict(klass, name) == ("Linux" if want == "Android" else want):
            outcome = "correct-generic" if generic else "correct-specific"
        else:
            outcome = "wrong"
        table[want][outcome] += 1
    total: Counter = Counter()
    for counts in table.values():
        total.update(counts)
    table["all"] = total
    return {fam: dict(c) for fam, c in sorted(table.items())}


def report(corpus: Path) -> dict:
    out = {"fingerprintd": evaluate(corpus, OURS)}
    if STOCK.exists():
        out["p0f 3.09b"] = evaluate(corpus, STOCK)
    return out


def _pct(counts: dict, keys: tuple[str, ...]) -> str:
    hosts = sum(v for k, v in counts.items() if k != "no SYN seen")
    return f"{100 * sum(counts.get(k, 0) for k in keys) / hosts:5.1f}%" if hosts else "    -"


def print_table(results: dict) -> None:
    fams = sorted({f for r in results.values() for f in r}, key=lambda f: (f == "all", f))
    print(f"{'family':<10} {'database':<13} {'hosts':>5}  {'family ok':>9}  {'specific':>8}  "
          f"{'generic':>8}  {'unknown':>8}  {'wrong':>8}")
    for fam in fams:
        for db, res in results.items():
            c = res.get(fam, {})
            hosts = sum(v for k, v in c.items() if k != "no SYN seen")
            print(f"{fam:<10} {db:<13} {hosts:>5}  {_pct(c, ('correct-specific', 'correct-generic')):>9}  "
                  f"{_pct(c, ('correct-specific',)):>8}  {_pct(c, ('correct-generic',)):>8}  "
                  f"{_pct(c, ('unknown',)):>8}  {_pct(c, ('wrong',)):>8}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    corpus = Path(args[0]) if args else ROOT.parent / "shared" / "corpus"
    if not (corpus / "labels.csv").exists():
        sys.exit(f"no labels.csv in {corpus}")
    results = report(corpus)
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
