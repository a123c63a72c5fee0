"""Conformance with p0f on real Linux-kernel SYNs and SYN+ACKs.

Two network namespaces joined by veth; the client's sysctls (initial TTL,
timestamps, SACK, window scaling, ECN, buffer sizes, IPv6 flow labels), its
SO_RCVBUF and the link MTU are varied; tcpdump captures both directions.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import diff_report, need, run_p0f, run_replay
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
    assert got == expected, diff_report(expected, got)


def test_every_kernel_connection_is_fingerprinted(kernel_capture, tmp_path):
    pcap, sent = kernel_capture
    lines = run_replay(pcap, tmp_path / "ours.log")
    syn = Counter()
    synack = Counter()
    for ln in lines:
        port = int(ln.split("|cli=")[1].split("|")[0].rsplit("/", 1)[1])
        if "mod=syn|" in ln:
            syn[port] += 1
        elif "mod=syn+ack|" in ln:
            synack[port] += 1
    for name, server, first_port, count in sent:
        for port in range(first_port, first_port + count):
            assert syn[port] == 1 and synack[port] == 1, (name, server, port)
    v4 = [ln for ln in lines if "mod=syn|" in ln and "|cli=10." in ln]
    v6 = [ln for ln in lines if "mod=syn|" in ln and "|cli=fd00" in ln]
    assert len(v4) == len(v6) == len(VARIANTS) * 2
    # What the kernel sent shows up in the signature.
    by_port = {int(ln.split("|cli=")[1].split("|")[0].rsplit("/", 1)[1]): ln for ln in v4 + v6}
    assert ":mss,sok,ts,nop,ws:df,id+:0" in by_port[30000]  # defaults
    assert "raw_sig=4:128+0:" in by_port[30100] and "raw_sig=6:128+0:" in by_port[30150]  # ttl128
    assert ":mss,nop,nop,sok,nop,ws:" in by_port[30200]  # no timestamps
    assert ",ecn:" in by_port[30500] and ":ecn,flow:" in by_port[30550]  # ECN
    assert "raw_sig=6:64+0:0:1440:mss*45,10:mss,sok,ts,nop,ws::0" in by_port[30850]  # flow label 0
    assert ":1360:" in by_port[31000] and "raw_mtu=1400" in " ".join(
        ln for ln in lines if "mod=mtu|" in ln and "/31000|" in ln)
