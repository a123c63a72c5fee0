"""SpamAssassin with fingerprintd's rules (through spamd/spamc) and its plugin."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from tests.conftest import ROOT, need
from tests.helpers import SA_CONTRIB, Served, sa_site_dir
from tests.netns import NetnsPair, can_use_netns


def message(*fingerprints: str, received_from: str = "", body: str = "hello", helo: str = "client.example",
            rdns: str = "client.example") -> bytes:
    head = ""
    if received_from:
        # Postfix's form: "from HELO (VERIFIED-NAME-or-unknown [ADDR])".
        head += (f"Received: from {helo} ({rdns} [{received_from}])\r\n"
                 "\tby mx.test.example (Postfix) with ESMTP id 4ABC123; Sun, 29 Nov 2026 04:00:00 +0000 (UTC)\r\n")
    head += "".join(f"X-OS-Fingerprint: {fp}\r\n" for fp in fingerprints)
    return (head + "From: a@example.net\r\nTo: user@test.example\r\nSubject: t\r\n"
            "Date: Sun, 29 Nov 2026 04:00:00 +0000\r\nMessage-ID: <t@example.net>\r\n\r\n" + body + "\r\n").encode()


# SpamAssassin's test string: every working SpamAssassin scores it 1000 (the GTUBE rule).
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def spamd(tmp_path_factory):
    need(shutil.which("spamd") is not None and shutil.which("spamc") is not None,
         "SpamAssassin is not installed (make test installs spamassassin and spamc as root)")
    site = sa_site_dir()
    shutil.copy(SA_CONTRIB / "fingerprintd.cf", site / "fingerprintd.cf")
    (site / "local.cf").write_text("use_bayes 0\nskip_rbl_checks 1\ndns_available no\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("spamd") / "spamd.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(["spamd", "-L", "-i", "127.0.0.1", "-p", str(port), "-A", "127.0.0.1",
                                 f"--siteconfigpath={site}", "--max-children=1", "-u", "nobody", "-x",
                                 "--pidfile", str(site / "spamd.pid")], stdout=subprocess.DEVNULL, stderr=err)
    try:
        # spamd must really answer: a ping (spamc -K: "SPAMD/1.5 0"), and GTUBE scored as spam (spamc without
        # -x prints "0/0" when nothing answers, which would pass any "no hits" test).
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            ping = subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(port), "-K"], capture_output=True,
                                  timeout=30)
            if ping.returncode == 0 and ping.stdout.startswith(b"SPAMD/"):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"spamd did not answer a ping on port {port}: {log.read_text(errors='replace')[-2000:]}")
        gtube = report(port, message(body=GTUBE))
        assert "GTUBE" in gtube and float(gtube.split("/")[0]) >= 900, gtube  # GTUBE alone scores 1000
        yield port
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(site, ignore_errors=True)


def report(port: int, msg: bytes) -> str:
    """spamd's full report ("score/threshold" line, then the rule table); -x: an error, never "0/0",
    when spamd is not there."""
    out = subprocess.run(["spamc", "-x", "-d", "127.0.0.1", "-p", str(port), "-R"], input=msg,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr)
    return out.stdout.decode()


def spamc(port: int, msg: bytes) -> dict[str, float]:
    hits = {}
    for line in report(port, msg).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("FPD_"):
            hits[parts[1]] = float(parts[0])
    return hits


@pytest.mark.parametrize("fingerprints,hits", [
    # The points follow fingerprintd's score, in half-point bands; the OS rules name the stack (token score).
    (["Windows 10 or 11; dist: 12; link: Ethernet or modem; class: desktop; rules: desktop-no-rdns,client-helo-bare; "
      "id: 5d0c9b4e2a/desktop/nordns-bare; client: 203.0.113.45; score: 1.8"],
     {"FPD_WINDOWS": 0.0, "FPD_SCORE_1_5": 1.5}),
    # Exchange: the same Windows SYN, names that agree: no points.
    (["Windows 10 or 11; dist: 9; link: Ethernet or modem; class: desktop; rules: windows-server-mta; score: 0; "
      "id: 5d0c9b4e2a/desktop/fcrdns-match; client: 198.51.100.10"], {"FPD_WINDOWS": 0.0}),
    (["Windows XP; dist: 12; link: Ethernet or modem; class: desktop; rules: windows-xp; score: 2.3; id: x"],
     {"FPD_WINXP": 0.0, "FPD_SCORE_2": 2.0}),
    (["Linux 4.19 and newer; dist: 0; link: Ethernet or modem; class: server; rules: server-mta; id: x; score: -0.3"],
     {"FPD_LINUX": 0.0, "FPD_SCORE_NEG": -0.3}),
    (["Linux Android 8 and newer; dist: 2; link: ?; class: mobile; rules: mobile; score: 0.5; id: x"],
     {"FPD_MOBILE": 0.0, "FPD_SCORE_0_5": 0.5}),
    (["Nintendo 3DS; dist: 5; link: ???; class: embedded; rules: embedded,embedded-no-rdns; score: 1.2; id: x"],
     {"FPD_EMBEDDED": 0.0, "FPD_SCORE_1": 1.0}),
    (["zmap; dist: 0; link: ???; class: scanner; rules: scanner; score: 2.5; id: x"],
     {"FPD_SCANNER": 0.0, "FPD_SCORE_2_5": 2.5}),
    (["Windows 10 or 11; dist: 9; link: ?; class: desktop; rules: desktop-dynamic-rdns,client-helo-literal,learned; "
      "learned: +1; id: x; score: 3"], {"FPD_WINDOWS": 0.0, "FPD_SCORE_3": 3.0}),
    (["???; dist: 0; link: ???; class: unknown; rules: none; score: 0; id: x"], {"FPD_UNKNOWN": 0.0}),
    # p0f-era headers (the score last) still get their band.
    (["FreeBSD 9.x or newer; dist: 3; link: Ethernet or modem; score: -1"], {"FPD_UNIX": 0.0, "FPD_SCORE_NEG": -0.3}),
    # Only the first instance counts: a later (forged) one changes nothing.
    (["Linux 2.2.x-3.x; dist: 0; link: ???; rules: none; score: 0; id: x",
      "Windows XP; dist: 0; score: 2.3"], {"FPD_LINUX": 0.0}),
])
def test_rules(spamd, fingerprints, hits):
    assert spamc(spamd, message(*fingerprints)) == hits


def test_no_header_no_hits(spamd):
    out = report(spamd, message())
    # A real report from spamd: its score line and its rule table, with no FPD_ rule in it.
    assert out.splitlines()[0].endswith("/5.0") and "Content analysis details" in out, out
    assert " FPD_" not in out, out


PLUGIN_CF = """loadplugin Mail::SpamAssassin::Plugin::FingerprintD {pm}
fingerprintd_server 127.0.0.1:2345
fingerprintd_timeout 0.2
trusted_networks 127.0.0.0/8
internal_networks 127.0.0.0/8
use_bayes 0
skip_rbl_checks 1
header FPD_P_LINUX   eval:fingerprintd_os('Linux')
score  FPD_P_LINUX   -0.1
header FPD_P_WINDOWS eval:fingerprintd_os('Windows')
score  FPD_P_WINDOWS 1.3
header FPD_P_UNKNOWN eval:fingerprintd_unknown()
score  FPD_P_UNKNOWN 0.8
header FPD_P_NEAR    eval:fingerprintd_dist_below(9)
score  FPD_P_NEAR    0.01
"""


def test_plugin_queries_the_service_in_taint_mode(tmp_path):
    need(shutil.which("spamassassin") is not None, "SpamAssassin is not installed")
    ok, why = can_use_netns()
    need(ok, why)
    os.chmod(tmp_path, 0o755)
    site = sa_site_dir()
    (site / "fingerprintd.cf").write_text(PLUGIN_CF.format(pm=SA_CONTRIB / "FingerprintD.pm"))
    with NetnsPair(net=84) as pair:
        pair.start_listener()
        served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"),
                        "--analyzer-udp", "127.0.0.1:2345")
        try:
            pair.connect(pair.server4, 1, 0, 38001)
            assert served.lookup(pair.client4, 38001, wait_ms=2000)["found"]

            def score(msg: bytes) -> str:
                # perl -T: the plugin must be taint-clean.
                out = subprocess.run(["ip", "netns", "exec", pair.srv, "perl", "-T", "/usr/bin/spamassassin", "-L",
                                      "-t", f"--siteconfigpath={site}"], input=msg, capture_output=True,
                                     timeout=120)
                return out.stdout.decode() + out.stderr.decode()

            known = score(message(received_from=pair.client4))
            assert "FPD_P_LINUX" in known and "FPD_P_NEAR" in known, known
            assert "FPD_P_WINDOWS" not in known and "FPD_P_UNKNOWN" not in known
            unknown = score(message(received_from="198.51.100.23"))
            assert "FPD_P_" not in unknown.split("Content analysis details")[-1], unknown
        finally:
            served.stop()
            shutil.rmtree(site, ignore_errors=True)


# The plugin's score bands (contrib/spamassassin/fingerprintd-plugin.cf) and one policy rule by name.
PLUGIN_BANDS_CF = PLUGIN_CF + """header FPD_P_SRV_DYN eval:fingerprintd_rule('server-dynamic-rdns')
score  FPD_P_SRV_DYN 0.01
include {bands}
clear_report_template
report Content analysis details:
report _SUMMARY_
"""


def test_plugin_passes_the_relays_names_and_scores_the_verdict(tmp_path):
    """The same kernel SYN, two Received headers: the plugin sends the relay's rdns and HELO (fpd1), and
    the band follows fingerprintd's context-aware verdict under the bundled policy (trusted networks
    emptied: the namespace's client is in 10.0.0.0/8)."""
    need(shutil.which("spamassassin") is not None, "SpamAssassin is not installed")
    ok, why = can_use_netns()
    need(ok, why)
    os.chmod(tmp_path, 0o755)
    policy = tmp_path / "policy.toml"
    bundled = (ROOT / "signatures" / "policy.toml").read_text()
    policy.write_text(re.sub(r"^trusted_networks = .*$", "trusted_networks = []", bundled, count=1, flags=re.M))
    site = sa_site_dir()
    (site / "fingerprintd.cf").write_text(PLUGIN_BANDS_CF.format(pm=SA_CONTRIB / "FingerprintD.pm",
                                                                 bands=SA_CONTRIB / "fingerprintd-plugin.cf"))
    with NetnsPair(net=85) as pair:
        pair.start_listener()
        served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"),
                        "--analyzer-udp", "127.0.0.1:2345", "--policy", str(policy))
        try:
            pair.connect(pair.server4, 1, 0, 38101)
            assert served.lookup(pair.client4, 38101, wait_ms=2000)["found"]

            def hits(msg: bytes) -> dict[str, float]:
                out = subprocess.run(["ip", "netns", "exec", pair.srv, "perl", "-T", "/usr/bin/spamassassin", "-L",
                                      "-t", f"--siteconfigpath={site}"], input=msg, capture_output=True,
                                     timeout=120)
                text = out.stdout.decode()
                assert "Content analysis details" in text, text + out.stderr.decode()
                table = text.split("Content analysis details")[-1]
                return {m.group(2): float(m.group(1)) for m in re.finditer(r"^\s*(-?\d+\.\d+)\s+(FPD_\w+)", table,
                                                                          re.M)}

            # A Linux stack (class server) whose verified name its HELO agrees with: policy.toml's
            # server-mta, -0.3 and final -> the -0.3 band.
            mta = hits(message(received_from=pair.client4, rdns="mail.example.org", helo="mail.example.org"))
            assert mta.get("FPD_SA_NEG") == -0.3 and "FPD_P_SRV_DYN" not in mta, mta
            assert not {k for k in mta if k.startswith("FPD_SA_") and k != "FPD_SA_NEG"}, mta
            # The same SYN from a DSL name with a bare HELO: not server-mta (the name is dynamic); only
            # server-dynamic-rdns, +0.3 -> below the first band: no band at all.
            dyn = hits(message(received_from=pair.client4, rdns="dsl-85-0-2.dyn.example.net",
                               helo="DESKTOP-4F7K2LQ"))
            assert "FPD_P_SRV_DYN" in dyn and "FPD_P_LINUX" in dyn, dyn
            assert not {k for k in dyn if k.startswith("FPD_SA_")}, dyn
            # Both setups loaded (the header rules too): the header's band counts, the plugin's stays silent.
            shutil.copy(SA_CONTRIB / "fingerprintd.cf", site / "fingerprintd-header.cf")
            header = ("Linux 4.19 and newer; dist: 0; link: Ethernet or modem; class: server; rules: server-mta; "
                      "id: x; score: -0.3")
            both = hits(message(header, received_from=pair.client4, rdns="mail.example.org", helo="mail.example.org"))
            assert both.get("FPD_SCORE_NEG") == -0.3 and "FPD_SA_NEG" not in both, both
        finally:
            served.stop()
            shutil.rmtree(site, ignore_errors=True)


def test_plugin_reports_its_verdict_when_configured(tmp_path):
    """fingerprintd_feedback 1: SpamAssassin's verdict (ham here) reaches the service's reputation store for
    the id it was served; the same message again counts once."""
    need(shutil.which("spamassassin") is not None, "SpamAssassin is not installed")
    ok, why = can_use_netns()
    need(ok, why)
    from fingerprintd.reputation import Reputation, SqliteStore

    os.chmod(tmp_path, 0o755)
    policy = tmp_path / "policy.toml"
    bundled = (ROOT / "signatures" / "policy.toml").read_text()
    policy.write_text(re.sub(r"^trusted_networks = .*$", "trusted_networks = []", bundled, count=1, flags=re.M))
    store = tmp_path / "reputation.sqlite"
    site = sa_site_dir()
    (site / "fingerprintd.cf").write_text(PLUGIN_CF.format(pm=SA_CONTRIB / "FingerprintD.pm")
                                          + "fingerprintd_feedback 1\n")
    with NetnsPair(net=86) as pair:
        pair.start_listener()
        served = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"),
                        "--analyzer-udp", "127.0.0.1:2345", "--policy", str(policy), "--reputation", str(store))
        try:
            pair.connect(pair.server4, 1, 0, 38201)
            assert served.lookup(pair.client4, 38201, wait_ms=2000)["found"]
            msg = message(received_from=pair.client4, rdns="mail.example.org", helo="mail.example.org")
            for _ in range(2):
                out = subprocess.run(["ip", "netns", "exec", pair.srv, "perl", "-T", "/usr/bin/spamassassin", "-L",
                                      "-t", f"--siteconfigpath={site}"], input=msg, capture_output=True,
                                     timeout=120)
                assert b"X-Spam-Status: No" in out.stdout, out.stdout + out.stderr
            rep = Reputation(SqliteStore(store))
            learned = rep.explain()
            assert [(lr.key.split("/", 1)[1], round(lr.spam, 2), round(lr.ham, 2)) for lr in learned] == [
                ("server/fcrdns-match", 0.0, 1.0)], learned
        finally:
            served.stop()
            shutil.rmtree(site, ignore_errors=True)
