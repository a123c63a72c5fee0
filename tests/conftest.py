"""Shared fixtures: the p0f oracle, the shared corpus, and replay helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fingerprintd import accel, cli, matcher, packet

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
GOLDEN = SHARED / "reference" / "p0f-golden"
STOCK_DB = Path("/etc/p0f/p0f.fp")
OUR_DB = ROOT / "signatures" / "p0f.fp"
# The observation kinds both p0f and fingerprintd log (all of p0f's TCP ones).
COMPARED_MODS = ("mod=syn|", "mod=syn+ack|", "mod=mtu|", "mod=sendsyn probe|", "mod=sendsyn response|",
                 "mod=host change|", "mod=ip sharing|", "mod=uptime|")


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def need(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing, except in CI, where it must be there."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def p0f_bin() -> str:
    path = shutil.which("p0f") or ("/usr/sbin/p0f" if Path("/usr/sbin/p0f").exists() else None)
    need(path is not None and STOCK_DB.exists(), "p0f 3.09b is not installed (apt-get install p0f)")
    return path  # type: ignore[return-value]


# The modules that run on both implementations (issue 14: conformance, corpus, kernel, property and CLI
# tests), each test once on the pure-Python reference and once on the compiled accelerator
# (fingerprintd/accel.py); tests/test_accel.py compares the two directly.
BOTH_IMPLEMENTATIONS = frozenset({"test_conformance_corpus", "test_conformance_crafted", "test_conformance_kernel",
                                  "test_packet", "test_cli", "test_nat", "test_scanners", "test_bounds",
                                  "test_counters", "test_explain", "test_stackrules", "test_hosts_policy"})


def pytest_generate_tests(metafunc) -> None:
    if metafunc.module.__name__.rsplit(".", 1)[-1] in BOTH_IMPLEMENTATIONS:
        metafunc.parametrize("implementation", ["pure", "compiled"], indirect=True)


@pytest.fixture(autouse=True)
def implementation(request, monkeypatch):
    """The implementation a test runs on: "pure" or "compiled" in the modules above, else whatever is selected.

    Engines, flow books and formatters built during the test use it, so do child processes (through
    FINGERPRINTD_NO_EXTENSIONS), and so do a test module's own `parse` and `Matcher`."""
    which = getattr(request, "param", None)
    if which is None:
        yield accel.name()
        return
    compiled = which == "compiled"
    if compiled:
        need(accel.available(), "the compiled accelerator is not built (pip install -e . builds it; see setup.py)")
        monkeypatch.delenv(accel.ENV, raising=False)
        fast = accel.compiled().speedups.parse
        for mod in (packet, request.module):
            if getattr(mod, "parse", None) is packet.parse:
                monkeypatch.setattr(mod, "parse", fast)
        if getattr(request.module, "Matcher", None) is matcher.Matcher:  # the module's own Matcher(...) too
            monkeypatch.setattr(request.module, "Matcher", accel.compiled().matcher.Matcher)
    else:
        monkeypatch.setenv(accel.ENV, "1")
    with accel.selected(compiled):
        yield which


def run_p0f(p0f: str, pcap: Path, log: Path, db: Path = STOCK_DB, bpf: str | None = None) -> list[str]:
    """p0f's -o log lines for a capture, restricted to the compared kinds."""
    if log.exists():
        log.unlink()
    cmd = [p0f, "-f", str(db), "-r", str(pcap), "-o", str(log)]
    if bpf:
        cmd.append(bpf)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    return [ln for ln in lines if any(m in ln for m in COMPARED_MODS)]


def run_replay(pcap: Path, out: Path, *args: str, db: Path = STOCK_DB) -> list[str]:
    """fingerprintd's p0f-log lines for a capture, run in-process through the CLI."""
    rc = cli.main(["replay", "--format", "p0f-log", "--signatures", str(db), "--progress", "off",
                   "-o", str(out), *args, str(pcap)])
    assert rc == 0
    return out.read_text().splitlines()


HOST_RECORDS = ("mod=host change|", "mod=ip sharing|", "mod=uptime|")


def carries_http(pcap: Path) -> bool:
    """The capture holds HTTP requests.  p0f's HTTP module feeds the host change / ip
    sharing scores too and keeps an HTTP flow open while it reads headers (which moves
    uptime readings); fingerprintd reads no HTTP, so those records are compared only on
    captures without it (mail traffic has none).  Judged from the bytes, not by our parser."""
    data = pcap.read_bytes()
    return b"GET /" in data or b"HEAD /" in data


def without_host_records(lines: list[str]) -> list[str]:
    return [ln for ln in lines if not any(m in ln for m in HOST_RECORDS)]


def flow_neutral(lines: list[str]) -> list[str]:
    """Lines without what the default mode changes on purpose: host change / ip sharing
    records (two of p0f's signals are not scored, see fingerprintd/nat.py; tests/test_nat.py
    checks them on their own) and the observations of packets that carried an IPv6 flow label.

    Their verdict is where fingerprintd deliberately differs from p0f (the
    flow-label rule, Probe.twin: p0f says ??? for all of them), and a changed
    verdict can change what else p0f logs (an mtu line; after a SYN, the
    connection's SYN+ACK); `--p0f-bugs` runs compare them in full, and
    tests/test_conformance_crafted.py checks the rule itself.
    """
    def key(ln: str) -> str:
        return ln.split("|cli=")[1].split("|")[0] + "|" + ln.split("|srv=")[1].split("|")[0]

    def flowed(ln: str) -> bool:
        return "|raw_sig=6:" in ln and "flow" in ln.split("|raw_sig=")[1].split(":")[-2].split(",")

    lines = [ln for ln in lines if "mod=host change|" not in ln and "mod=ip sharing|" not in ln]
    syn = {key(ln) for ln in lines if ("mod=syn|" in ln or "mod=sendsyn probe|" in ln) and flowed(ln)}
    synack = {key(ln) for ln in lines if ("mod=syn+ack|" in ln or "mod=sendsyn response|" in ln) and flowed(ln)}
    return [ln for ln in lines if key(ln) not in syn and not (key(ln) in synack and "|subj=srv|" in ln)]


def diff_report(expected: list[str], got: list[str], limit: int = 8) -> str:
    import difflib

    lines = list(difflib.unified_diff(expected, got, "p0f", "fingerprintd", lineterm="", n=0))
    return "\n".join(lines[: limit * 3])


def assert_fails_at(call, error: type[Exception], source: str, line: int, needle: str) -> None:
    """`call()` raises `error` whose message is "source:line: ..." and holds `needle` (files read
    by fingerprintd name the line at fault)."""
    with pytest.raises(error) as err:
        call()
    assert str(err.value).startswith(f"{source}:{line}: ") and needle in str(err.value), str(err.value)
