"""Every snippet of the docs is run or checked by a test.

Every fenced block of README.md and contrib/postfix/README.md is named in
tests/snippets.py (a new block fails here until a test claims it), but for the
sections listed in snippets.PENDING. tests/test_deploy.py runs or applies the
deployment ones as written, tests/test_readme.py the others (tests/test_redis.py
the ACL line); the two
test_deploy cannot run (the filters' command lines, which are the units'
ExecStart, and the systemctl lines, without systemd as PID 1) are checked here
against the units.
"""

from __future__ import annotations

import inspect
import re

from tests import snippets

DOCS = (snippets.README, snippets.POSTFIX_README)


def _unit_argv(name: str) -> list[str]:
    return snippets.commands(snippets.unit(snippets.UNITS / name)["ExecStart"])[0]


def test_every_contrib_file_is_used_by_a_test():
    shipped = {str(p.relative_to(snippets.ROOT)) for p in (snippets.ROOT / "contrib").rglob("*") if p.is_file()}
    assert shipped == set(snippets.CONTRIB), ("contrib files with no test", shipped - set(snippets.CONTRIB),
                                              "gone", set(snippets.CONTRIB) - shipped)
    setup = snippets.snippet(*snippets.SETUP)
    for path, tests in snippets.CONTRIB.items():
        for test in tests:
            text = (snippets.ROOT / "tests" / f"{test}.py").read_text()
            parts = path.split("/")[1:]
            # named by its path, its parts (ROOT / "contrib" / ...), or through the setup snippet it runs
            named = path in text or all(f'"{part}"' in text for part in parts) or (
                path in setup and "snippets.SETUP" in text) or (len(parts) == 2 and parts[0] in text
                                                                and parts[1] in text)
            assert named, (path, test)


def test_every_snippet_is_run_or_checked():
    refs = (*snippets.DEPLOYED, snippets.COMMANDS, snippets.SYSTEMCTL, *snippets.README_RUN, *snippets.REDIS_RUN)
    known = {snippets.snippet(*ref) for ref in refs}
    assert len(known) == len(refs)  # no two names for one block
    found = [(path.name, heads, lang, text) for path in DOCS for heads, lang, text in snippets.headed_blocks(path)]
    assert len(found) >= len(known)
    unrun = [(name, heads[-1:], lang, text.splitlines()[0]) for name, heads, lang, text in found
             if text not in known and not snippets.is_pending(heads)]
    assert not unrun, f"documented snippets that no test runs (name them in tests/snippets.py): {unrun}"


def test_every_named_snippet_is_used_by_its_test():
    """A name in tests/snippets.py claims a block only if the test that runs it uses that name."""
    users = {"test_deploy": snippets.DEPLOYED, "test_docs": (snippets.COMMANDS, snippets.SYSTEMCTL),
             "test_readme": snippets.README_RUN, "test_redis": snippets.REDIS_RUN}
    names = {id(v): k for k, v in vars(snippets).items() if k.isupper() and isinstance(v, tuple) and len(v) == 3
             and isinstance(v[0], type(snippets.README))}
    this = inspect.getsource(test_every_named_snippet_is_used_by_its_test)
    for test, refs in users.items():
        text = (snippets.ROOT / "tests" / f"{test}.py").read_text().replace(this, "")
        unused = [names[id(ref)] for ref in refs if not re.search(rf"\bsnippets\.{names[id(ref)]}\b", text)]
        assert not unused, (test, unused)


def test_pending_sections_are_listed_once_and_the_deployment_ones_are_not_pending():
    """PENDING is the one place for work in flight; the deployment sections are never in it."""
    assert len(set(snippets.PENDING)) == len(snippets.PENDING)
    assert not any(snippets.is_pending((d,)) for d in snippets.DEPLOY_SECTIONS)


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
