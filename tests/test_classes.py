"""Mail classes: what kind of sender each signature label names, and the replay output that shows it."""

from __future__ import annotations

import json
import re

import pytest

from fingerprintd.classes import MAIL_CLASSES, ClassesError, bundled_classes, parse_classes
from fingerprintd.signatures import load
from tests.conftest import OUR_DB, ROOT, STOCK_DB, assert_fails_at
from tests.helpers import SAMPLE, fpd


def _labels(path):
    db = load(path)
    return {s.label.text: s.label for s in db.request + db.response}


def test_every_bundled_label_has_a_class():
    """A signature added without a class rule would be 'unknown' to every policy: caught here."""
    paths = [OUR_DB] + ([STOCK_DB] if STOCK_DB.exists() else [])
    for path in paths:
        missing = sorted(text for text, label in _labels(path).items() if bundled_classes().of(label) == "unknown")
        assert not missing, f"{path}: no mail class for {missing}"


@pytest.mark.parametrize("text,mail_class", [
    ("Linux 4.19 and newer", "server"), ("Linux 2.6.x (Google crawler)", "server"),
    ("Linux Android 8 and newer", "mobile"), ("Linux (Android)", "mobile"),
    ("Windows 10 or 11", "desktop"), ("Windows XP", "desktop"), ("Windows NT kernel", "desktop"),
    ("Windows Server 2016 and newer, or 10 or 11", "server"),
    ("Mac OS X 10.10 and newer, or iOS", "desktop"), ("iOS iPhone or iPad", "mobile"),
    ("FreeBSD 9.x or newer", "server"), ("OpenBSD 5.x", "server"), ("Solaris 10", "server"),
    ("NMap SYN scan", "scanner"), ("masscan", "scanner"), ("zmap", "scanner"), ("p0f sendsyn utility", "scanner"),
    ("Nintendo 3DS", "embedded"), ("Blackberry", "mobile"),
])
def test_bundled_classes(text, mail_class):
    assert bundled_classes().of(_labels(OUR_DB)[text]) == mail_class


def test_no_match_is_unknown_and_first_rule_wins():
    cm = parse_classes("[[class]]\nmail_class = 'embedded'\nflavor = 'x'\n[[class]]\nmail_class = 'server'\n"
                       "os_name = '^Linux$'\n")
    labels = _labels(OUR_DB)
    assert cm.of(None) == "unknown"
    assert cm.of(labels["Linux 4.19 and newer"]) == "server"
    assert cm.of(labels["Linux 3.x"]) == "embedded"  # flavor "3.x" holds an x: the first rule
    assert cm.of(labels["Windows XP"]) == "unknown"  # no rule covers it


def test_mail_classes_are_the_apis():
    """The classes the files may name are exactly the API's MailClass values (read from the .proto text)."""
    proto = (ROOT / "proto" / "fingerprintd" / "v1" / "fingerprintd.proto").read_text()
    values = re.findall(r"^\s*MAIL_CLASS_([A-Z]+)\s*=\s*\d+;", proto, re.M)
    assert sorted(MAIL_CLASSES) == sorted(v.lower() for v in values if v != "UNSPECIFIED")
    assert len(set(MAIL_CLASSES)) == len(MAIL_CLASSES) == 6


@pytest.mark.parametrize("text,line,needle", [
    ("[[class]]\nmail_class = 'server'\n\n[[class]]\nmail_class = 'phone'\n", 5, "mail_class must be one of"),
    ("[[class]]\nmail_class = 'server'\nos_name = '('\n", 3, "bad regular expression for os_name"),
    ("[[class]]\nmail_class = 'server'\nname = 'Linux'\n", 3, "unknown key 'name'"),
    ("[classes]\n", 1, "unknown table 'classes'"),
    ("[[class]\n", 1, ""),
])
def test_class_file_errors_name_the_line(text, line, needle):
    assert_fails_at(lambda: parse_classes(text, "my.toml"), ClassesError, "my.toml", line, needle)


def test_replay_shows_the_class_and_takes_another_map(tmp_path):
    text = fpd("replay", str(SAMPLE), check=True).stdout.splitlines()
    assert text and all(" class=server " in ln for ln in text if " Linux " in ln), text[:3]
    rows = [json.loads(ln) for ln in fpd("replay", "--format", "jsonl", str(SAMPLE), check=True).stdout.splitlines()]
    assert {r["mail_class"] for r in rows if r["os"] and r["os"]["name"] == "Linux"} == {"server"}
    assert all(r["mail_class"] == "unknown" for r in rows if r["os"] is None and r["app"] is None)
    mine = tmp_path / "classes.toml"
    mine.write_text("[[class]]\nmail_class = 'embedded'\nos_name = '^Linux$'\n")
    rows = [json.loads(ln) for ln in
            fpd("replay", "--format", "jsonl", "--classes", str(mine), str(SAMPLE), check=True).stdout.splitlines()]
    assert {r["mail_class"] for r in rows if r["os"] and r["os"]["name"] == "Linux"} == {"embedded"}


def test_matcher_takes_its_class_map_from_the_caller():
    """The matcher reads no file: without a map every class is unknown; the caller's map decides."""
    from fingerprintd.matcher import Matcher, parse_raw_sig

    db = load(OUR_DB)
    probe = parse_raw_sig("4:64+0:0:1460:mss*44,7:mss,sok,ts,nop,ws:df,id+:0")
    sig = Matcher(db).find_probe(probe, True)[0]
    assert sig is not None and sig.label.text == "Linux 4.19 and newer"
    assert Matcher(db).classes.of(sig.label) == "unknown"
    mine = parse_classes("[[class]]\nmail_class = 'embedded'\nos_name = '^Linux$'\n")
    assert Matcher(db, classes=mine).classes.of(sig.label) == "embedded"
    assert Matcher(db, classes=bundled_classes()).classes.of(sig.label) == "server"
