"""rspamd's own p0f module against fingerprintd's p0f socket (Debian's rspamd).

A real kernel SYN from a network namespace is captured by `fingerprintd serve
--p0f-socket`; a private rspamd (its own config, run and db directories,
loopback ports) scans a message with `rspamc --ip <that client>`, and its p0f
module must report the OS string fingerprintd gave.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import need
from tests.helpers import Served, rspamc_symbols, start_rspamd, wait_for_port
from tests.netns import NetnsPair, can_use_netns

P0F_CONF = """enabled = true;
socket = "{sock}";
timeout = 2s;
symbol = "P0F";
patterns {{
  WINDOWS = "^Windows.*";
  LINUX_OS = "^Linux.*";
}}
"""
MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\nMessage-ID: <1@example.org>\r\n\r\nhello\r\n"


@pytest.fixture
def rspamd(tmp_path):
    need(shutil.which("rspamd") is not None and shutil.which("rspamc") is not None,
         "rspamd is not installed (make test installs Debian's rspamd when root)")
    conf = tmp_path / "rspamd"
    port, proc = start_rspamd(conf, P0F_CONF.format(sock=tmp_path / "p0f.sock"))
    try:
        yield port, proc, conf
    finally:
        proc.terminate()
        proc.wait(20)


def test_rspamd_p0f_module_reads_our_socket(rspamd, tmp_path):
    ok, why = can_use_netns()
    need(ok, why)
    port, proc, conf = rspamd
    os.chmod(tmp_path, 0o755)
    with NetnsPair(net=83) as pair:
        pair.start_listener()
        served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"),
                        "--p0f-socket", str(tmp_path / "p0f.sock"))
        try:
            pair.connect(pair.server4, 1, 0, 37001)
            assert served.lookup(pair.client4, 37001, wait_ms=2000)["found"]
            wait_for_port(port, proc)
            lines, text = rspamc_symbols(port, pair.client4, MESSAGE)
            assert "link=Ethernet or modem" in lines["P0F"] and "distance=0" in lines["P0F"], text
            # The module's pattern matched the OS string our socket gave it.
            assert "[Linux 4.19 and newer]" in lines["LINUX_OS"], text
            assert "P0F" not in rspamc_symbols(port, "198.51.100.5", MESSAGE)[0]  # unknown client: no symbol
        finally:
            served.stop()
    assert "p0f" in Path(conf / "log" / "rspamd.log").read_text().lower()
