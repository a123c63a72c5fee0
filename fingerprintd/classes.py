"""Signature label -> mail class: the coarse kind of sender a policy scores.

Pure.  An OS label such as "Windows 10 or 11" or "Linux 2.6.x (Google
crawler)" is precise but awkward to score; the mail class says what kind of
machine that is from an MTA's point of view:

* ``server``   — Linux/BSD/Unix stacks that MTAs run on,
* ``desktop``  — Windows clients, macOS,
* ``mobile``   — Android, iOS, other phones,
* ``embedded`` — consoles, appliances, the odd old stack,
* ``scanner``  — scanning tools (NMap, masscan, zmap),
* ``unknown``  — no signature matched, or no class rule covers the label.

The mapping is a TOML file (``signatures/classes.toml`` is the default) of
ordered ``[[class]]`` rules; the first whose conditions all hold names the
class.  Conditions are Python regular expressions searched in the label's
parts: ``os_class`` (win, unix, other, ``!`` for tools), ``os_name``,
``flavor``.  Errors name file:line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from fingerprintd.data import default_classes
from fingerprintd.signatures import Label
from fingerprintd.tomlfile import Located, TomlError, compile_regexes

MAIL_CLASSES = ("server", "desktop", "mobile", "embedded", "scanner", "unknown")
_KEYS = ("os_class", "os_name", "flavor")

ClassesError = TomlError  # errors read "file:line: message"


@dataclass(frozen=True)
class ClassMap:
    source: str
    rules: tuple[tuple[str, tuple[tuple[str, re.Pattern], ...]], ...]  # (class, ((key, regex), ...))
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def of(self, label: Label | None) -> str:
        """The mail class of a matched label; "unknown" for no match."""
        if label is None:
            return "unknown"
        got = self._memo.get(label)
        if got is None:
            got = self._memo[label] = self._first(label)
        return got

    def _first(self, label: Label) -> str:
        parts = {"os_class": label.klass, "os_name": label.name, "flavor": label.flavor or ""}
        for mail_class, conditions in self.rules:
            if all(rx.search(parts[key]) for key, rx in conditions):
                return mail_class
        return "unknown"


NO_CLASSES = ClassMap("<no class map>", ())  # every label "unknown": for callers that need no classes


def parse_classes(text: str, source: str = "<classes>") -> ClassMap:
    doc = Located(text, source)
    data, fail = doc.data, doc.error
    for key in data:
        if key != "class":
            raise fail((key,), None, f"unknown table {key!r} (expected [[class]])")
    raw_rules = data.get("class", [])
    if not isinstance(raw_rules, list):
        raise fail(("class",), None, "class rules are written [[class]]")
    rules = []
    for i, raw in enumerate(raw_rules):
        sec = ("class", i)
        for key in raw:
            if key not in ("mail_class", "description", *_KEYS):
                raise fail(sec, key, f"unknown key {key!r} (expected mail_class, description, {', '.join(_KEYS)})")
        mail_class = raw.get("mail_class")
        if mail_class not in MAIL_CLASSES:
            raise fail(sec, "mail_class", f"mail_class must be one of {', '.join(MAIL_CLASSES)}")
        rules.append((mail_class, compile_regexes(raw, _KEYS, fail, sec)))
    return ClassMap(source, tuple(rules))


def load_classes(path: str | Path) -> ClassMap:
    p = Path(path)
    return parse_classes(p.read_text(encoding="utf-8"), str(p))


@cache
def bundled_classes() -> ClassMap:
    """The bundled map, read once (I/O: for the edges and tests, never the matcher)."""
    return load_classes(default_classes())
