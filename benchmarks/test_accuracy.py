"""The accuracy report as a benchmark record: `pytest -s benchmarks -k accuracy --benchmark-only`."""

from __future__ import annotations

from benchmarks.accuracy import ROOT, print_table, report
from tests.conftest import need

CORPUS = ROOT.parent / "shared" / "corpus"


def test_accuracy(benchmark):
    need((CORPUS / "labels.csv").exists(), f"the labeled corpus is not present at {CORPUS}")
    results = benchmark.pedantic(lambda: report(CORPUS), rounds=1, iterations=1)
    benchmark.extra_info.update(results)
    print()
    print_table(results)
