"""README.md's snippets outside the deployment sections, run as written.

Each command line is the README's own text, run by sh in a directory the test
prepares so that it means what the README says (the files it names, made from
samples/kernel-syn.pcap: real kernel SYNs), with this tree's entry point first on
PATH as `fingerprintd` (tests/test_deploy.py does the same for the units).
The service lines run inside network namespaces made here, with a private
mount namespace over /etc, /run and /var (overlays: the machine's files are
never touched), the users and directories the deployment snippets make, and
clients at the README's documentation addresses; each is asked something
(a lookup, a p0f-socket query, an analyzer datagram, the --log file) and
stopped with SIGTERM. `make run`/`make test` are checked with `make -n`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import IP, TCP, PcapNgWriter, rdpcap  # type: ignore[attr-defined]

from tests import snippets
from tests.conftest import ROOT
from tests.helpers import SAMPLE

BIN = Path(sys.executable).parent  # this tree's install: its `fingerprintd` entry point
TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\[\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\]) ")


def _env() -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    assert shutil.which("fingerprintd", path=env["PATH"]) == str(BIN / "fingerprintd")
    return env


def lines(ref: tuple) -> list[str]:
    """A snippet's command lines, continuations joined, as written (comments left to sh)."""
    return [ln for ln in snippets.snippet(*ref).replace("\\\n", " ").splitlines() if ln.strip()]


def sh(line: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", line], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def words(line: str) -> list[str]:
    return shlex.split(line, comments=True)


# --- make run / make test -------------------------------------------------------------------------------


def _make_n(target: str) -> list[list[str]]:
    """What `make TARGET` would run from scratch (-B: as on a fresh machine), without running it."""
    out = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [shlex.split(ln) for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith(("if ", "\t"))]


def test_make_run_and_make_test_do_what_the_readme_says():
    make = {words(ln)[1]: ln.partition("#")[2] for ln in lines(snippets.MAKE)}
    assert set(make) == {"run", "test"}
    assert "creates .venv, installs, starts the service on embedded defaults" in make["run"]
    run = _make_n("run")
    assert ["python3", "-m", "venv", ".venv"] in run
    assert any(cmd[:2] == [".venv/bin/python", "-m"] and cmd[2:5] == ["pip", "install", "-q"] and "-e" in cmd
               for cmd in run), run
    # It ends by starting the README's `fingerprintd serve` (embedded defaults: no flag, no config file).
    serve = words(lines(snippets.SERVE)[0])
    assert serve == ["fingerprintd", "serve"]
    assert run[-1] == [".venv/bin/fingerprintd", *serve[1:]], run[-1]
    test = _make_n("test")
    debs = next(cmd for cmd in test if cmd[:2] == ["sh", "scripts/debs.sh"])
    documented = make["test"].split("also installs ")[1].split("...")[0]
    for package in re.findall(r"[\w.+-]+", documented):
        assert package in debs, (package, debs)
    assert [".venv/bin/ruff", "check", "."] in test and test[-1][:1] == [".venv/bin/pytest"], test


# --- the output formats and Layout --------------------------------------------------------------------------


def _untimed(line: str) -> str:
    assert TIME.match(line), line
    return TIME.sub("", line, count=1)


@pytest.mark.parametrize("ref, fmt", [(snippets.TEXT_EXAMPLE, "text"), (snippets.P0F_LOG_EXAMPLE, "p0f-log")])
def test_the_output_examples_are_what_a_replay_prints(ref, fmt, tmp_path):
    """The example lines, but for their time, are lines a replay of the bundled capture prints."""
    out = sh(f"fingerprintd replay --format {fmt} {SAMPLE}", tmp_path)
    assert out.returncode == 0, out.stderr
    got = [_untimed(ln) for ln in out.stdout.splitlines()]
    example = [_untimed(ln) for ln in snippets.snippet(*ref).splitlines()]
    assert example and all(ln in got for ln in example), [ln for ln in example if ln not in got]
    # In the order the replay prints them (a mod=mtu line follows its syn).
    at = [got.index(ln) for ln in example]
    assert at == sorted(at) and at[-1] - at[0] == len(at) - 1, at


def test_the_layout_names_every_module():
    layout = snippets.snippet(*snippets.LAYOUT)
    named = {w for ln in layout.splitlines() for w in ln.split() if re.match(r"^[\w.]+/[\w./]*$", w)}
    assert all((ROOT / w).exists() for w in named), [w for w in named if not (ROOT / w).exists()]
    modules = {f"fingerprintd/{p.name}" for p in (ROOT / "fingerprintd").glob("*.py")} - {
        "fingerprintd/__init__.py", "fingerprintd/__main__.py"}
    assert modules <= named, sorted(modules - named)


# --- replay -------------------------------------------------------------------------------------------------


def _rewritten(pkts, n: int, **fields) -> list:
    """n of the capture's SYNs with some header fields changed (checksums recomputed), after its end."""
    out, end = [], float(pkts[-1].time)
    syns = [p for p in pkts if TCP in p and IP in p and p[TCP].flags == "S"]
    for i, p in enumerate(syns[:n]):
        q = p.copy()
        for key, value in fields.items():
            layer, _, name = key.partition("_")
            setattr(q[IP if layer == "ip" else TCP], name, value(i) if callable(value) else value)
        del q[IP].chksum, q[TCP].chksum
        q.time = end + 1 + i
        out.append(q.__class__(bytes(q)))
        out[-1].time = q.time
    return out


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> Path:
    """The files the replay block names: mail.pcap (the sample and some SYNs to 587), mail.pcapng.gz (the
    same as gzip'd pcapng), dump.pcap (the sample, SYNs to 8080 and SYNs within 192.0.2.0/24)."""
    d = tmp_path_factory.mktemp("replay")
    pkts = rdpcap(str(SAMPLE))
    mail = list(pkts) + _rewritten(pkts, 10, tcp_dport=587, tcp_sport=lambda i: 40000 + i)
    from scapy.utils import wrpcap

    wrpcap(str(d / "mail.pcap"), mail)
    with PcapNgWriter(str(d / "mail.pcapng")) as w:
        for p in mail:
            w.write(p)
    (d / "mail.pcapng.gz").write_bytes(gzip.compress((d / "mail.pcapng").read_bytes()))
    (d / "mail.pcapng").unlink()
    dump = (list(pkts) + _rewritten(pkts, 20, tcp_dport=8080, tcp_sport=lambda i: 41000 + i)
            + _rewritten(pkts, 20, ip_src="192.0.2.2", ip_dst="192.0.2.1", tcp_sport=lambda i: 42000 + i))
    wrpcap(str(d / "dump.pcap"), dump)
    return d


def _text(stdout: str) -> list[tuple[str, str, int, str, int]]:
    """(mod, client ip, client port, server ip, server port) of each text line."""
    out = []
    for ln in stdout.splitlines():
        m = re.match(r"^\S+ \S+ (syn|syn\+ack)\s+(\S+):(\d+) (?:->|<-) (\S+):(\d+)  ", ln)
        assert m, ln
        out.append((m[1], m[2].strip("[]"), int(m[3]), m[4].strip("[]"), int(m[5])))
    return out


def test_the_replay_lines_as_written(captures):
    block = lines(snippets.REPLAY)
    assert len(block) == 6
    ran = {}
    for line in block:
        out = sh(line, captures)
        assert out.returncode == 0, (line, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        ran[" ".join(words(line)[2:])] = out
    sample = _text(sh(f"fingerprintd replay {SAMPLE}", captures).stdout)
    # readable text: SYNs to port 25 and their SYN+ACKs (not the SYNs to 587)
    text = _text(ran["mail.pcap"].stdout)
    assert text == sample and {r[4] for r in text} == {25} and {r[0] for r in text} == {"syn", "syn+ack"}
    # one JSON object per observation, from the gzip'd pcapng: the same observations
    objs = [json.loads(ln) for ln in ran["--format jsonl mail.pcapng.gz"].stdout.splitlines()]
    syns = [o for o in objs if o["mod"] in ("syn", "syn+ack")]
    assert [(o["mod"], o["client"]["ip"], o["client"]["port"], o["server"]["port"]) for o in syns] == [
        (m, c, cp, sp) for m, c, cp, _s, sp in text]
    # p0f's log, of both captures the glob names (sorted by the shell: dump.pcap, then mail.pcap)
    log = (captures / "p0f.log").read_text().splitlines()
    assert ran["--format p0f-log -o p0f.log *.pcap"].stdout == ""
    assert all(re.match(r"^\[\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\] mod=", ln) for ln in log)
    syn_log = [dict(kv.split("=", 1) for kv in ln.partition("] ")[2].split("|")) for ln in log
               if ln.partition("] ")[2].startswith("mod=syn|")]
    assert {e["srv"].rpartition("/")[2] for e in syn_log} == {"25"}
    assert sum(e["cli"].startswith("192.0.2.2/") for e in syn_log) == 20  # dump.pcap's own
    assert sum(not e["cli"].startswith("192.0.2.2/") for e in syn_log) == sum(r[0] == "syn" for r in text)
    # the submission ports too: the ten SYNs to 587
    ports = _text(ran["--port 25 --port 587 --port 465 mail.pcap"].stdout)
    assert [r for r in ports if r[4] == 587] == [("syn", "10.77.0.2", 40000 + i, "10.77.0.1", 587) for i in range(10)]
    assert [r for r in ports if r[4] == 25] == text
    # every TCP port: the SYNs to 8080 as well
    every = _text(ran["--all-ports dump.pcap"].stdout)
    assert sorted(r[2] for r in every if r[4] == 8080) == list(range(41000, 41020))
    assert sum(r[1] == "192.0.2.2" for r in every) == 20
    # a filter of one's own: that network only
    net = _text(ran["--bpf tcp and net 192.0.2.0/24 dump.pcap"].stdout)
    assert sorted(r[2] for r in net) == list(range(42000, 42020)) and {r[1] for r in net} == {"192.0.2.2"}


# --- checking a database ------------------------------------------------------------------------------------


def test_the_signatures_lines_as_written(captures, tmp_path):
    shutil.copy(ROOT / "signatures" / "p0f.fp", tmp_path / "my.fp")
    shutil.copy(SAMPLE, tmp_path / "a.pcap")
    with PcapNgWriter(str(tmp_path / "b.pcapng")) as w:
        for p in rdpcap(str(captures / "mail.pcap")):
            w.write(p)
    block = lines(snippets.SIGNATURES)
    assert len(block) == 4
    out = [sh(line, tmp_path) for line in block]
    for line, o in zip(block, out, strict=True):
        assert o.returncode == 0, (line, o.stderr)
    assert out[0].stdout.startswith(f"{ROOT / 'signatures' / 'p0f.fp'}: OK, ")  # the bundled one
    counts = json.loads(out[1].stdout)  # counts per section and class
    assert counts["path"] == "my.fp" and counts["sections"]["tcp:request"] > 0
    assert counts["classes"]["tcp:request"]["unix (specific)"] > 0
    # the added lines no packet backs: notes name file:line; the line the sample's SYNs match is not one
    explain = out[3].stdout.splitlines()
    verdict = re.match(r"^verdict: (.+) \(match, line (\d+), dist 0\)$", explain[0])
    assert verdict, explain[0]
    notes = [ln for ln in out[2].stdout.splitlines() + out[2].stderr.splitlines() if ": note: " in ln]
    assert notes and f"p0f.fp:{verdict[2]}: note" not in "\n".join(notes)
    # explain names the verdict the text example shows for this very raw signature
    example = snippets.snippet(*snippets.TEXT_EXAMPLE)
    raw = words(block[3])[3]
    assert f"  {verdict[1]}  " in example and f"raw_sig={raw}" in example
    assert any(ln.startswith(("  = ", "  ~ ", "  x ")) for ln in explain[1:])


def test_the_documented_database_error(tmp_path):
    """`my.fp:212: unknown quirk 'ttl+'; expected one of df, id+, ...` (exit 2), one line."""
    fp = (ROOT / "signatures" / "p0f.fp").read_text().splitlines()[:211]
    assert [ln for ln in fp if ln.startswith("[")][-1].startswith("[tcp:"), "line 212 is not in a tcp section"
    bad = "sig   = *:64:0:*:mss*16,*:mss,nop,ws:df,ttl+:0"  # the bundled file's line, one quirk changed
    (tmp_path / "my.fp").write_text("\n".join([*fp, bad]) + "\n")
    out = sh(lines(snippets.SIGNATURES)[1], tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("fingerprintd: my.fp:212: unknown quirk 'ttl+'; expected one of df, id+, "), out.stderr
    assert out.stderr.count("\n") <= 1
