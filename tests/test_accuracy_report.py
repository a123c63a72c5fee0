"""benchmarks/accuracy.py: its p0f 3.09b column is the p0f binary's verdicts, not our engine's."""

from __future__ import annotations

import csv
import ipaddress
from collections import Counter

from tests.conftest import CORPUS, STOCK_DB, need


def _recorded(cell: str) -> Counter:
    """labels.csv's p0f_3.09b column ("??? x7; app:NMap OS detection x1"), recorded with the binary."""
    out: Counter = Counter()
    for item in filter(None, cell.split("; ")):
        text, n = item.rsplit(" x", 1)
        out[text] += int(n)
    return out


def test_p0f_column_is_the_binarys(p0f_bin):
    """For every labeled host, the report's p0f verdicts are exactly what the p0f binary logged when the
    corpus was labeled; p0f's ack+ bug makes NMap's OS-detection probes ??? there, which our engine with
    p0f's database (the bug fixed) would not reproduce."""
    need((CORPUS / "labels.csv").exists(), f"the labeled corpus is not present at {CORPUS}")
    from benchmarks.accuracy import p0f_verdicts

    rows = list(csv.DictReader(open(CORPUS / "labels.csv", newline="")))
    cache: dict = {}
    differ = []
    for row in rows:
        pcap = CORPUS / "pcaps" / row["pcap"]
        if pcap not in cache:
            cache[pcap] = p0f_verdicts(pcap, STOCK_DB)
        seen = cache[pcap].get((ipaddress.ip_address(row["host_ip"]).packed, row["role"] == "S"), [])
        got = Counter(f"app:{text}" if klass == "!" else text for klass, _name, _generic, text in seen)
        if got != _recorded(row["p0f_3.09b"]):
            differ.append((row["pcap"], row["host_ip"], dict(got), row["p0f_3.09b"]))
    assert not differ, differ[:5]
    nmap = [r for r in rows if r["pcap"] == "chrissanders__activeosfingerprinting.pcapng"]
    assert nmap and "???" in nmap[0]["p0f_3.09b"]  # the case that tells the binary from our engine
