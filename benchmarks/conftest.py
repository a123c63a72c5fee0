"""Benchmark fixtures: synthetic captures (cached) and the p0f binary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.synthetic import generate
from tests.conftest import need

DATA = Path(__file__).resolve().parent / ".data"


def synthetic(name: str, count: int, **kw) -> Path:
    DATA.mkdir(exist_ok=True)
    path = DATA / f"{name}.pcap"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        generate(tmp, count, **kw)
        tmp.rename(path)
    return path


@pytest.fixture(scope="session")
def syn_200k() -> Path:
    return synthetic("syn_200k", 200_000)


@pytest.fixture(scope="session")
def syn_200k_h8k() -> Path:
    """200k SYNs from 8,000 sources: repeat senders, as at a real MX."""
    return synthetic("syn_200k_h8k", 200_000, seed=3, hosts=8000)


@pytest.fixture(scope="session")
def syn_200k_mx() -> Path:
    """200k SYNs from 8,000 sources running 300 stacks (each source keeps its own): a mail server's day."""
    return synthetic("syn_200k_mx", 200_000, seed=4, hosts=8000, stacks=300)


@pytest.fixture(scope="session")
def syn_50k() -> Path:
    return synthetic("syn_50k", 50_000, seed=2)


@pytest.fixture(scope="session")
def p0f_bin() -> str:
    path = shutil.which("p0f") or "/usr/sbin/p0f"
    need(Path(path).exists(), "p0f is not installed: the benchmarks compare against it (apt-get install p0f)")
    return path
