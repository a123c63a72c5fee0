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

from fingerprintd.classes import bundled_classes
from fingerprintd.context import Context, derive, from_milter, from_postfix, parse_dynamic_names
from fingerprintd.engine import Engine
from fingerprintd.learn import verdict_fields
from fingerprintd.matcher import Matcher
from fingerprintd.policy import PolicyError, parse_policy
from tests.conftest import ROOT, assert_fails_at
from tests.craft import Shape, frame
from tests.scenarios import (
    KERNEL_PORTS,
    KERNEL_ROWS,
    ROWS,
    Api,
    database,
    kernel_syns,
    score_of,
    syn,
    through_filters,
)

NAMES = parse_dynamic_names((ROOT / "signatures" / "dynamic-names.toml").read_text())
IP46 = socket.inet_aton("203.0.113.46")
WIN7 = Shape(ttl=117, mss=1460, win=8192, wscale=8, layout=("mss", "nop", "ws", "nop", "nop", "sok"))


def observe(shape: Shape = WIN7, src: str = "203.0.113.7"):
    """One SYN through the engine with the bundled database and classes."""
    rng = random.Random(2)
    obs = Engine(Matcher(database(), classes=bundled_classes())).feed(
        bytes(frame(shape, src, "192.0.2.25", 40000, 25, rng, seq=rng.randrange(1, 1 << 31))), 1, 1_700_000_000, 0)
    assert obs is not None and obs.fp.mail_class == "desktop"
    return obs


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
    obs = observe()
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

    (tmp_path / "names.toml").write_text("[settings]\naddress_digits = false\n"
                                         "[[dynamic]]\nname = 'ours'\nregex = '\\.lab\\.example$'\n")
    (tmp_path / "policy.toml").write_text("[settings]\ndynamic_names = 'names.toml'\n"
                                          "[[rule]]\nname = 'dyn'\nrdns_dynamic = true\nscore = 1\n")
    policy = load_policy(tmp_path / "policy.toml")
    obs = observe(src="203.0.113.46")
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

@pytest.fixture
def api(tmp_path):
    a = Api(tmp_path)
    yield a
    a.close()


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

def test_kernel_syns_of_a_linux_mta(api, tmp_path):
    syns = kernel_syns(tmp_path)
    assert set(KERNEL_PORTS) <= set(syns), sorted(syns)
    api.service.ingest([syns[p] for p in KERNEL_PORTS], 1)
    for row, port, mss in zip(KERNEL_ROWS, KERNEL_PORTS, (1460, 1240), strict=True):
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
