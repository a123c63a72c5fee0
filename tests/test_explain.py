"""`signatures explain` and the shadowed-line report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fingerprintd.matcher import Matcher, parse_raw_sig
from fingerprintd.signatures import load, parse_text, shadowed
from tests.conftest import GOLDEN, OUR_DB, ROOT, STOCK_DB, need


def test_raw_sig_verdicts_equal_the_packets_verdicts():
    """Explaining a packet's raw_sig reaches the verdict p0f gave the packet itself."""
    need((GOLDEN / "quirk_cases.json").exists(), f"the golden set is not present at {GOLDEN}")
    need(STOCK_DB.exists(), "p0f's database is not installed: the golden verdicts are its verdicts")
    matcher = Matcher(load(STOCK_DB))
    checked = 0
    for case in json.loads((GOLDEN / "quirk_cases.json").read_text()):
        if case.get("kind") != "syn":
            continue
        # As p0f would (no flow-label rule): the golden verdicts are p0f's.
        sig, fuzzy, dist = matcher.find_probe(parse_raw_sig(case["raw_sig"], flow_twin=False), True)
        label = sig.label.text if sig else "???"
        want = case["os"].removeprefix("app: ")
        assert label == want, case["case"]
        assert ("fuzzy" in case["params"]) == fuzzy and str(dist) == case["dist"].removeprefix("<= "), case["case"]
        checked += 1
    assert checked > 50


def test_explain_cli():
    out = subprocess.run([sys.executable, "-m", "fingerprintd", "signatures", "explain",
                          "4:57+7:0:1460:mss*20,7:mss,sok,ts,nop,ws:df,id+,ecn:0"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    text = OUR_DB.read_text().splitlines()
    ws7 = text.index("sig   = *:64:0:*:mss*20,7:mss,sok,ts,nop,ws:df,id+:0") + 1
    ws10 = text.index("sig   = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0") + 1
    assert lines[0] == f"verdict: Linux 3.11 and newer (fuzzy match, line {ws7}, dist 7)"
    assert any(ln.startswith(f"  ~ line {ws7:4d}") and "quirks: missing -, extra ecn" in ln for ln in lines)
    assert any(ln.startswith(f"  x line {ws10:4d}") and "window scale differs: wants 10, has 7" in ln
               for ln in lines)
    bad = subprocess.run([sys.executable, "-m", "fingerprintd", "signatures", "explain", "4:64:0:*:*,*::df:0"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "no wildcards" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_shadowed_lines(tmp_path):
    text = ("classes = unix\n[tcp:request]\nlabel = g:unix:Linux:a\nsig = *:64:0:*:mss*20,7:mss::0\n"
            "label = g:unix:Linux:b\nsig = *:64:0:1460:mss*20,7:mss::0\n"  # behind line 4
            "label = g:unix:Linux:c\nsig = *:64:0:*:*,*:nop::0\n"
            "label = g:unix:Linux:d\nsig = *:64:0:*:%8192,*:nop::0\n")  # behind line 8
    db = parse_text(text, "x.fp")
    assert [(s.line, r.line) for _, s, r in shadowed(db)] == [(6, 4), (10, 8)]
    path = tmp_path / "x.fp"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "fingerprintd", "signatures", "check", str(path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    assert f"{path}:6: warning: never wins: [tcp:request] line 4 matches everything it does" in out.stdout
    assert shadowed(load(OUR_DB)) == []


# A database small enough to explain by hand (the line numbers are the file's).
EXPLAIN_DB = (
    "classes = win,unix\n"
    "[tcp:request]\n"
    "label = s:unix:Linux:4.19 and newer\n"
    "sig = *:64:0:*:mss*44,7:mss,sok,ts,nop,ws:df,id+:0\n"  # line 4
    "sig = *:64:0:*:mss*44,10:mss,sok,ts,nop,ws:df,id+:0\n"  # line 5
    "sig = *:64:0:*:mss*45,10:mss,sok,ts,nop,ws:df,id+:0\n"  # line 6
    "label = s:unix:Linux:other layout\n"
    "sig = *:64:0:*:mss*44,10:mss,nop,ws:df,id+:0\n"  # line 8
    "label = g:unix:Linux:2.2.x-3.x\n"
    "sig = *:64:0:*:*,*:mss,sok,ts,nop,ws:df,id+:0\n"  # line 10
    "label = s:win:Windows:7 or 8\n"
    "sig = *:128:0:*:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0\n"  # line 12
    "label = g:win:Windows:NT kernel\n"
    "sig = *:128:0:*:*,*:mss,nop,ws,nop,nop,sok:df,id+:0\n"  # line 14
)


# Worked out by hand: the lines that match each probe exactly, in file order (the first is the verdict),
# and why two of the others do not. 1460 * 44 = 64240 is line 5's window, not line 6's (1460 * 45); the
# IPv6 probe (1440 * 45, with a flow label) matches its flow-less twin's lines, 6 and the generic 10.
@pytest.mark.parametrize("raw,exact,why", [
    ("4:64+0:0:1460:mss*44,10:mss,sok,ts,nop,ws:df,id+:0", [5, 10],
     {4: "window scale differs: wants 7, has 10", 8: "option layout differs: wants mss,nop,ws"}),
    ("6:64+0:0:1440:mss*45,10:mss,sok,ts,nop,ws:flow:0", [6, 10],
     {4: "window scale differs: wants 7, has 10", 12: "option layout differs: wants mss,nop,ws,nop,nop,sok"}),
    ("4:128+0:0:1460:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0", [12, 14],
     {5: "option layout differs: wants mss,sok,ts,nop,ws", 10: "option layout differs: wants mss,sok,ts,nop,ws"}),
])
def test_explain_lists_every_line_of_the_layout(raw, exact, why):
    matcher = Matcher(parse_text(EXPLAIN_DB, "x.fp"))
    probe = parse_raw_sig(raw)
    rows = matcher.explain(probe)
    assert [ref.line for ref, _, _ in rows] == [4, 5, 6, 8, 10, 12, 14]
    assert [ref.line for ref, status, _ in rows if status == "exact"] == exact
    assert not [ref for ref, status, _ in rows if status == "fuzzy"]
    reasons = {ref.line: text for ref, _, text in rows}
    assert {line: reasons[line] for line in why} == why
    # Every line that does not match says why.
    assert all(text and text != "matches" for _, status, text in rows if status is None)
    verdict, fuzzy, _ = matcher.find_probe(probe, True)
    assert verdict.line == exact[0] and not fuzzy
