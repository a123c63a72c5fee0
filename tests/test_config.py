"""Service configuration: file errors name file:line; flags override; serve fails cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fingerprintd.config import (
    BY_NAME,
    OPTIONS,
    SECTIONS,
    Config,
    ConfigError,
    apply_arguments,
    load_config,
    render_markdown,
    render_toml,
)
from tests.conftest import ROOT, assert_fails_at, need


def test_defaults_run_without_a_file():
    cfg = Config()
    assert (cfg.interfaces, cfg.ports, cfg.listen) == (["any"], [25], ["127.0.0.1:50051"])
    assert (cfg.max_connections, cfg.ttl_seconds) == (1_000_000, 600.0)


def test_file_overrides_defaults(tmp_path):
    p = tmp_path / "f.toml"
    p.write_text('[capture]\ninterfaces = ["eth0", "eth1"]\nports = [25, 587]\n[api]\nlisten = ["unix:/run/x"]\n'
                 '[table]\nttl_seconds = 60\n[daemon]\nuser = "nobody"\n')
    cfg = load_config(p)
    assert (cfg.interfaces, cfg.ports, cfg.listen, cfg.ttl_seconds, cfg.user) == (
        ["eth0", "eth1"], [25, 587], ["unix:/run/x"], 60, "nobody")


@pytest.mark.parametrize("text,line,needle", [
    ("[capture]\nports = [25, 70000]\n", 2, "port out of range"),
    ("[capture]\nports = 25\n", 2, "ports must be a list of integers"),
    ("[capture]\ninterface = ['eth0']\n", 2, "unknown option 'interface'"),
    ("[api]\nlisten = []\n", 2, "at least one API address"),
    ("[api]\ntls_cert = 'c.pem'\n", 2, "go together"),
    ("[mail]\n", 1, "unknown section [mail]"),
    ("[table]\nttl_seconds = 0\n", 2, "must be positive"),
    ("[daemon]\nlog_level = 'loud'\n", 2, "log_level"),
    ("[capture]\nsnaplen = 64\n", 2, "snaplen must be at least 96"),
    ("[table]\nttl_seconds = '1'\n", 2, "ttl_seconds must be a number"),
    ("[api]\nmetrics = 'nowhere'\n", 2, "metrics is HOST:PORT"),
])
def test_config_errors(tmp_path, text, line, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    assert_fails_at(lambda: load_config(p), ConfigError, str(p), line, needle)


def _serve(*args, user=None):
    pre = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                                   "--inh-caps=-all"]
    return subprocess.run([*pre, sys.executable, "-m", "fingerprintd", "serve", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


@pytest.mark.parametrize("args,needle", [
    (["--config", "/nonexistent.toml"], "/nonexistent.toml"),
    (["--policy", "BADPOLICY", "-i", "lo"], "policy.toml:1: "),
    (["--signatures", "BADFP", "-i", "lo"], "bad.fp:2: "),
    (["-i", "nosuchif0", "--grpc", "unix:SOCK"], "nosuchif0"),
    (["--port", "0"], "port out of range"),
])
def test_serve_fails_with_one_line(tmp_path, args, needle):
    (tmp_path / "policy.toml").write_text("[[rule\n")
    (tmp_path / "bad.fp").write_text("classes = unix\n[nope]\n")
    subst = {"BADPOLICY": str(tmp_path / "policy.toml"), "BADFP": str(tmp_path / "bad.fp"),
             "SOCK": str(tmp_path / "s.sock")}
    proc = _serve(*[subst.get(a, a) for a in args])
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert needle in last and "Traceback" not in proc.stderr, proc.stderr


def test_serve_without_cap_net_raw_says_how_to_grant_it(tmp_path):
    need(os.geteuid() == 0, "needs root to run the test as an unprivileged user")
    os.chmod(tmp_path, 0o777)
    proc = _serve("-i", "lo", "--grpc", f"unix:{tmp_path}/s.sock", user=65534)
    assert proc.returncode == 2, proc.stderr
    assert "CAP_NET_RAW" in proc.stderr and "setcap" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_with_the_api_address_taken(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _serve("-i", "lo", "--grpc", f"127.0.0.1:{port}")
    need(not (proc.returncode == 2 and "cannot capture" in proc.stderr),
         "needs capture privileges to get as far as the API")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("{")]  # JSON log lines aside
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0]


def test_example_config_loads():
    cfg = load_config(ROOT / "contrib" / "fingerprintd.toml")
    assert cfg == Config()  # the example spells out the embedded defaults


def test_example_config_and_readme_table_are_generated_from_the_declarations():
    """contrib/fingerprintd.toml and the README's table are what `python -m fingerprintd.config` prints
    (regenerate them with it when an option changes)."""
    assert (ROOT / "contrib" / "fingerprintd.toml").read_text() == render_toml()
    readme = (ROOT / "README.md").read_text()
    assert render_markdown() in readme


def test_every_option_is_a_key_a_flag_and_a_docs_line(tmp_path):
    """Each declared option is reachable three ways, and each way sets the same attribute: a
    file key, a serve flag, a line of the README table. The values used differ from the defaults,
    so an option that is not wired through stays at its default and fails here."""
    from fingerprintd.cli import build_parser

    samples = {"str": ("x1", "x1"), "int": (4321, "4321"), "float": (12.5, "12.5"), "bool": (True, None),
               "list[str]": (["a", "b"], ["a", "b"]), "list[int]": ([26, 27], ["26", "27"])}
    special = {"p0f_socket_mode": ("0640", "0640"), "analyzer_udp": ("127.0.0.1:9", "127.0.0.1:9"),
               "metrics": ("127.0.0.1:9", "127.0.0.1:9"), "analyzer_allow": (["10.0.0.0/8"], ["10.0.0.0/8"]),
               "log_level": ("debug", "debug"), "tls_cert": ("", ""), "tls_key": ("", ""),
               "redis_url": ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0")}
    lines, argv = [], ["serve"]
    for section, names in SECTIONS.items():
        lines.append(f"[{section}]")
        for name in names:
            value, text = special.get(name, samples[BY_NAME[name].kind])
            lines.append(f"{name} = {json.dumps(value)}")
            flag = BY_NAME[name].flags[0]
            if text is None:
                argv.append(flag)
            else:
                for item in text if isinstance(text, list) else [text]:
                    argv += [flag, item]
    p = tmp_path / "all.toml"
    p.write_text("\n".join(lines) + "\n")
    from_file = load_config(p)
    args = build_parser().parse_args(argv)
    from_flags = Config()
    apply_arguments(from_flags, args)
    assert from_file == from_flags
    defaults = Config()
    changed = {o.name for o in OPTIONS if getattr(from_file, o.name) != getattr(defaults, o.name)}
    assert changed == {o.name for o in OPTIONS} - {"tls_cert", "tls_key"}
    table = render_markdown()
    readme = (ROOT / "README.md").read_text()
    for opt in OPTIONS:
        assert f"`[{opt.section}] {opt.name}`" in table and f"`{opt.flags[0]}`" in readme
