"""Real scanning tools against a host in a network namespace: nmap, masscan and zmap as Debian ships them.

Each tool scans one address (the server end of a veth pair this test creates),
port 25, once, at a bounded rate; tcpdump records what it sent.  The bundled
database must name every probe as that tool (class "!", mail class scanner),
and p0f 3.09b, loading the same database, must log the same lines.
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import OUR_DB, need, run_p0f, run_replay
from tests.netns import NetnsPair, can_use_netns

FAKE_ROUTER = "02:00:00:00:00:fe"  # masscan and zmap build their own frames: any next-hop MAC will do


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    ok, why = can_use_netns()
    need(ok, why)
    for tool in ("nmap", "masscan", "zmap"):
        need(shutil.which(tool) is not None, f"{tool} is not installed (make test installs it as root)")
    tmp = tmp_path_factory.mktemp("scans")
    (tmp / "allow-all.conf").write_text("")  # zmap's default blocklist excludes private ranges
    pcap = tmp / "scans.pcap"
    with NetnsPair(net=94) as pair:
        pair.start_listener()
        cap = pair.capture(pcap, "tcp dst port 25 and tcp[tcpflags] & tcp-syn != 0 or "
                                 "ip6 and tcp dst port 25")
        try:
            ns = pair.cli
            pair.ns(ns, "nmap", "-sS", "-n", "-Pn", "-p", "25", "--max-retries", "0", pair.server4, timeout=60)
            pair.ns(ns, "nmap", "-6", "-sS", "-n", "-Pn", "-p", "25", "--max-retries", "0", pair.server6,
                    timeout=60)
            pair.ns(ns, "masscan", "-p25", pair.server4, "--rate", "50", "--wait", "0", "-e", pair.vcli,
                    "--router-mac", FAKE_ROUTER, timeout=60)
            pair.ns(ns, "zmap", "-p", "25", "-i", pair.vcli, "-G", FAKE_ROUTER, "-r", "50", "-c", "0",
                    "-b", str(tmp / "allow-all.conf"), "--max-targets", "1", f"{pair.server4}/32", timeout=60)
        finally:
            pair.stop_capture(cap)
    return pair, pcap


def _app_by_sig(lines: list[str]) -> list[tuple[str, str]]:
    out = []
    for ln in lines:
        if "mod=syn|" in ln:
            what = ln.split("|app=")[1] if "|app=" in ln else "os=" + ln.split("|os=")[1]
            out.append((ln.split("|raw_sig=")[1], what.split("|")[0]))
    return sorted(out)


def test_scanners_are_named(scans, tmp_path):
    _, pcap = scans
    got = _app_by_sig(run_replay(pcap, tmp_path / "ours.log", db=OUR_DB))
    # Every probe is a tool's, none an OS's; one of each (nmap over IPv4 and IPv6).
    assert sorted(app for _, app in got) == sorted(["NMap SYN scan", "NMap SYN scan", "masscan", "zmap"]), got
    by_tool = {app + (" v6" if sig.startswith("6:") else ""): sig for sig, app in got}
    assert by_tool["masscan"].startswith("4:255+0:0:0:1024,0:::")
    assert by_tool["zmap"].startswith("4:255+0:0:0:65535,0:::")
    assert by_tool["NMap SYN scan v6"].startswith("6:255+0:0:1460:1024,0:mss:")


def test_p0f_agrees_with_our_database(p0f_bin, scans, tmp_path):
    _, pcap = scans
    ours = run_replay(pcap, tmp_path / "ours.log", db=OUR_DB)
    theirs = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log", db=OUR_DB)
    assert ours == theirs


def test_stock_p0f_database_misses_the_new_ones(scans, tmp_path):
    """Without the additions: masscan and zmap unknown, nmap over IPv6 a fuzzy generic Linux."""
    _, pcap = scans
    got = dict(_app_by_sig(run_replay(pcap, tmp_path / "stock.log")))
    assert sorted(got.values()) == sorted(["NMap SYN scan", "os=???", "os=???", "os=Linux 2.2.x-3.x (barebone)"])
