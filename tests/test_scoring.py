"""The 2026 score: the MTA's names as facts, the default policy's scenarios, the header's reasons.

The scenario rows (tests/scenarios.py) go through the real service (Service and
its gRPC server on a unix socket, fed SYNs built to the bundled signatures),
then through the Postfix policy service's decider and the milter with the
attributes and macros Postfix sends; real Linux-kernel SYNs (network
namespaces, MTU 1500 and 1280) go the same way.  tests/test_mail.py runs rows
through a real Postfix.
"""

from __future__ import annotations

import random
import socket
import time

import pytest

from fingerprintd import mail
from fingerprintd.config import Config
from fingerprintd.context import Context, derive, from_milter, from_postfix, parse_dynamic_names
from fingerprintd.learn import verdict_fields
from fingerprintd.policy import PolicyError, parse_policy
from fingerprintd.server import build_server
from fingerprintd.service import Service
from tests.conftest import ROOT, assert_fails_at, need
from tests.scenarios import ROWS, Row, milter_inputs, policy_attrs, syn

NAMES = parse_dynamic_names((ROOT / "signatures" / "dynamic-names.toml").read_text())
IP46 = socket.inet_aton("203.0.113.46")


# --- facts from names ------------------------------------------------------------------

@pytest.mark.parametrize("name,dynamic", [
    ("dsl-203-0-113-46.dyn.example-isp.net", True),       # the address's own digits
    ("46.113.0.203.customers.example.net", True),          # reversed
    ("cb00712e.example-isp.net", True),                    # hex
    ("pool-10-1-2-3.example-isp.net", True),               # a pool token
    ("c-24-1-2-3.hsd1.ma.comcast.net", True),              # an ISP's customer range
    ("mobile-1-2-3-4.lte.example-carrier.net", True),
    ("host47.example-isp.net", False),
    ("mail-bn1on0090.outbound.protection.outlook.com", False),
    ("mail.example-corp.de", False),
    ("static-203-0-113-46.example-isp.net", False),        # SA's __RDNS_STATIC exemption
    ("mx-203-0-113-46.example.net", False),                # a mail token exempts too
    ("whirlpool.example.com", False),                      # "pool" inside a word is no token
])
def test_dynamic_names(name, dynamic):
    assert bool(NAMES.why(name, IP46)) is dynamic, NAMES.why(name, IP46)


@pytest.mark.parametrize("ctx,facts,bucket", [
    # Postfix: no PTR at all.
    (from_postfix("unknown", "unknown", "DESKTOP-4F7K2LQ"),
     dict(rdns_verified=False, rdns_none=True, rdns_unverified=False, helo_bare=True, helo_matches=False),
     "nordns-bare"),
    # Postfix: client_name=unknown while reverse_client_name is set -> the PTR does not verify.
    (from_postfix("unknown", "host47.example-isp.net", "[203.0.113.46]"),
     dict(rdns_verified=False, rdns_none=False, rdns_unverified=True, helo_literal=True), "unverified-literal"),
    (from_postfix("mail-bn1on0090.outbound.protection.outlook.com", "mail-bn1on0090.outbound.protection.outlook.com",
                  "na01-bn1-OBE.outbound.protection.outlook.com"),
     dict(rdns_verified=True, rdns_dynamic=False, helo_matches=True, helo_bare=False), "fcrdns-match"),
    (from_postfix("mail.example-corp.de", "mail.example-corp.de", "exch01.corp.local"),
     dict(rdns_verified=True, helo_matches=False, helo_bare=False, helo_literal=False), "fcrdns-other"),
    (from_postfix("dsl-203-0-113-46.dyn.example-isp.net", "dsl-203-0-113-46.dyn.example-isp.net", "203.0.113.46"),
     dict(rdns_verified=True, rdns_dynamic=True, helo_literal=True), "dynamic-literal"),
    # The milter: "[ip]" for no verified name; the PTR from the default `_` macro.
    (from_milter("[203.0.113.46]", {"_": "host47.example-isp.net [203.0.113.46] (may be forged)"}, "x.example"),
     dict(rdns_verified=False, rdns_unverified=True, rdns_none=False, helo_matches=False), "unverified-other"),
    (from_milter("[203.0.113.46]", {"_": "unknown [203.0.113.46]"}, "localhost"),
     dict(rdns_verified=False, rdns_none=True, helo_bare=True), "nordns-bare"),
    # A temporary DNS failure says nothing: the names count as not known.
    (from_milter("[203.0.113.46]", {"{client_resolve}": "TEMP", "_": "unknown [203.0.113.46]"}, "localhost"),
     dict(rdns_verified=None, rdns_none=None, helo_bare=True), "unknown-bare"),
    # Nothing given (an old client): every fact unknown.
    (Context(), dict(known=False, rdns_verified=None, helo_literal=None), "nocontext"),
])
def test_facts(ctx, facts, bucket):
    got = derive(ctx, IP46, NAMES)
    assert {k: getattr(got, k) for k in facts} == facts
    assert got.bucket == bucket


def test_rules_on_names_and_facts_need_the_context():
    from tests.test_hosts_policy import observe

    policy = parse_policy("""
[[rule]]
name = "lh"
helo = "^localhost$"
score = 1
[[rule]]
name = "nordns"
rdns_verified = false
score = 0.5
[[rule]]
name = "plain"
score = 0.25
""")
    obs = observe("win7")
    with_ctx = policy.verdict(obs.fp, obs.pkt.src, from_postfix("unknown", "unknown", "LOCALHOST"))
    assert (with_ctx.score, with_ctx.rules) == (1.75, ("lh", "nordns", "plain"))
    bare = policy.verdict(obs.fp, obs.pkt.src)
    assert (bare.score, bare.rules) == (0.25, ("plain",))  # facts and names unknown: those rules do not fire
    assert with_ctx.key.split("/")[0] == bare.key.split("/")[0]  # the same stack, another bucket
    assert with_ctx.key.endswith("/desktop/nordns-bare") and bare.key.endswith("/desktop/nocontext")
    assert with_ctx.header.startswith(obs.fp.os_text + "; dist: ")  # \A-anchored SpamAssassin rules still match
    assert "; rules: lh,nordns,plain; id: " in with_ctx.header and with_ctx.header.endswith("; score: 1.75")


@pytest.mark.parametrize("text,line,needle", [
    ("[[rule]]\nname = 'a'\nrdns_dynamic = 'yes'\n", 3, "rdns_dynamic must be true or false"),
    ("[[rule]]\nname = 'a'\n\nhelo = '('\n", 4, "bad regular expression for helo"),
    ("[settings]\ndynamic_names = 'missing.toml'\n", 2, "cannot read"),
])
def test_policy_errors_name_the_line(tmp_path, text, line, needle):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    from fingerprintd.policy import load_policy

    assert_fails_at(lambda: load_policy(path), PolicyError, str(path), line, needle)


def test_dynamic_names_file_is_overridable(tmp_path):
    from fingerprintd.policy import load_policy
    from tests.test_hosts_policy import observe

    (tmp_path / "names.toml").write_text("[settings]\naddress_digits = false\n"
                                         "[[dynamic]]\nname = 'ours'\nregex = '\\.lab\\.example$'\n")
    (tmp_path / "policy.toml").write_text("[settings]\ndynamic_names = 'names.toml'\n"
                                          "[[rule]]\nname = 'dyn'\nrdns_dynamic = true\nscore = 1\n")
    policy = load_policy(tmp_path / "policy.toml")
    obs = observe("win7", src="203.0.113.46")
    ours = policy.verdict(obs.fp, obs.pkt.src, from_postfix("pc9.lab.example", "pc9.lab.example", "pc9"))
    bundled_would = policy.verdict(obs.fp, obs.pkt.src, from_postfix("dsl-203-0-113-46.dyn.isp.example",
                                                                     "dsl-203-0-113-46.dyn.isp.example", "x"))
    assert ours.rules == ("dyn",) and bundled_would.rules == ()
    bad = tmp_path / "bad.toml"
    bad.write_text("[[dynamic]]\nname = 'x'\nregex = '('\n")
    (tmp_path / "policy.toml").write_text("[settings]\ndynamic_names = 'bad.toml'\n")
    assert_fails_at(lambda: load_policy(tmp_path / "policy.toml"), PolicyError, str(tmp_path / "policy.toml"), 2,
                    f"{bad}:3: pattern 'x': bad regular expression")


# --- the scenarios through the service, the policy service and the milter ----------------------

class Api:
    """The real service with the bundled policy, its gRPC API on a unix socket."""

    def __init__(self, tmp_path) -> None:
        self.path = f"{tmp_path}/api.sock"
        self.service = Service(Config(listen=[f"unix:{self.path}"]))
        self.server, _ = build_server(self.service, self.service.cfg.listen)
        self.server.start()
        self.client = mail.VerdictClient(f"unix:{self.path}", timeout=5.0)  # generous: no timing is tested here

    def close(self) -> None:
        self.client.close()
        self.server.stop(0).wait()


@pytest.fixture
def api(tmp_path):
    a = Api(tmp_path)
    yield a
    a.close()


def through_filters(api: Api, row: Row, port: int) -> tuple[str | None, str | None]:
    """The header value the policy service PREPENDs and the one the milter adds (None: no header)."""
    from tests.test_mail_units import milter

    action = mail.PolicyDecider(api.client).decide(policy_attrs(row, port, f"inst.{port}"))
    prepended = action.removeprefix("PREPEND X-OS-Fingerprint: ") if action.startswith("PREPEND ") else None
    hostname, macros = milter_inputs(row)
    m = milter(api.client, macros=macros)
    m.connect(hostname, socket.AF_INET, (row.ip, port))
    m.hello(row.helo)
    m.envfrom("<a@example.net>")
    m.eom()
    added = dict(m.added).get("X-OS-Fingerprint")
    return prepended, added


def score_of(value: str | None) -> float | None:
    return None if value is None else float(verdict_fields(value)["score"])


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_scenario(api, row):
    rng = random.Random(row.name)
    port = 40000 + rng.randrange(20000)
    api.service.ingest([syn(row, port, rng, int(time.time()))], 1)
    obs, _ = api.service.hosts.lookup(socket.inet_aton(row.ip), port, 0)
    assert obs is not None and obs.fp.label is not None and obs.fp.label.name == row.os_name, obs and obs.fp
    prepended, added = through_filters(api, row, port)
    assert prepended == added, (prepended, added)  # the same names give the same verdict in both filters
    assert row.ok(score_of(prepended)), prepended
    if prepended is not None:
        fields = verdict_fields(prepended)
        assert prepended.startswith(obs.fp.os_text + "; dist: ")
        assert fields["client"] == row.ip and fields["id"].split("/")[1] == obs.fp.mail_class
        assert abs(score_of(prepended)) <= 2.5  # small: SpamAssassin's threshold is 5


def test_scores_are_context_conditional(api):
    """The same Windows SYN: an MTA's names score nothing, a desktop's score; the bundled policy decides."""
    rows = {r.name: r for r in ROWS}
    scores = {}
    for name in ("Exchange on-premises (Windows Server)", "Windows desktop, no rDNS", "Windows desktop, dynamic rDNS"):
        row = rows[name]
        rng = random.Random(name)
        port = 41000 + len(scores)
        api.service.ingest([syn(row, port, rng, int(time.time()))], 1)
        prepended, _ = through_filters(api, row, port)
        scores[name] = (score_of(prepended), verdict_fields(prepended)["rules"])
    assert scores == {
        "Exchange on-premises (Windows Server)": (0.0, "windows-server-mta"),
        "Windows desktop, no rDNS": (1.8, "desktop-no-rdns,client-helo-bare"),
        "Windows desktop, dynamic rDNS": (2.0, "desktop-dynamic-rdns,client-helo-literal"),
    }


# --- real kernel SYNs: a Linux MTA at MTU 1500 and behind a 1280-byte tunnel ----------------------

KERNEL_ROWS = (
    Row("Linux MTA (kernel SYN), MTU 1500", "", "203.0.113.80", "mx3.example.net", "mx3.example.net",
        "mx3.example.net", "<=0", os_name="Linux"),
    Row("Linux MTA (kernel SYN), MTU 1280", "", "203.0.113.80", "mx3.example.net", "mx3.example.net",
        "mx3.example.net", "<=0", os_name="Linux"),
)


def kernel_syns(tmp_path) -> dict[int, tuple[int, int, bytes]]:
    """Real SYNs from 203.0.113.80 (a client namespace) at MTU 1500 (ports 30000+) and 1280 (31000+)."""
    from fingerprintd.capture import open_offline
    from tests.netns import NetnsPair, can_use_netns

    ok, why = can_use_netns()
    need(ok, why)
    pcap = tmp_path / "kernel.pcap"
    with NetnsPair(net=88) as pair:
        pair.ns(pair.srv, "ip", "addr", "add", "203.0.113.1/24", "dev", pair.vsrv)
        pair.ns(pair.cli, "ip", "addr", "add", "203.0.113.80/24", "dev", pair.vcli)
        cap = pair.capture(pcap, "tcp port 25 and tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0")
        try:
            for mtu, first in ((1500, 30000), (1280, 31000)):
                pair.set_mtu(mtu)
                _connect_from(pair, "203.0.113.1", first)
        finally:
            pair.stop_capture(cap)
    out = {}
    capture = open_offline(str(pcap), None)
    for batch in capture.batches():
        for ts, us, data in batch:
            out[int.from_bytes(data[14 + 20:14 + 22], "big")] = (ts, us, data)
    return out


def _connect_from(pair, server: str, port: int) -> None:
    """One SYN to port 25 of `server` (no listener there: the SYN is what counts, a reset ends it)."""
    code = ("import socket,sys\ns=socket.socket()\ns.bind(('203.0.113.80',int(sys.argv[2])))\ns.settimeout(3)\n"
            "try:\n s.connect((sys.argv[1],25))\nexcept OSError:\n pass\ns.close()\n")
    import sys as _sys

    pair.ns(pair.cli, _sys.executable, "-c", code, server, str(port), timeout=30)


def test_kernel_syns_of_a_linux_mta(api, tmp_path):
    syns = kernel_syns(tmp_path)
    assert 30000 in syns and 31000 in syns, sorted(syns)
    api.service.ingest([syns[30000], syns[31000]], 1)
    for row, port, mss in zip(KERNEL_ROWS, (30000, 31000), (1460, 1240), strict=True):
        obs, _ = api.service.hosts.lookup(socket.inet_aton(row.ip), port, 0)
        assert obs is not None and obs.fp.label is not None and obs.fp.label.name == "Linux", obs and obs.fp
        assert f":{mss}:" in obs.fp.raw_sig  # the tunnel's MSS really is in the SYN
        prepended, added = through_filters(api, row, port)
        assert prepended == added and row.ok(score_of(prepended)), (row.name, prepended)
        assert verdict_fields(prepended)["rules"] == "server-mta"


def test_lookup_command_shows_the_rules_context_and_id(api, capsys):
    from fingerprintd import cli

    row = next(r for r in ROWS if r.name == "Windows desktop, dynamic rDNS")
    api.service.ingest([syn(row, 43000, random.Random(1), int(time.time()))], 1)
    rc = cli.main(["lookup", row.ip, "--port", "43000", "--server", f"unix:{api.path}", "--client-name",
                   row.client_name, "--reverse-name", row.reverse_name, "--helo", row.helo])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[1] == "verdict: score 2, action tag, rules desktop-dynamic-rdns, client-helo-literal", out
    assert out[2].startswith("context: dynamic-literal; id: ") and out[2].endswith("/desktop/dynamic-literal"), out
    assert out[3].startswith("header: Windows 10 or 11; ") and out[3].endswith("; score: 2"), out
    assert cli.main(["lookup", row.ip, "--port", "43000", "--server", f"unix:{api.path}"]) == 0
    assert "rules desktop-no-context" in capsys.readouterr().out  # no names given: the stack alone
