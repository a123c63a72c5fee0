"""The documented snippets, read from the docs themselves so a test and its doc cannot drift.

A snippet is a fenced block; it is named by its file, its info string and its
first line. tests/test_deploy.py runs or applies each one it names here, and
tests/test_docs.py checks that every block of the deployment docs is one of
them (or is checked by test_docs itself).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.conftest import ROOT

README = ROOT / "README.md"
POSTFIX_README = ROOT / "contrib" / "postfix" / "README.md"
UNITS = ROOT / "contrib" / "systemd"
# The README sections the deployment tests cover (the rest of the README belongs elsewhere).
DEPLOY_SECTIONS = ("## Use with Postfix / SpamAssassin", "## Deployment")

_FENCE = re.compile(r"^```([\w.-]*)\n(.*?)^```$", re.S | re.M)


def blocks(path: Path, sections: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(info string, text) of each fenced block, only within `sections` (## headings) if given."""
    text = path.read_text()
    if sections:
        parts = re.split(r"^(?=## )", text, flags=re.M)
        text = "".join(p for p in parts if p.startswith(sections))
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def snippet(path: Path, lang: str, first_line: str = "") -> str:
    """The one block of `path` with this info string (and first line)."""
    found = [t for lg, t in blocks(path) if lg == lang and t.startswith(first_line)]
    assert len(found) == 1, f"{path.name}: {len(found)} ```{lang} blocks starting {first_line!r}"
    return found[0]


# The snippets tests/test_deploy.py runs or applies as written: (file, info string, first line).
SETUP = (README, "sh", "install -D -m 644 -t /etc/sysusers.d ")
RSPAMD_GROUP = (README, "sh", "adduser _rspamd")
RSPAMD_CONF = (README, "ucl", "")
AMAVIS_CONF = (README, "perl", "")
NETNS = (README, "sh", "ip netns add")
MAIN_CF = (POSTFIX_README, "main.cf", "")
MASTER_CF = (POSTFIX_README, "master.cf", "")
DEPLOYED = (SETUP, RSPAMD_GROUP, RSPAMD_CONF, AMAVIS_CONF, NETNS, MAIN_CF, MASTER_CF)
# Checked by tests/test_docs.py: the filters' command lines (the units' ExecStart) and
# the systemctl lines (no systemd as PID 1 here: the units are verified statically).
COMMANDS = (README, "sh", "fingerprintd milter")
SYSTEMCTL = (README, "sh", "systemctl daemon-reload")


def commands(text: str) -> list[list[str]]:
    """A shell snippet's commands (backslash continuations joined), each split into words."""
    return [shlex.split(line) for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def unit(path: Path) -> dict[str, str]:
    """A unit file's keys (the last of repeated keys wins, continuations joined)."""
    keys: dict[str, str] = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys
