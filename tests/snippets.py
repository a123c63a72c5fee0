"""The documented snippets, read from the docs themselves so a test and its doc cannot drift.

A snippet is a fenced block; it is named by its file, its info string and a
pattern its text starts with. tests/test_deploy.py runs or applies the deployment
ones, tests/test_readme.py the rest of README.md's, and tests/test_docs.py checks
that every block of README.md and contrib/postfix/README.md is named here (and so
run or checked by some test), but for the sections in PENDING.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

from tests.conftest import ROOT

README = ROOT / "README.md"
POSTFIX_README = ROOT / "contrib" / "postfix" / "README.md"
UNITS = ROOT / "contrib" / "systemd"
# The README sections the deployment tests cover (the rest of the README belongs elsewhere).
DEPLOY_SECTIONS = ("## Use with Postfix / SpamAssassin", "## Deployment")

# A fence may be indented (a block within a list item): its text is then given without the indent.
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w.-]*)\n(?P<text>.*?)^(?P=indent)```$", re.S | re.M)


def _fenced(m: re.Match) -> tuple[str, str]:
    return m["lang"], textwrap.dedent(m["text"]) if m["indent"] else m["text"]


def blocks(path: Path, sections: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(info string, text) of each fenced block, only within `sections` (## headings) if given."""
    text = path.read_text()
    if sections:
        parts = re.split(r"^(?=## )", text, flags=re.M)
        text = "".join(p for p in parts if p.startswith(sections))
    return [_fenced(m) for m in _FENCE.finditer(text)]


def headed_blocks(path: Path) -> list[tuple[tuple[str, ...], str, str]]:
    """(the ## heading above it and the ### one within that, if any; info string; text) of each block."""
    text = path.read_text()
    out = []
    for m in _FENCE.finditer(text):
        heads: list[str] = []
        for head in re.findall(r"^#{2,3} .*$", text[:m.start()], re.M):
            heads = [head] if head.startswith("## ") else heads[:1] + [head]
        out.append((tuple(heads), *_fenced(m)))
    return out


def snippet(path: Path, lang: str, first_line: str = "") -> str:
    """The one block of `path` with this info string whose text starts with `first_line` (a regex)."""
    found = [t for lg, t in blocks(path) if lg == lang and re.match(first_line, t)]
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
# The ACL user of "Several MX hosts": tests/test_redis.py sets it up on a real server and tries what it may do.
REDIS_ACL = (README, "", "ACL SETUSER fingerprintd ")
REDIS_RUN = (REDIS_ACL,)
# The rest of README.md, run by tests/test_readme.py as written.
MAKE = (README, "sh", "make run ")
LOOKUP = (README, "sh", r"\.venv/bin/fingerprintd lookup ")
SERVE = (README, "sh", "fingerprintd serve +#")
P0F_DROPIN = (README, "sh", "fingerprintd serve --p0f-socket ")
REPLAY = (README, "sh", "fingerprintd replay ")
TEXT_EXAMPLE = (README, "", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d syn ")
P0F_LOG_EXAMPLE = (README, "", r"\[\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\] mod=syn\|")
SIGNATURES = (README, "sh", "fingerprintd signatures check ")
LAYOUT = (README, "", "fingerprintd/packet.py ")
LEARNING = (README, "sh", "install -d -m 750 /var/lib/fingerprintd\n")
REDIS_SERVE = (README, "sh", "fingerprintd serve --redis ")
ACCURACY = (README, "sh", r"python -m benchmarks\.accuracy ")
README_RUN = (MAKE, LOOKUP, SERVE, P0F_DROPIN, REPLAY, TEXT_EXAMPLE, P0F_LOG_EXAMPLE, SIGNATURES, LAYOUT, LEARNING,
              REDIS_SERVE, ACCURACY)
# Sections other work is rewriting now (headings, ## or ###, that start so): their blocks are not claimed
# yet, and each must be once that work lands. Empty: every block is claimed.
PENDING: tuple[str, ...] = ()


def is_pending(heads: tuple[str, ...]) -> bool:
    return any(h.lstrip("#").strip().startswith(p) for h in heads for p in PENDING)


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


# Every file of contrib/ and the tests that use it as shipped (tests/test_docs.py: a new file needs an entry,
# and each test named must name the file). The setup snippet installs sysusers, tmpfiles and the units.
CONTRIB = {
    "contrib/fingerprintd.toml": ("test_config", "test_readme"),  # generated from config.py; serve --config
    "contrib/grafana/fingerprintd.json": ("test_service_live",),  # every query names a scraped metric
    "contrib/logrotate/fingerprintd": ("test_readme", "test_service_live"),  # run by logrotate; the reopen
    "contrib/postfix/README.md": ("test_deploy", "test_docs"),  # main.cf, master.cf on Debian's Postfix
    "contrib/spamassassin/FingerprintD.pm": ("test_spamassassin", "test_readme"),  # taint mode; as installed
    "contrib/spamassassin/FingerprintD.pre": ("test_readme",),  # loads the plugin
    "contrib/spamassassin/fingerprintd.cf": ("test_spamassassin", "test_mail"),  # spamd scores the header
    "contrib/spamassassin/fingerprintd-plugin.cf": ("test_spamassassin",),  # the plugin's bands, perl -T
    "contrib/systemd/fingerprintd.service": ("test_deploy", "test_docs"),  # run as the unit says; verify
    "contrib/systemd/fingerprintd-milter.service": ("test_deploy", "test_docs"),
    "contrib/systemd/fingerprintd-policyd.service": ("test_deploy", "test_docs"),
    "contrib/sysusers/fingerprintd.conf": ("test_deploy", "test_readme"),  # the setup snippet
    "contrib/tmpfiles/fingerprintd.conf": ("test_deploy", "test_readme", "test_docs"),
}


def pending_blocks() -> list[tuple[str, str, str]]:
    """(heading, info string, first line) of the README blocks no test claims yet (PENDING sections)."""
    return [(heads[-1], lang, text.splitlines()[0]) for heads, lang, text in headed_blocks(README)
            if is_pending(heads)]


if __name__ == "__main__":  # python -m tests.snippets: what is pending
    for row in pending_blocks():
        print(*row, sep=" | ")
