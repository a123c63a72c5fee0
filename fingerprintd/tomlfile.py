"""TOML reading whose errors say file:line, for the policy and config files."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable


class TomlError(ValueError):
    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source, self.line, self.message = source, line, message


class Located:
    """Parsed TOML plus where each table and key stands, for error messages.

    Sections are tuples: ("settings",) for [settings], ("rule", 2) for the
    third [[rule]].
    """

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
            line = int(m.group(1)) if m else max(1, len(text.splitlines()))  # "at end of document"
            raise TomlError(source, line, str(exc).split(" (at ")[0]) from None
        self.lines = _key_lines(text)

    def error(self, section: tuple, key: str | None, message: str) -> TomlError:
        line = self.lines.get((section, key)) or self.lines.get((section, None)) or 1
        return TomlError(self.source, line, message)


def _key_lines(text: str) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    section: tuple = ()
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if m := re.match(r"\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]", s):
            counts[m.group(1)] = counts.get(m.group(1), -1) + 1
            section = (m.group(1), counts[m.group(1)])
        elif m := re.match(r"\[\s*([A-Za-z0-9_.-]+)\s*\]", s):
            section = (m.group(1),)
        elif m := re.match(r"([A-Za-z0-9_-]+)\s*=", s):
            out.setdefault((section, m.group(1)), number)
            continue
        else:
            continue
        out.setdefault((section, None), number)
    return out


def compile_regexes(raw: dict, keys: Iterable[str], fail: Callable[[tuple, str | None, str], TomlError],
                    section: tuple, prefix: str = "") -> tuple[tuple[str, re.Pattern], ...]:
    """(key, compiled pattern) for each of `keys` present in a table; a bad one names its line
    (`fail` is Located.error)."""
    out = []
    for key in keys:
        if key in raw:
            try:
                out.append((key, re.compile(raw[key])))
            except (re.error, TypeError) as exc:
                raise fail(section, key, f"{prefix}bad regular expression for {key}: {exc}") from None
    return tuple(out)
