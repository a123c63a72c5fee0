"""Every unix socket we listen on replaces a stale socket and nothing else."""

from __future__ import annotations

import socket

import pytest

from fingerprintd.compat import P0fSocketServer
from fingerprintd.hosts import HostTable
from fingerprintd.server import build_server
from fingerprintd.unixsock import remove_stale_socket
from tests.helpers import fpd


def test_a_stale_socket_goes_and_a_missing_one_is_fine(tmp_path):
    path = tmp_path / "old.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # what a killed daemon leaves behind
    assert path.exists()
    remove_stale_socket(str(path))
    assert not path.exists()
    remove_stale_socket(str(path))


@pytest.mark.parametrize("open_at", [
    lambda p: P0fSocketServer(p, HostTable()),
    lambda p: build_server(None, [f"unix:{p}"]),  # type: ignore[arg-type]
])
def test_servers_refuse_to_delete_a_regular_file(tmp_path, open_at):
    precious = tmp_path / "main.cf"
    precious.write_text("myhostname = mx.example\n")
    with pytest.raises(OSError, match="exists and is not a socket"):
        open_at(str(precious))
    assert precious.read_text() == "myhostname = mx.example\n"


@pytest.mark.parametrize("command", ["policyd", "milter"])
def test_mail_commands_refuse_a_regular_file_with_one_line(tmp_path, command):
    precious = tmp_path / "main.cf"
    precious.write_text("myhostname = mx.example\n")
    proc = fpd(command, "--listen", f"unix:{precious}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "exists and is not a socket" in lines[0], proc.stderr
    assert precious.read_text() == "myhostname = mx.example\n"
