"""Conformance with p0f on real Linux-kernel SYNs and SYN+ACKs.

Two network namespaces joined by veth; the client's sysctls (initial TTL,
timestamps, SACK, window scaling, ECN, buffer sizes, IPv6 flow labels), its
SO_RCVBUF and the link MTU are varied; tcpdump captures both directions.
"""

from __future__ import annotations

import pytest

from tests.conftest import OUR_DB, diff_report, flow_neutral, need, run_p0f, run_replay
from tests.netns import VARIANTS, can_use_netns, capture_kernel_syns


@pytest.fixture(scope="module")
def kernel_capture(tmp_path_factory):
    ok, why = can_use_netns()
    need(ok, why)
    path = tmp_path_factory.mktemp("kernel") / "kernel.pcap"
    sent = capture_kernel_syns(path)
    return path, sent


@pytest.mark.parametrize("p0f_bugs", [False, True], ids=["fixed", "p0f-bugs"])
@pytest.mark.parametrize("filter_args", [["--all-ports"], []], ids=["all-tcp", "port-25"])
def test_kernel_syns_match_p0f(p0f_bin, kernel_capture, tmp_path, p0f_bugs, filter_args):
    pcap, sent = kernel_capture
    expected = run_p0f(p0f_bin, pcap, tmp_path / "p0f.log")
    got = run_replay(pcap, tmp_path / "ours.log", *filter_args, *(["--p0f-bugs"] if p0f_bugs else []))
    if not p0f_bugs:  # the IPv6 flow-label rule differs from p0f on purpose
        expected, got = flow_neutral(expected), flow_neutral(got)
    assert got == expected, diff_report(expected, got)


def test_kernel_ipv6_syns_get_their_ipv4_twins_verdict(kernel_capture, tmp_path):
    """The flow-label rule on real kernels: each variant's IPv6 SYN is named as its IPv4 SYN is
    (p0f: ??? for every IPv6 SYN that carries a flow label, i.e. all but one variant here)."""
    pcap, sent = kernel_capture
    verdicts = {}
    for ln in run_replay(pcap, tmp_path / "ours.log"):
        if "mod=syn|" in ln:
            port = int(ln.split("|cli=")[1].split("|")[0].rsplit("/", 1)[1])
            verdicts[port] = ln.split("|os=")[1].split("|dist=")[0] + "|" + ln.split("|params=")[1].split("|")[0]
    pairs = [(port, port + 50) for name, server, port, count in sent if ":" not in server]
    assert len(pairs) == len(VARIANTS)
    for v4, v6 in pairs:
        assert verdicts[v6] == verdicts[v4], (v4, verdicts[v4], verdicts[v6])
    assert sum(1 for v4, v6 in pairs if not verdicts[v6].startswith("???")) >= len(VARIANTS) - 3


def test_bundled_database_names_modern_linux(kernel_capture, tmp_path):
    """The bundled database's additions: today's Linux kernel, IPv4 and IPv6 (p0f 3.09b: generic or ???)."""
    pcap, _ = kernel_capture
    lines = run_replay(pcap, tmp_path / "ours.log", db=OUR_DB)
    syn = {int(ln.split("|cli=")[1].split("|")[0].rsplit("/", 1)[1]): ln for ln in lines if "mod=syn|" in ln}
    # Defaults and MTU 1400 (mss*44..48), IPv4 and IPv6. Jumbo frames (mss*7) stay generic.
    for port in (30000, 30001, 30050, 30051, 31000, 31001, 31050, 31051):
        assert "|os=Linux 4.19 and newer|" in syn[port], syn[port]
    assert "|os=Linux 2.2.x-3.x|" in syn[31100]
