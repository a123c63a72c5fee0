"""The command line, run as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import gzip
import json
import os
import pty
import random
import select
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import TCP, PcapNgWriter, rdpcap  # type: ignore[attr-defined]

from tests.conftest import OUR_DB, ROOT
from tests.craft import Shape, frame, write_pcap
from tests.helpers import SAMPLE, fpd


@pytest.fixture(scope="module")
def small_pcap(tmp_path_factory) -> Path:
    rng = random.Random(9)
    pkts = []
    for i in range(40):
        shape = Shape(ttl=64 - i % 10, mss=1460 - 8 * (i % 3), win=64240, wscale=7 + i % 3)
        p = frame(shape, f"10.9.{i // 200}.{i % 200 + 1}", "192.0.2.25", 40000 + i, 25 if i % 4 else 587, rng)
        p.time = 1_700_000_000 + i
        pkts.append(p)
    path = tmp_path_factory.mktemp("cli") / "small.pcap"
    write_pcap(path, pkts)
    return path


def test_formats_agree(small_pcap, tmp_path):
    text = fpd("replay", str(small_pcap), check=True)
    jsonl = fpd("replay", "--format", "jsonl", str(small_pcap), check=True)
    log = fpd("replay", "--format", "p0f-log", str(small_pcap), check=True)
    rows = [json.loads(ln) for ln in jsonl.stdout.splitlines()]
    assert len(rows) == len(text.stdout.splitlines()) == 30  # port 25 only by default
    assert len([ln for ln in log.stdout.splitlines() if "mod=syn|" in ln]) == 30
    row = rows[0]
    for key in ("ts", "mod", "client", "server", "os", "app", "dist", "params", "raw_sig", "link", "raw_mtu"):
        assert key in row
    assert row["mod"] == "syn" and row["server"] == {"ip": "192.0.2.25", "port": 25}
    assert row["os"]["name"] == "Linux" and set(row["os"]) >= {"class", "name", "flavor", "label", "generic", "fuzzy"}
    assert "30 packets read, 30 fingerprinted" in text.stderr  # the BPF kept port 587 out of Python


def test_ports_and_output_file(small_pcap, tmp_path):
    out = tmp_path / "out.log"
    fpd("replay", "--port", "587", "--format", "p0f-log", "-o", str(out), str(small_pcap), check=True)
    lines = [ln for ln in out.read_text().splitlines() if "mod=syn|" in ln]
    assert len(lines) == 10 and all("/587|subj=cli" in ln for ln in lines)
    both = fpd("replay", "--port", "25", "--port", "587", str(small_pcap), check=True)
    assert len(both.stdout.splitlines()) == 40


def test_gzip_and_pcapng_read_the_same(small_pcap, tmp_path):
    gz = tmp_path / "small.pcap.gz"
    gz.write_bytes(gzip.compress(small_pcap.read_bytes()))
    ng = tmp_path / "small.pcapng"
    from scapy.all import rdpcap  # type: ignore[attr-defined]

    with PcapNgWriter(str(ng)) as w:
        for p in rdpcap(str(small_pcap)):
            w.write(p)
    plain = fpd("replay", "--format", "p0f-log", str(small_pcap), check=True).stdout
    assert fpd("replay", "--format", "p0f-log", str(gz), check=True).stdout == plain
    assert fpd("replay", "--format", "p0f-log", str(ng), check=True).stdout == plain
    # Flow books carry across files (a rotated capture): the second copy is all
    # retransmitted SYNs, which p0f's rules skip.
    twice = fpd("replay", "--format", "p0f-log", str(small_pcap), str(gz), check=True)
    assert twice.stdout == plain and "retransmitted-syn 30" in twice.stderr


@pytest.mark.parametrize("args,needle", [
    (["replay", "/nonexistent.pcap"], "/nonexistent.pcap: cannot read file"),
    (["replay", "--format", "xml", "x.pcap"], "invalid choice"),
    (["replay", "--port", "70000", "x.pcap"], "port out of range"),
    (["replay", "--bpf", "tcp and and", "SAMPLE"], "bad --bpf filter"),
    (["replay", "--signatures", "/nonexistent.fp", "SAMPLE"], "/nonexistent.fp: No such file"),
    (["replay", "pyproject.toml"], "pyproject.toml: not a pcap or pcapng capture"),
    (["replay", "BADGZ"], "BADGZ"),
    (["signatures", "check", "BADFP"], "bad.fp:3: unknown class 'bsd'"),
    (["replay", "--classes", "BADCLASSES", "SAMPLE"], "classes.toml:3: mail_class must be one of"),
    (["replay", "--classes", "/nonexistent.toml", "SAMPLE"], "/nonexistent.toml: No such file"),
    ([], "required"),
])
def test_errors_exit_2_with_one_line(args, needle, tmp_path):
    badfp = tmp_path / "bad.fp"
    badfp.write_text("classes = unix\n[tcp:request]\nlabel = s:bsd:FreeBSD:x\n")
    badgz = tmp_path / "bad.pcap.gz"
    badgz.write_bytes(b"\x1f\x8b" + b"junk" * 10)
    badclasses = tmp_path / "classes.toml"
    badclasses.write_text("[[class]]\nos_name = 'Linux'\nmail_class = 'laptop'\n")
    subst = {"SAMPLE": str(SAMPLE), "BADFP": str(badfp), "BADGZ": str(badgz), "BADCLASSES": str(badclasses)}
    args = [subst.get(a, a) for a in args]
    proc = fpd(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle.replace("BADGZ", str(badgz)) in lines[0]


def test_signatures_check(tmp_path):
    out = fpd("signatures", "check", check=True).stdout
    assert "OK, 2107 signatures" in out and "[tcp:request] 1041" in out
    js = json.loads(fpd("signatures", "check", "--json", str(OUR_DB), check=True).stdout)
    assert js["sections"] == {"mtu": 25, "tcp:request": 1041, "tcp:response": 1041, "http": 0}
    assert js["classes"]["tcp:request"]["win (specific)"] == 26  # p0f's 11, 14 generated, XP at 64240


def test_signatures_check_coverage(tmp_path):
    """Lines no packet of the given captures matches: the file's marked additions by default, or all."""
    db = tmp_path / "mine.fp"
    db.write_text("classes = unix\n[tcp:request]\n"
                  "label = s:unix:Linux:p0f-era\nsig = *:64:0:*:mss*20,*:mss,sok,ts,nop,ws:df,id+:0\n"
                  "; --- fingerprintd additions (test)\n"
                  "label = s:unix:Linux:seen\nsig = *:64:0:*:mss*44,*:mss,sok,ts,nop,ws:df,id+:0\n"
                  "label = s:unix:Linux:never\nsig = *:64:0:*:mss*13,*:mss,sok,ts,nop,ws:df,id+:0\n"
                  "; --- end of fingerprintd additions\n")
    out = fpd("signatures", "check", str(db), "--coverage", str(SAMPLE), check=True).stdout
    assert f"{db}:9: note: no packet in the captures matches: [tcp:request] Linux never: " in out
    assert ":7: note" not in out and ":4: note" not in out  # seen by the sample; not an addition
    assert "coverage: 1 of 2 added signature lines matched by 96 fingerprinted packets" in out
    js = json.loads(fpd("signatures", "check", str(db), "--coverage", str(SAMPLE), "--all-lines", "--json",
                        check=True).stdout)["coverage"]
    assert (js["lines"], js["matched"], [u["line"] for u in js["unmatched"]]) == (3, 1, [4, 9])
    bad = fpd("signatures", "check", str(db), "--coverage", "/nonexistent.pcap")
    assert bad.returncode == 2 and bad.stderr.strip() == "fingerprintd: /nonexistent.pcap: cannot read file"


def test_signatures_check_coverage_in_the_p0f_mode_it_loads(tmp_path):
    """`signatures check --p0f-bugs --coverage` reads, parses and matches in one mode (it once loaded with the
    bugs and matched without them).  Two SYNs, each reaching its line in one mode only: an IPv4 SYN whose ack
    number is 5 has ack+ for the parser in fixed mode (p0f tests bit 24 only), so the line without ack+ is
    reached with the bugs alone; a flow-labelled IPv6 SYN reaches a line without `flow` through the matcher's
    flow-label rule, in fixed mode alone."""
    db = tmp_path / "modes.fp"
    db.write_text("classes = unix\n[tcp:request]\n"
                  "label = s:unix:Linux:ack bit 24\nsig = 4:64:0:*:mss*20,7:mss,sok,ts,nop,ws:df,id+:0\n"
                  "label = s:unix:Linux:flow label\nsig = 6:64:0:*:mss*20,7:mss,sok,ts,nop,ws::0\n")
    rng = random.Random(3)
    v4 = Shape(ttl=64, mss=1460, win=29200, wscale=7, quirks=frozenset({"df", "id+", "ack+"}), ack_value=5)
    v6 = Shape(ver=6, ttl=64, mss=1460, win=29200, wscale=7, quirks=frozenset({"flow"}))
    pkts = [frame(v4, "10.1.2.3", "192.0.2.25", 40000, 25, rng),
            frame(v6, "2001:db8::3", "2001:db8::25", 40001, 25, rng)]
    pcap = tmp_path / "modes.pcap"
    write_pcap(pcap, pkts)

    def coverage(*flags: str) -> tuple:
        out = fpd("signatures", "check", str(db), *flags, "--coverage", str(pcap), "--all-lines", "--json",
                  check=True).stdout
        cov = json.loads(out)["coverage"]
        return cov["packets"], [u["line"] for u in cov["unmatched"]]

    assert coverage() == (2, [4])  # ack+ set: the ack-bit-24 line is missed; the flow-label rule reaches line 6
    assert coverage("--p0f-bugs") == (2, [6])  # p0f's parser and p0f's matcher


def test_summary_adds_up():
    proc = fpd("replay", "--all-ports", "--summary-json", str(SAMPLE), check=True)
    summary = json.loads(proc.stderr.strip().splitlines()[-1])
    # The counts, taken from the capture by scapy: frames, SYNs and SYN+ACKs (ECN ones too; none is a
    # retransmission).
    frames = rdpcap(str(SAMPLE))
    flags = [int(p[TCP].flags) & 0x12 for p in frames]  # SYN and ACK
    syns, synacks = flags.count(0x02), flags.count(0x12)
    assert syns == synacks > 20 and summary["packets"] == len(frames)
    assert summary["fingerprinted"] == {"syn": syns, "syn+ack": synacks}
    assert summary["skipped"] == {"not-syn": len(frames) - syns - synacks}
    # Every SYN in the sample comes from a Linux kernel, which the bundled classes call a server.
    assert summary["syn_mail_classes"] == {"server": syns}
    text = fpd("replay", "--all-ports", str(SAMPLE), check=True).stderr
    assert f"SYNs by mail class: server {summary['syn_mail_classes']['server']}" in text


def test_progress_bar_only_on_a_terminal(small_pcap):
    assert "it/s" not in fpd("replay", str(small_pcap)).stderr and "B/s" not in fpd("replay", str(small_pcap)).stderr
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "fingerprintd", "replay", "-o", os.devnull, str(SAMPLE)])
    out = b""
    while True:
        r, _, _ = select.select([fd], [], [], 30)
        if not r:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    assert b"kernel-syn.pcap" in out and b"%" in out


def test_broken_pipe_is_quiet():
    proc = subprocess.run(f"{sys.executable} -m fingerprintd replay --all-ports {SAMPLE} | head -1", shell=True,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "Traceback" not in proc.stderr and len(proc.stdout.splitlines()) == 1
