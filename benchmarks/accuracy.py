"""Accuracy on labeled captures: fingerprintd's database beside p0f 3.09b's.

    python -m benchmarks.accuracy [../shared/corpus] [--json] [--hosts]

For every labeled host in labels.csv (a capture, a host address, whether it
sent SYNs or answered with SYN+ACKs, and what it really runs), every one of
its SYNs (or SYN+ACKs) is fingerprinted with each database, and the host is
counted once per database as:

* correct-specific: a non-generic line of the right OS family,
* correct-generic: a generic line of the right family,
* unknown: `???` only,
* wrong: another family (or a tool's line for an OS, or the reverse).

The "p0f 3.09b" column is the real p0f binary (`p0f -r CAPTURE -o LOG` with
its stock database, /etc/p0f/p0f.fp), its log read back; the fingerprintd
column is `fingerprintd replay`'s engine with the bundled database (default
mode: the fixes and the family fallback included).

A host with several SYNs takes its most common verdict.  Families: Windows,
Linux (Android is Linux's family too, but counted as its own row), macOS
(with iOS), tool (scanners), other.  A label that starts with an OS name is
that OS even when it names the program too ("Linux (kernel connect() from a
brute-forcer)": the SYN is the kernel's).  The row "2015+" counts the hosts
whose label names an OS released in 2015 or later (Windows 10/11, macOS, iOS,
Android), the ones p0f 3.09b's database predates.

    python -m benchmarks.accuracy --netns

adds real Linux-kernel SYNs and SYN+ACKs made here in network namespaces
(tests/netns.py: the MTU x option-set sweep, buffer, TTL, ECN and listener
variants, IPv4 and IPv6; needs root), labeled "Linux" by construction: the
totals, then one row per variant with both databases' SYN and SYN+ACK labels.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from fingerprintd.capture import all_tcp_filter, open_offline, per_link
from fingerprintd.classes import bundled_classes
from fingerprintd.engine import build_engine
from fingerprintd.signatures import load

ROOT = Path(__file__).resolve().parent.parent
STOCK = Path("/etc/p0f/p0f.fp")
OURS = ROOT / "signatures" / "p0f.fp"
OUTCOMES = ("correct-specific", "correct-generic", "unknown", "wrong")


def family_of_label(label: str) -> str:
    low = label.lower()
    if low.startswith("android"):
        return "Android"
    if low.startswith(("macos", "ios", "mac os")):
        return "macOS"
    if low.startswith("windows"):
        return "Windows"
    if low.startswith("linux"):
        return "Linux"
    if any(w in low for w in ("nmap", "scan", "flood", "tool")):
        return "tool"
    return "other"


def is_2015_or_later(label: str) -> bool:
    low = label.lower()
    return low.startswith(("windows 10", "windows 11", "macos", "ios", "android"))


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


P0F = "p0f"  # the binary; STOCK is its database


def _verdicts(pcap: Path, db_path: Path) -> dict[tuple, list[tuple[str, str, bool, str]]]:
    """(address, sent SYNs?) and (address, sent SYNs?, client port) -> [(class, name, generic, label text)]
    for every SYN / SYN+ACK in the capture, by fingerprintd's engine."""
    engine = build_engine(load(db_path), bundled_classes(), ports=None, host_records=False)
    cap = open_offline(str(pcap), per_link(all_tcp_filter))
    out: dict = defaultdict(list)
    for batch in cap.batches():
        for obs in engine.feed_batch(batch, cap.linktype):
            label = obs.fp.label
            verdict = (label.klass, label.name, label.generic, label.text) if label else ("", "???", False, "???")
            out[(obs.pkt.src, obs.fp.to_server)].append(verdict)
            client_port = obs.pkt.sport if obs.fp.to_server else obs.pkt.dport
            out[(obs.pkt.src, obs.fp.to_server, client_port)].append(verdict)
    return out


def p0f_verdicts(pcap: Path, db_path: Path = STOCK) -> dict[tuple, list[tuple[str, str, bool, str]]]:
    """The same as _verdicts, from the real p0f binary's `-o` log of the capture."""
    binary = shutil.which(P0F) or "/usr/sbin/p0f"
    labels = {lab.text: lab for lab in load(db_path).labels}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "p0f.log"
        proc = subprocess.run([binary, "-f", str(db_path), "-r", str(pcap), "-o", str(log)], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"p0f failed on {pcap}: {(proc.stderr or proc.stdout).strip()[-300:]}")
        text = log.read_text(errors="replace") if log.exists() else ""
    out: dict = defaultdict(list)
    for line in text.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split("] ", 1)[1].split("|") if "=" in kv)
        if fields.get("mod") not in ("syn", "syn+ack"):
            continue
        to_server = fields["mod"] == "syn"
        cli_ip, cli_port = fields["cli"].rsplit("/", 1)
        host = cli_ip if to_server else fields["srv"].rsplit("/", 1)[0]
        if "app" in fields:
            app = labels.get(fields["app"])
            verdict = ("!", app.name if app else fields["app"], False, fields["app"])
        elif fields.get("os", "???") == "???":
            verdict = ("", "???", False, "???")
        else:
            label = labels[fields["os"]]
            verdict = (label.klass, label.name, "generic" in fields.get("params", "").split(), fields["os"])
        addr = ipaddress.ip_address(host).packed
        out[(addr, to_server)].append(verdict)
        out[(addr, to_server, int(cli_port))].append(verdict)
    return out


def evaluate(corpus: Path, db_path: Path, misses: list | None = None, p0f: bool = False) -> dict:
    rows = list(csv.DictReader(open(corpus / "labels.csv", newline="")))
    return score(rows, corpus / "pcaps", db_path, misses, p0f)


def score(rows: list[dict], pcaps: Path, db_path: Path, misses: list | None = None, p0f: bool = False) -> dict:
    """Outcome counts per family for labels.csv-style rows (pcap, host_ip, role, label; and
    optionally client_port, to score one connection rather than a host).  `p0f`: the verdicts are
    the p0f binary's with `db_path`, not fingerprintd's."""
    cache: dict[Path, dict] = {}
    table: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        pcap = pcaps / row["pcap"]
        if pcap not in cache:
            cache[pcap] = p0f_verdicts(pcap, db_path) if p0f else _verdicts(pcap, db_path)
        addr = ipaddress.ip_address(row["host_ip"]).packed
        key = (addr, row["role"] == "S") + ((int(row["client_port"]),) if row.get("client_port") else ())
        seen = cache[pcap].get(key, [])
        want = family_of_label(row["label"])
        if not seen:
            table[want]["no SYN seen"] += 1
            continue
        klass, name, generic, _text = Counter(seen).most_common(1)[0][0]
        if name == "???":
            outcome = "unknown"
        elif family_of_verdict(klass, name) == ("Linux" if want == "Android" else want):
            outcome = "correct-generic" if generic else "correct-specific"
        else:
            outcome = "wrong"
        table[want][outcome] += 1
        if misses is not None and outcome != "correct-specific":
            misses.append((row, f"{name} [generic]" if generic else name, outcome))
        if is_2015_or_later(row["label"]):
            table["2015+"][outcome] += 1
    total: Counter = Counter()
    for fam, counts in table.items():
        if fam != "2015+":
            total.update(counts)
    table["all"] = total
    return {fam: dict(c) for fam, c in sorted(table.items())}


def report(corpus: Path, misses: list | None = None) -> dict:
    out = {"fingerprintd": evaluate(corpus, OURS, misses)}
    if STOCK.exists():
        out["p0f 3.09b"] = evaluate(corpus, STOCK, p0f=True)
    return out


def kernel_rows(pcap: Path, sent: list, net: int) -> list[dict]:
    """Rows labeling both ends of every connection tests.netns.capture_kernel_syns made "Linux"."""
    from tests.netns import NetnsPair

    ends = NetnsPair(net=net)
    rows = []
    for variant, server, first_port, count in sent:
        client = ends.client6 if ":" in server else ends.client4
        for port in range(first_port, first_port + count):
            for host, role in ((client, "S"), (server, "SA")):
                rows.append({"pcap": pcap.name, "host_ip": host, "role": role, "client_port": str(port),
                             "label": f"Linux ({variant})"})
    return rows


def kernel_report(folder: Path) -> tuple[dict, list[dict]]:
    """The totals on a fresh kernel sweep, and one row per variant."""
    from tests.netns import VARIANTS, capture_kernel_syns

    pcap = folder / "kernel.pcap"
    sent = capture_kernel_syns(pcap, net=78)
    rows = kernel_rows(pcap, sent, net=78)
    out = {"fingerprintd": score(rows, folder, OURS)}
    ours, theirs = _verdicts(pcap, OURS), {}
    if STOCK.exists():
        out["p0f 3.09b"] = score(rows, folder, STOCK, p0f=True)
        theirs = p0f_verdicts(pcap, STOCK)
    order = {v["name"]: i for i, v in enumerate(VARIANTS)}
    per_variant: dict[str, dict] = {}
    for row in rows:
        variant = row["label"][len("Linux ("):-1]
        addr = ipaddress.ip_address(row["host_ip"]).packed
        key = (addr, row["role"] == "S", int(row["client_port"]))
        entry = per_variant.setdefault(variant, {"variant": variant})
        for db, verdicts in (("fingerprintd", ours), ("p0f 3.09b", theirs)):
            if db == "p0f 3.09b" and not STOCK.exists():
                continue
            seen = verdicts.get(key)
            text = _verdict_text(Counter(seen).most_common(1)[0][0]) if seen else "-"
            fam = "v6" if ":" in row["host_ip"] else "v4"
            entry.setdefault(f"{db} {'syn' if row['role'] == 'S' else 'syn+ack'} {fam}", text)
    return out, sorted(per_variant.values(), key=lambda e: order.get(e["variant"], 1 << 30))


def _verdict_text(verdict: tuple[str, str, bool, str]) -> str:
    _klass, _name, generic, text = verdict
    return f"{text} [generic]" if generic else text


def print_variants(rows: list[dict]) -> None:
    """One line per kernel variant: the SYN and SYN+ACK verdicts over IPv4 (IPv6 where it differs)."""
    dbs = [db for db in ("fingerprintd", "p0f 3.09b") if any(k.startswith(db) for r in rows for k in r)]
    print(f"{'variant':<22} " + " ".join(f"{db + ' ' + mod:<36}" for db in dbs for mod in ("syn", "syn+ack")))
    for r in rows:
        cells = []
        for db in dbs:
            for mod in ("syn", "syn+ack"):
                v4, v6 = r.get(f"{db} {mod} v4", "-"), r.get(f"{db} {mod} v6")
                cells.append(f"{v4 if v6 in (None, v4) else v4 + ' / v6: ' + v6:<36}")
        print(f"{r['variant']:<22} " + " ".join(cells))


def _pct(counts: dict, keys: tuple[str, ...]) -> str:
    hosts = sum(v for k, v in counts.items() if k != "no SYN seen")
    return f"{100 * sum(counts.get(k, 0) for k in keys) / hosts:5.1f}%" if hosts else "    -"


def print_table(results: dict) -> None:
    fams = sorted({f for r in results.values() for f in r}, key=lambda f: (f in ("2015+", "all"), f))
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
    misses: list = []
    results = {"labeled corpus": report(corpus, misses)}
    variants: list = []
    if "--netns" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            results["kernel SYNs made here"], variants = kernel_report(Path(tmp))
    if "--json" in sys.argv:
        print(json.dumps({**results, "kernel variants": variants} if variants else results, indent=2))
    else:
        for title, table in results.items():
            print(f"# {title}")
            print_table(table)
        if variants:
            print("# kernel variants (IPv4; IPv6 after / where it differs)")
            print_variants(variants)
        if "--hosts" in sys.argv:
            print("# labeled hosts the bundled database does not name specifically")
            for row, verdict, outcome in misses:
                print(f"{outcome:<16} {row['label'][:40]:<40} {verdict:<32} {row['pcap']} {row['host_ip']} "
                      f"{row['role']}")
