"""The .fp parser: p0f's grammar, its refusals (file:line), and the shipped database."""

from __future__ import annotations

import dataclasses
import subprocess
from functools import cache
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, Ether  # type: ignore[attr-defined]

from fingerprintd import matcher, packet, signatures
from fingerprintd.mode import P0F_BUGS
from fingerprintd.signatures import WIN_MSS, SignatureError, load, marked_additions, parse_text, shadowed
from tests import bigdb
from tests.conftest import OUR_DB, STOCK_DB, need
from tests.craft import write_pcap

HEAD = "classes = win,unix,other\n[tcp:request]\nlabel = s:unix:Linux:test\n"
MTU_HEAD = "classes = win,unix,other\n[mtu]\nlabel = Ethernet\n"

# (database text, line of the error or None when it must load)
CASES = [
    (HEAD + "sig = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0\n", None),
    (HEAD + "sig = 4:64+10:0:1460:%8192,*:mss,nop,eol+3:ecn:+\n", None),
    (HEAD + "sig = 6:128:0:*:mtu*4,2:?30,nop,sack,ts:flow,seq-,ack+,ack-,uptr+,urgf+,pushf+:*\n", None),
    (HEAD + "sig = *:64::*:*,*:mss,:df,:0\n", None),  # empty olen reads 0; a trailing comma is fine
    (HEAD + "sig = *:64:0:*:*,*::ts1-,ts2+,opt+,exws,bad,0+,id-:0\n", None),
    (HEAD + "sig = 5:64:0:*:*,*:::0\n", 4),
    (HEAD + "sig = *:0:0:*:*,*:::0\n", 4),
    (HEAD + "sig = *:256:0:*:*,*:::0\n", 4),
    (HEAD + "sig = *:250+10:0:*:*,*:::0\n", 4),
    (HEAD + "sig = *:64:0:*:*,*:::0 \n", 4),  # trailing blank
    (HEAD + "sig = *:64:0:*:*,*:::0\r\n", 4),  # CRLF
    (HEAD + "sig = *:64:0:70000:*,*:::0\n", 4),
    (HEAD + "sig = *:64:0:*:mss*0,*:::0\n", 4),
    (HEAD + "sig = *:64:0:*:mss*1001,*:::0\n", 4),
    (HEAD + "sig = *:64:0:*:%1,*:::0\n", 4),
    (HEAD + "sig = *:64:0:*:*,300:::0\n", 4),
    (HEAD + "sig = *:64:0:*:*,*:mss,eol+1,nop::0\n", 4),
    (HEAD + "sig = *:64:0:*:*,*:mss,foo::0\n", 4),
    (HEAD + "sig = *:64:0:*:*,*::df,foo:0\n", 4),
    (HEAD + "sig = 6:64:0:*:*,*::df:0\n", 4),
    (HEAD + "sig = 4:64:0:*:*,*::flow:0\n", 4),
    (HEAD + "sig = *:64:0:*:*,*:::x\n", 4),
    (HEAD + "sig = *:64:0:*:*,*::\n", 4),
    (HEAD + "sig = *:64:0:*:*,*:::0\nsig = *:64:0:*:*,*:::0\n", 5),  # covered by the line before
    (HEAD + "sig = *:64:0:*:mss*10,*:mss::0\nsig = *:64:0:1460:14600,*:mss::0\n", 5),  # 14600 = mss*10
    (HEAD + "sig = *:64:0:1460:14600,*:mss::0\nsig = *:64:0:*:mss*10,*:mss::0\n", None),
    ("classes = win,unix,other\n[tcp:request]\nlabel = g:unix:Linux:a\nsig = *:64:0:*:*,*:::0\n"
     "label = g:unix:Linux:b\nsig = *:64:0:*:*,*:::0\n", None),  # generic lines never cover
    ("classes = win,unix,other\n[tcp:request]\nsig = *:64:0:*:*,*:::0\n", 3),  # sig before label
    ("classes = win,unix,other\nlabel = s:unix:Linux:x\n", 2),  # label before a section
    ("classes = win,unix,other\n[tcp:request ]\n", 2),
    ("classes = win,unix,other\n[udp:request]\n", 2),
    ("classes = win,unix,other\n[tcp:request]\nfoo = bar\n", 3),
    ("classes = win,unix,other\n[tcp:request]\nlabel = x:unix:Linux:x\n", 3),
    ("classes = win,unix,other\n[tcp:request]\nlabel = s:bsd:FreeBSD:x\n", 3),
    ("classes = win,unix,other\n[tcp:request]\nlabel = s:unix:Lin*ux:x\n", 3),
    ("classes = win,unix,other\n[tcp:request]\nlabel = s:!:NMap:scan\nsig = *:64-:0:*:*,*:::0\n", 4),  # no sys
    ("classes = win,unix,other\n[tcp:request]\nlabel = s:!:NMap:scan\nsys = @unix,Windows\n"
     "sig = *:64-:0:*:*,*:::0\n", None),
    ("classes = win,unix,other\n[tcp:request]\nlabel = s:!:NMap:scan\nsys = @bsd\n", 4),
    ("classes = win,unix,other\n[tcp:request]\nlabel = s:!:NMap:scan\nsys = Linux,\n", 4),
    ("classes = win,unix,other\n[tcp:request]\nlabel = s:unix:Linux:x\nsys = Linux\n", 4),
    ("classes = win,unix,other\n[tcp:request]\nclasses = foo\n", 3),
    ("classes = win,unix,\n", 1),
    ("classes = win, unix ,other\n", 1),
    (MTU_HEAD + "sig = 1500\nsig = 9000\n", None),
    (MTU_HEAD + "sig = 0\n", 4),
    (MTU_HEAD + "sig = 15x\n", 4),
    ("classes = win,unix,other\n[mtu]\nlabel = \n", 3),
    ("classes = win,unix,other\n[http:request]\nua_os = Linux,Windows\nlabel = s:!:Firefox:2.x\n"
     "sys = Windows,@unix\nsig = *:Host:Accept:Firefox/\n", None),
    ("  ; indented comment\n\tclasses = win\n", None),
]


@pytest.mark.parametrize("text,line", CASES)
def test_parser_accepts_and_refuses_with_file_and_line(text, line):
    if line is None:
        parse_text(text, "test.fp")
        return
    with pytest.raises(SignatureError) as err:
        parse_text(text, "test.fp")
    assert err.value.line == line
    assert str(err.value).startswith(f"test.fp:{line}: ")


_MODULI = "".join(f"sig = *:64:0:*:%{m},*:mss::0\n" for m in range(1099, 999, -1))  # lines 4..103
# (database text, the refused line, the line p0f says covers it): the earliest of several candidates
# in different buckets of the index, and a %N window among more moduli than are tried one by one.
COVERED = [
    (HEAD + "sig = *:64:0:*:8192,*:mss::0\nsig = *:64:0:1460:*,0:mss::0\nsig = *:64:0:1460:8192,0:mss::0\n",
     6, 4),
    (HEAD + "sig = *:64:0:1460:*,0:mss::0\nsig = *:64:0:*:8192,*:mss::0\nsig = *:64:0:1460:8192,0:mss::0\n",
     6, 4),
    (HEAD + "sig = 4:64:0:1460:mss*4,0:mss::0\nsig = 4:64:0:*:%1460,0:mss::0\nsig = *:64:0:1460:5840,0:mss::0\n",
     6, 4),  # 5840 reads as mss*4; p0f does not compare the IP version
    (HEAD + _MODULI + "sig = 4:64:0:1460:64260,0:mss::0\n", 104, 4 + 1099 - 1071),  # 64260 = 1071*60 = 1020*63
]


@pytest.mark.parametrize("text,line,by", COVERED)
def test_covered_names_the_earliest_covering_line(text, line, by):
    with pytest.raises(SignatureError, match=rf"^test.fp:{line}: signature is already covered by line {by}$"):
        parse_text(text, "test.fp")


@pytest.mark.parametrize("text,line,by", COVERED)
def test_p0f_agrees_on_the_covering_line(p0f_bin, one_packet_pcap, tmp_path, text, line, by):
    db = tmp_path / "case.fp"
    db.write_text(text)
    out = subprocess.run([p0f_bin, "-f", str(db), "-r", str(one_packet_pcap)], capture_output=True, text=True,
                         timeout=30)
    assert f"Signature in line {line} is already covered by line {by}." in out.stdout + out.stderr


def test_covering_checks_are_not_quadratic(monkeypatch):
    """p0f compares each new line with every earlier one: 200k lines took minutes to load.

    Counted, not timed: the pairwise check runs about once per line, where
    the all-pairs scan of 4,000 lines makes ~8 million comparisons.
    """
    calls = {False: 0, True: 0}
    real = signatures.covers

    def counting(ref, new, include_generic=False):
        calls[include_generic] += 1
        return real(ref, new, include_generic)

    monkeypatch.setattr(signatures, "covers", counting)
    db = parse_text(bigdb.text(4000), "big.fp")
    assert len(db.request) == 4000
    assert shadowed(db) == []
    assert calls[False] <= 4000 and calls[True] <= 400, calls


@pytest.fixture(scope="module")
def one_packet_pcap(tmp_path_factory):
    path = tmp_path_factory.mktemp("one") / "one.pcap"
    write_pcap(path, [Ether() / IP(dst="192.0.2.1") / UDP()])
    return path


@pytest.mark.parametrize("text,line", CASES)
def test_p0f_agrees_on_what_loads(p0f_bin, one_packet_pcap, tmp_path, text, line):
    """p0f itself is the oracle for accept/refuse (and for the line it names)."""
    db = tmp_path / "case.fp"
    db.write_text(text)
    proc = subprocess.run([p0f_bin, "-f", str(db), "-r", str(one_packet_pcap)], capture_output=True, text=True,
                          timeout=30)
    out = proc.stdout + proc.stderr
    if line is None:
        assert proc.returncode == 0, out
    else:
        assert proc.returncode != 0 and "PROGRAM ABORT" in out, out
        assert f"line {line}" in out, out


def test_marked_additions_are_numbered_as_the_parser_numbers_lines():
    # Form feeds (page breaks some editors write) end no line for the parser: nor for the markers.
    text = (HEAD + "sig = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0\n; pages\x0c two\x0c and three\n"
            + signatures.ADDITIONS_START + "\nlabel = s:unix:Linux:added\nsig = *:64:0:*:mss*44,7:mss:df,id+:0\n"
            + signatures.ADDITIONS_END + "\n")
    db = parse_text(text, "test.fp")
    added = marked_additions(text)
    assert [(s.label.flavor, s.line in added) for s in db.request] == [("test", False), ("added", True)]


def test_stock_and_bundled_databases_load():
    ours = load(OUR_DB)
    added = marked_additions(OUR_DB.read_text())
    assert (len(ours.mtu_lines), len(ours.request), len(ours.response)) == (25, 1041, 1041)
    # p0f 3.09b has 91 request and 101 response lines; the rest are ours, marked.
    assert sum(s.line in added for s in ours.request + ours.response) == (1041 - 91) + (1041 - 101)
    if STOCK_DB.exists():
        stock = load(STOCK_DB)
        assert stock.sig_count == 322  # what p0f 3.09b reports: "Loaded 322 signatures"
        # Ours is p0f's lines, in p0f's order, plus the marked additions.
        kept = [s for s in ours.request if s.line not in added]
        assert [(s.text, s.label.text, s.label.klass, s.label.generic) for s in kept] == \
               [(s.text, s.label.text, s.label.klass, s.label.generic) for s in stock.request]
        assert [s.text for s in stock.response] == [s.text for s in ours.response if s.line not in added]
        assert stock.mtu == ours.mtu


def test_p0f_loads_our_database(p0f_bin, tmp_path):
    from scapy.all import IP, UDP, Ether  # type: ignore[attr-defined]

    pcap = tmp_path / "one.pcap"
    write_pcap(pcap, [Ether() / IP(dst="192.0.2.1") / UDP()])
    out = subprocess.run([p0f_bin, "-f", str(OUR_DB), "-r", str(pcap)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and f"Loaded {load(OUR_DB).sig_count} signatures" in out.stdout, out.stdout


def test_names_keep_their_first_spelling():
    db = parse_text("classes = unix\n[tcp:request]\nlabel = s:unix:Linux:a\nsig = *:64:0:*:*,*:::0\n"
                    "label = s:UNIX:linux:b\nsig = *:64:0:*:*,*:mss::0\n")
    assert [s.label.name for s in db.request] == ["Linux", "Linux"]
    assert [s.label.klass for s in db.request] == ["unix", "unix"]


def test_sig_fields():
    db = parse_text(HEAD + "sig = 4:64+10:4:1460:mss*20,7:mss,nop,eol+3:df,id+:+\n")
    sig = db.request[0]
    assert (sig.ver, sig.ttl, sig.olen, sig.mss, sig.win_type, sig.win, sig.wscale) == (4, 74, 4, 1460, WIN_MSS, 20, 7)
    assert (sig.layout, sig.eol_pad, sig.pclass, sig.line) == (b"\x02\x01\x00", 3, 1, 4)


def test_random_ttl_olen(tmp_path):
    text = "classes = unix\n[tcp:request]\nlabel = s:!:Tool:x\nsys = @unix\nsig = *:64-:40:*:*,*:::0\n"
    assert parse_text(text).request[0].olen == 40
    assert parse_text(text, mode=P0F_BUGS).request[0].olen == 0
    assert parse_text(text.replace(":40:", ":12:"), mode=P0F_BUGS).request[0].olen == 2


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.fp"
    bad.write_bytes(b"classes = unix\n\xff\xfe\n")
    with pytest.raises(SignatureError, match=r"bad.fp:2: not valid UTF-8"):
        load(bad)
    with pytest.raises(OSError):
        load(Path(tmp_path / "missing.fp"))


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_the_covering_check_is_the_matchers_exact_match(data):
    """p0f's registration check reads a new line as a packet and matches it exactly against an earlier line:
    for a line with no wildcards (and a literal window), `covers` (with generic lines counted) answers what the
    matcher's comparison answers for that packet.  Both use signatures.Rule; this holds them to each other."""
    need(STOCK_DB.exists(), "p0f's database is not installed (apt-get install p0f)")
    db = _both_databases()[data.draw(st.sampled_from((0, 1)))]
    lines = db.request + db.response
    rare = [sig for sig in lines if sig.win_type in (signatures.WIN_MTU, signatures.WIN_MOD)]  # the few mtu* lines
    ref = data.draw(st.sampled_from(lines if data.draw(st.booleans()) else rare))
    # Mostly the line itself with its wildcards filled in, some fields changed: the cases near the edge.
    base = ref if data.draw(st.integers(0, 4)) else data.draw(st.sampled_from(lines))
    ver = base.ver if base.ver is not None else data.draw(st.sampled_from((4, 6)))
    mss = base.mss if base.mss is not None else data.draw(st.sampled_from((536, 1360, 1460, 8960)))
    wins = {signatures.WIN_NORMAL: base.win, signatures.WIN_MOD: base.win * 3, signatures.WIN_MSS: base.win * mss,
            signatures.WIN_MTU: base.win * (mss + 40), signatures.WIN_ANY: 8192}
    win = wins[base.win_type] if data.draw(st.booleans()) else data.draw(st.integers(0, 65535))
    change = st.integers(0, 5).map(lambda n: n == 0)
    new = dataclasses.replace(
        base, ver=ver, mss=mss + 1 if data.draw(change) else mss, bad_ttl=False,
        ttl=max(1, base.ttl - data.draw(st.sampled_from((0, 0, 1, 35, 36, -1)))),
        wscale=base.wscale if base.wscale is not None else data.draw(st.integers(0, 14)),
        pclass=base.pclass if base.pclass is not None else data.draw(st.sampled_from((0, 1))),
        win_type=signatures.WIN_NORMAL, win=min(win, 65535),
        olen=base.olen + 4 if data.draw(change) else base.olen,
        eol_pad=base.eol_pad + 1 if data.draw(change) else base.eol_pad,
        quirks=base.quirks ^ data.draw(st.sampled_from([bit for _tok, bit in packet.QUIRK_TOKENS])) if data.draw(
            change) else base.quirks)
    multi, use_mtu = signatures.win_multiplier(new.win, new.mss, 0, new.ver, 0, 0)
    probe = matcher.Probe(new.ver, new.ttl, new.olen, new.quirks, new.layout, new.eol_pad, new.mss, new.win,
                          new.wscale, new.pclass, multi, use_mtu)
    exact = ref.layout == new.layout and matcher.compare(ref, probe)[0] == "exact"
    assert signatures.covers(ref, new, include_generic=True) == exact
    event("covered" if exact else "not covered")


@cache
def _both_databases():
    return load(STOCK_DB), load(OUR_DB)
