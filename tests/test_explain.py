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


# Read off signatures/p0f.fp by hand: the lines of the probe's option layout that match it exactly, in
# file order (each as "label | sig"), the first of which is the verdict. The IPv6 probe carries a flow
# label, so it matches its flow-less twin's lines (the flow-label rule).
LINUX_419 = "s:unix:Linux:4.19 and newer"
LINUX_GENERIC = "g:unix:Linux:2.2.x-3.x | *:64:0:*:*,*:mss,sok,ts,nop,ws:df,id+:0"


@pytest.mark.parametrize("raw,exact", [
    ("4:64+0:0:1460:mss*44,10:mss,sok,ts,nop,ws:df,id+:0",
     [f"{LINUX_419} | *:64:0:*:mss*44,10:mss,sok,ts,nop,ws:df,id+:0", LINUX_GENERIC]),
    ("6:64+0:0:1440:mss*45,10:mss,sok,ts,nop,ws:flow:0",
     [f"{LINUX_419} | *:64:0:*:mss*45,10:mss,sok,ts,nop,ws:df,id+:0", LINUX_GENERIC]),
    ("4:128+0:0:1460:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0",
     ["s:win:Windows:7 or 8 | *:128:0:*:8192,8:mss,nop,ws,nop,nop,sok:df,id+:0",
      "g:win:Windows:NT kernel 6.x | *:128:0:*:8192,*:mss,nop,ws,nop,nop,sok:df,id+:0",
      "g:win:Windows:NT kernel | *:128:0:*:*,*:mss,nop,ws,nop,nop,sok:df,id+:0"]),
])
def test_explain_lists_every_line_of_the_layout(raw, exact):
    matcher = Matcher(load(OUR_DB))
    probe = parse_raw_sig(raw)
    rows = matcher.explain(probe)
    assert len(rows) == len(matcher.db.request)

    def named(ref) -> str:
        lab = ref.label
        return f"{'g' if lab.generic else 's'}:{lab.klass}:{lab.name}:{lab.flavor} | {ref.text}"

    assert [named(ref) for ref, status, _ in rows if status == "exact"] == exact
    assert not [ref for ref, status, _ in rows if status == "fuzzy"]
    # Every other line says why it does not match.
    assert all(why and why != "matches" for _, status, why in rows if status is None)
    verdict, fuzzy, _ = matcher.find_probe(probe, True)
    assert named(verdict) == exact[0] and not fuzzy
