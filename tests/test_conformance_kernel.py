"""Conformance with p0f on real Linux-kernel SYNs and SYN+ACKs.

Two network namespaces joined by veth; the client's sysctls (initial TTL,
timestamps, SACK, window scaling, ECN, buffer sizes, IPv6 flow labels), its
SO_RCVBUF and the link MTU are varied; tcpdump captures both directions.
"""

from __future__ import annotations

import pytest

from tests.conftest import OUR_DB, STOCK_DB, diff_report, flow_neutral, need, run_p0f, run_replay
from tests.netns import FALLBACK, VARIANTS, can_use_netns, capture_kernel_syns, expected

VARIANT = {v["name"]: v for v in VARIANTS}


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


def _by_port(lines: list[str]) -> dict[tuple[str, int], str]:
    """("syn" | "syn+ack", client port) -> "label|params" of each p0f-log observation."""
    out = {}
    for ln in lines:
        if "mod=syn|" in ln or "mod=syn+ack|" in ln:
            port = int(ln.split("|cli=")[1].split("|")[0].rsplit("/", 1)[1])
            verdict = ln.split("|os=")[1].split("|dist=")[0] + "|" + ln.split("|params=")[1].split("|")[0]
            out["syn" if "mod=syn|" in ln else "syn+ack", port] = verdict
    return out


@pytest.mark.parametrize("db", [STOCK_DB, OUR_DB], ids=["p0f-db", "our-db"])
def test_kernel_ipv6_syns_get_their_ipv4_twins_verdict(kernel_capture, tmp_path, db):
    """The flow-label rule on real kernels: each variant's IPv6 SYN is named as its IPv4 SYN is
    (p0f: ??? for every IPv6 SYN that carries a flow label, i.e. all but one variant here)."""
    need(db.exists(), f"{db} is not installed")
    pcap, sent = kernel_capture
    verdicts = _by_port(run_replay(pcap, tmp_path / "ours.log", db=db))
    v4 = {name: port for name, server, port, _ in sent if ":" not in server}
    twins = [(v4[name], port) for name, server, port, _ in sent if ":" in server
             and "syn6" not in VARIANT[name]]  # rcvbuf64k: another MSS makes another window multiple
    assert len(twins) > 100
    for p4, p6 in twins:
        assert verdicts["syn", p6] == verdicts["syn", p4], (p4, verdicts["syn", p4], verdicts["syn", p6])
    named = sum(1 for _, p6 in twins if not verdicts["syn", p6].startswith("???"))
    # p0f's database knows about half of today's kernel variants; ours knows them all.
    assert named == len(twins) if db == OUR_DB else len(twins) // 3 <= named < len(twins)


def test_bundled_database_names_each_variant(kernel_capture, tmp_path):
    """Each connection of each variant, SYN and SYN+ACK, IPv4 and IPv6, gets the label the stack rules give
    it (netns.VARIANTS: "Linux 4.19 and newer" for the MSS sweep and every option set, p0f's older lines or
    the generic/fallback ones for windows an application's buffer chose)."""
    pcap, sent = kernel_capture
    verdicts = _by_port(run_replay(pcap, tmp_path / "ours.log", db=OUR_DB))
    wrong = []
    for name, server, first_port, count in sent:
        for port in range(first_port, first_port + count):
            for mod, syn in (("syn", True), ("syn+ack", False)):
                want = expected(VARIANT[name], syn, ":" in server)
                if verdicts[mod, port].split("|")[0] != want:
                    wrong.append((name, server, mod, want, verdicts[mod, port]))
    assert not wrong, wrong[:10]
    assert len(sent) == 2 * len(VARIANTS) - sum(1 for v in VARIANTS if v.get("mtu", 1500) < 1280)


# Labels of generic lines and of the family fallback among the expectations in netns.VARIANTS.
GENERIC = {"Linux 2.2.x-3.x", FALLBACK}


def test_accuracy_on_kernel_syns(kernel_capture):
    """benchmarks/accuracy.py's kernel rows: every connection's SYN and SYN+ACK is Linux with the bundled
    database, none unknown, IPv6 included; specific for all but the small-buffer SYNs (the issue's goals:
    100% Linux, >= 95% specific, no ???); p0f 3.09b's database names fewer, never more."""
    from benchmarks.accuracy import STOCK, kernel_rows, score

    pcap, sent = kernel_capture
    rows = kernel_rows(pcap, sent, net=77)
    ours = score(rows, pcap.parent, OUR_DB)["all"]
    generic = sum(count for name, server, _, count in sent
                  if expected(VARIANT[name], True, ":" in server) in GENERIC)
    assert len(rows) == 2 * sum(count for *_, count in sent)  # each connection: its SYN and its SYN+ACK
    assert ours == {"correct-specific": len(rows) - generic, "correct-generic": generic}, ours
    assert generic <= 0.05 * len(rows) / 2  # of the SYNs
    if STOCK.exists():
        stock = score(rows, pcap.parent, STOCK)["all"]
        assert stock.get("correct-specific", 0) < ours["correct-specific"]
        assert stock.get("unknown", 0) > 0
