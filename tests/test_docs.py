"""Every snippet of the deployment docs is run or checked by a test.

The blocks of README.md's "Use with Postfix / SpamAssassin" and "Deployment"
sections and of contrib/postfix/README.md: tests/test_deploy.py runs or applies
the ones named in tests/snippets.py as written; the two it cannot run (the
filters' command lines, which are the units' ExecStart, and the systemctl
lines, without systemd as PID 1) are checked here against the units.
"""

from __future__ import annotations

import re

from tests import snippets

DOCS = ((snippets.README, snippets.DEPLOY_SECTIONS), (snippets.POSTFIX_README, ()))


def _unit_argv(name: str) -> list[str]:
    return snippets.commands(snippets.unit(snippets.UNITS / name)["ExecStart"])[0]


def test_every_deployment_snippet_is_run_or_checked():
    known = {snippets.snippet(*ref) for ref in (*snippets.DEPLOYED, snippets.COMMANDS, snippets.SYSTEMCTL)}
    found = [(path.name, lang, text) for path, sections in DOCS for lang, text in snippets.blocks(path, sections)]
    assert len(found) >= len(known)
    unrun = [(name, lang, text.splitlines()[0]) for name, lang, text in found if text not in known]
    assert not unrun, f"documented snippets that no test runs: {unrun}"


def test_the_filters_command_lines_are_the_units():
    documented = snippets.commands(snippets.snippet(*snippets.COMMANDS))
    units = [_unit_argv(f"fingerprintd-{kind}.service") for kind in ("milter", "policyd")]
    assert [["/usr/local/bin/fingerprintd", *argv[1:]] for argv in documented] == units


def test_systemctl_and_install_lines_name_the_shipped_units():
    shipped = sorted(p.name for p in snippets.UNITS.glob("*.service"))
    enable = snippets.commands(snippets.snippet(*snippets.SYSTEMCTL))[-1]
    assert enable[:3] == ["systemctl", "enable", "--now"]
    assert sorted(f"{name}.service" for name in enable[3:]) == shipped
    installed = [w for cmd in snippets.commands(snippets.snippet(*snippets.SETUP)) for w in cmd
                 if w.startswith("contrib/systemd/")]
    assert sorted(w.rpartition("/")[2] for w in installed) == shipped


def test_the_docs_and_the_units_name_the_same_sockets():
    serve = _unit_argv("fingerprintd.service")
    opt = {serve[i]: serve[i + 1] for i in range(1, len(serve) - 1) if serve[i].startswith("--")}
    # rspamd's p0f.conf and amavisd's method point where the service listens.
    assert f'socket = "{opt["--p0f-socket"]}";' in snippets.snippet(*snippets.RSPAMD_CONF)
    assert f"'p0f:{opt['--analyzer-udp']}'" in snippets.snippet(*snippets.AMAVIS_CONF)
    # Postfix names each filter's socket relative to its queue directory (smtpd's chroot).
    main_cf = snippets.snippet(*snippets.MAIN_CF)
    for kind, sock in (("milter", "milter.sock"), ("policyd", "policy.sock")):
        argv = _unit_argv(f"fingerprintd-{kind}.service")
        listen = argv[argv.index("--listen") + 1]
        assert listen == f"unix:/var/spool/postfix/fingerprintd/{sock}"
        assert f"unix:fingerprintd/{sock}" in main_cf
        assert argv[argv.index("--server") + 1] == opt["--grpc"]
    assert "/var/spool/postfix/" not in main_cf  # an absolute path does not exist inside the chroot
    assert not re.search(r"\$\{?other_milters", main_cf)  # undefined on a stock install


def test_the_unit_directories_are_the_tmpfiles_ones():
    tmpfiles = (snippets.ROOT / "contrib" / "tmpfiles" / "fingerprintd.conf").read_text()
    dirs = {ln.split()[1] for ln in tmpfiles.splitlines() if ln.startswith("d ")}
    for name in ("fingerprintd.service", "fingerprintd-milter.service", "fingerprintd-policyd.service"):
        assert snippets.unit(snippets.UNITS / name)["ReadWritePaths"] in dirs, name
