"""Service configuration: file errors name file:line; flags override; serve fails cleanly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fingerprintd.config import Config, ConfigError, load_config
from tests.conftest import ROOT, assert_fails_at


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
    ("[capture]\nports = 25\n", 2, "ports must be list[int]"),
    ("[capture]\ninterface = ['eth0']\n", 2, "unknown option 'interface'"),
    ("[api]\nlisten = []\n", 2, "at least one API address"),
    ("[api]\ntls_cert = 'c.pem'\n", 2, "go together"),
    ("[mail]\n", 1, "unknown section [mail]"),
    ("[table]\nttl_seconds = 0\n", 2, "must be positive"),
    ("[daemon]\nlog_level = 'loud'\n", 2, "log_level"),
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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the test as an unprivileged user")
def test_serve_without_cap_net_raw_says_how_to_grant_it(tmp_path):
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
    if proc.returncode == 2 and "cannot capture" in proc.stderr:
        pytest.skip("needs capture privileges to get as far as the API")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("{")]  # JSON log lines aside
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0]


def test_example_config_loads():
    cfg = load_config(ROOT / "contrib" / "fingerprintd.toml")
    assert cfg == Config()  # the example spells out the embedded defaults
