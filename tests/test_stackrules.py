"""The stack-rule table: the committed database is what it generates, the lines follow the rules, and the
family fallback names a stack by its option writer only where the layout is that stack's alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fingerprintd.matcher import Matcher, parse_raw_sig
from fingerprintd.mode import P0F_BUGS
from fingerprintd.signatures import load
from fingerprintd.stackrules import FALLBACK_FLAVOR, regenerate
from tests.conftest import OUR_DB, ROOT, STOCK_DB, need

OUR_LINES = load(OUR_DB)
_OURS: dict[type, Matcher] = {}


def ours() -> Matcher:
    """A matcher over our database, of the implementation the test runs on (tests/conftest.py: Matcher)."""
    got = _OURS.get(Matcher)
    if got is None:
        got = _OURS[Matcher] = Matcher(OUR_LINES)
    return got

# Linux's SYN layouts by (timestamps, SACK, window scaling), as captured (tcp-stack-rules.md 1.1).
LINUX = {(1, 1, 1): "mss,sok,ts,nop,ws", (0, 1, 1): "mss,nop,nop,sok,nop,ws", (1, 0, 1): "mss,nop,nop,ts,nop,ws",
         (1, 1, 0): "mss,sok,ts", (0, 0, 1): "mss,nop,ws", (0, 1, 0): "mss,nop,nop,sok", (1, 0, 0): "mss,nop,nop,ts",
         (0, 0, 0): "mss"}


def test_committed_database_is_what_the_table_generates():
    text = OUR_DB.read_text(encoding="utf-8")
    assert regenerate(text) == text
    out = subprocess.run([sys.executable, "scripts/gen_signatures.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_generator_check_names_a_changed_line(tmp_path):
    bad = tmp_path / "p0f.fp"
    text = OUR_DB.read_text(encoding="utf-8")
    bad.write_text(text.replace("sig   = *:64:0:*:mss*44,*:mss,sok,ts,nop,ws:df,id+:0\n", "", 1))
    out = subprocess.run([sys.executable, "scripts/gen_signatures.py", "--check", str(bad)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1 and f"{bad}:" in out.stderr


def _verdict(raw: str, to_server: bool = True, matcher: Matcher | None = None) -> str:
    matcher = matcher or ours()
    probe = parse_raw_sig(raw)
    sig, _fuzzy, _dist = matcher.find_probe(probe, to_server)
    if sig is not None:
        return sig.label.text + (" [generic]" if sig.generic else "")
    fallback = matcher.family_fallback(probe, to_server)
    return f"{fallback[0].text} [fallback]" if fallback else "???"


@pytest.mark.parametrize("opts", sorted(LINUX), ids=["".join(map(str, k)) for k in sorted(LINUX)])
@pytest.mark.parametrize("ver", [4, 6])
def test_linux_syn_window_rule_for_every_mss(opts, ver):
    """Linux 4.20+: the SYN window is floor(65535/MSS) whole segments, for each MSS 536..9000 and each option
    set: named specifically, but where older releases' 10 and 20 segments are p0f's own lines."""
    layout = LINUX[opts]
    scale = 7 if opts[2] else 0
    quirks = "df,id+" if ver == 4 else ""
    missed = []
    for mss in range(536, 9001):
        n = 65535 // mss
        if n in (10, 20):
            continue
        got = _verdict(f"{ver}:64+0:0:{mss}:mss*{n},{scale}:{layout}:{quirks}:0")
        # p0f's own lines for older releases come first where they match (Android's 44 at scale 1/3, 2.0's 12)
        if got != "Linux 4.19 and newer" and not (got in ("Linux (Android)", "Linux 2.0") and n in (12, 44)):
            missed.append((mss, n, got))
    assert not missed, missed[:5]


@pytest.mark.parametrize("opts", sorted(LINUX), ids=["".join(map(str, k)) for k in sorted(LINUX)])
def test_linux_synack_window_rule(opts):
    """A Linux listener's SYN+ACK: whole segments of MSS-12 when timestamps are echoed, of the MSS otherwise;
    IP ID 0 (no id+)."""
    layout, scale = LINUX[opts], 7 if opts[2] else 0
    missed = []
    for mss in range(536, 9001, 7):
        seg = mss - 12 if opts[0] else mss
        n = 65535 // seg
        if n in (10, 20) or (opts[0] and (n * seg) % mss == 0):
            continue  # p0f's detection would take the MSS itself as the divisor
        got = _verdict(f"4:64+0:0:{mss}:mss*{n},{scale}:{layout}:df:0", to_server=False)
        if got != "Linux 4.19 and newer":
            missed.append((mss, n, got))
    assert not missed, missed[:5]


@pytest.mark.parametrize("raw,to_server,want", [
    # Windows 10/11 and Server 2016+: timestamps enabled, other auto-tuning levels; answering with 65535 scale 8
    ("4:128+0:0:1460:mss*44,8:mss,nop,ws,sok,ts:df,id+:0", True, "Windows 10 or 11"),
    ("4:128+0:0:1460:65535,4:mss,nop,ws,nop,nop,sok:df,id+:0", True, "Windows 10 or 11"),
    ("4:128+0:0:1460:65535,8:mss,nop,ws,sok,ts:df,id+:0", False, "Windows Server 2016 and newer, or 10 or 11"),
    ("4:128+0:0:1460:65535,8:mss,nop,ws,nop,nop,sok:df,id+,ecn:0", False,
     "Windows Server 2016 and newer, or 10 or 11"),
    # Apple: scale 7 (8 MiB auto-tuning maximum), SACK off; answering with today's scales
    ("4:64+0:0:1460:65535,7:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0", True, "Mac OS X 10.10 and newer, or iOS"),
    ("4:64+0:0:1460:65535,6:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0", False, "Mac OS X 10.10 and newer, or iOS"),
    # FreeBSD with rfc1323=2 / =3; OpenBSD's newer scales
    ("4:64+0:0:1460:65535,6:mss,nop,ws,sok,eol+1:df,id+:0", True, "FreeBSD 9.x or newer"),
    ("4:64+0:0:1460:65535,0:mss,sok,ts:df,id+:0", True, "FreeBSD 9.x or newer"),
    ("4:64+0:0:1460:16384,6:mss,nop,nop,sok,nop,ws,nop,nop,ts:df,id+:0", True, "OpenBSD [generic]"),
    # Android at scales other than 7..10
    ("4:64+0:0:1460:65535,4:mss,sok,ts,nop,ws:df,id+:0", True, "Linux Android 8 and newer"),
])
def test_other_stacks_rules(raw, to_server, want):
    assert _verdict(raw, to_server) == want


@pytest.mark.parametrize("raw,to_server,want", [
    # Layouts only Linux's writer makes, any window (a small SO_RCVBUF): Linux by its option order
    ("4:64+0:0:1460:mss*5,7:mss,nop,nop,ts,nop,ws:df,id+:0", True, "Linux"),
    ("6:64+0:0:1440:mss*3,0:mss,nop,nop,ts,nop,ws::0", True, "Linux"),
    ("4:60+4:0:1460:mss*5,0:mss,sok,ts:df,id+,ecn:0", True, "Linux"),  # shared with FreeBSD: whole segments
    ("4:64+0:0:1460:mss*3,0:mss,nop,nop,ts:df:0", False, "Linux"),
    # Windows' timestamps layout at TTL 128 with a window no line has
    ("4:120+8:0:1460:8000,8:mss,nop,ws,sok,ts:df,id+:0", True, "Windows"),
    # Apple's layout that no one else writes
    ("4:64+0:0:1460:32768,3:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0", True, "Mac OS X"),  # small SO_RCVBUF
])
def test_family_fallback(raw, to_server, want):
    assert _verdict(raw, to_server) == f"{want} {FALLBACK_FLAVOR} [fallback]"
    # p0f's matching alone: unknown; --p0f-bugs turns the extension off
    assert _verdict(raw, to_server, Matcher(load(OUR_DB, P0F_BUGS))) == "???"


@pytest.mark.parametrize("raw,to_server", [
    ("4:64+0:0:1460:65535,0:mss,nop,ws:df,id+:0", True),  # Linux, macOS and the BSDs; 65535 is not Linux's
    ("4:64+0:0:1460:16000,0:mss,sok,ts:df,id+:0", True),  # Linux or FreeBSD; not whole segments
    ("4:64+0:0:1460:mss*5,0:mss,nop,nop,ts,nop,ws:df,id+,ts1-:0", True),  # a quirk no stock Linux has
    ("4:200+55:0:1460:mss*5,7:mss,nop,nop,ts,nop,ws:df,id+:0", True),  # TTL 200: not Linux's 64
    ("4:64+0:0:1460:mss*5,7:mss,ws,nop,sok:df,id+:0", True),  # no stack's writer
])
def test_no_fallback_for_shared_or_foreign_shapes(raw, to_server):
    assert _verdict(raw, to_server) == "???"


def test_no_fallback_with_p0fs_database():
    need(STOCK_DB.exists(), "p0f's database is not installed")
    stock = Matcher(load(STOCK_DB))
    assert stock.fallback is None
    assert _verdict("4:64+0:0:1460:mss*5,7:mss,nop,nop,ts,nop,ws:df,id+:0", matcher=stock) == "???"


def test_explain_shows_the_fallback_reason():
    out = subprocess.run([sys.executable, "-m", "fingerprintd", "signatures", "explain",
                          "4:64+0:0:1460:mss*5,7:mss,nop,nop,ts,nop,ws:df,id+:0"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith(f"verdict: Linux {FALLBACK_FLAVOR} (generic family fallback, dist 0): ")
    assert "mss,nop,nop,ts,nop,ws" in first and "SACK off" in first and "tcp_output.c" in first
