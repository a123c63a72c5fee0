"""Learning from outcomes: convergence on streams of real SYN shapes, the abuse caps, decay, the store,
`fingerprintd learn`/`reputation`, and the Feedback RPC through the real service."""

from __future__ import annotations

import email
import json
import mailbox
import random
import sqlite3
import time

import grpc
import pytest

from fingerprintd import cli, mail
from fingerprintd.config import Config
from fingerprintd.policy import load_policy
from fingerprintd.reputation import (
    DAY,
    EPOCH,
    MAX_ADJUSTMENT,
    MIN_EVIDENCE,
    Reputation,
    ReputationError,
    SqliteStore,
)
from fingerprintd.server import build_server
from fingerprintd.service import Service
from fingerprintd.v1 import fingerprintd_pb2 as pb
from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc
from tests.conftest import ROOT
from tests.scenarios import ROWS, STREAMS, public_address, simulate, syn

POLICY = load_policy(ROOT / "signatures" / "policy.toml")
KEY = "0123456789/desktop/nordns-bare"
T0 = EPOCH + 300 * DAY
CONVERGE_AFTER = 200  # messages per bucket: the stated convergence budget
TOLERANCE = 0.15  # of the limit MAX_ADJUSTMENT * (2p - 1)


@pytest.fixture
def rep(tmp_path):
    store = SqliteStore(tmp_path / "rep.sqlite")
    yield Reputation(store)
    store.close()


def _addr(rng: random.Random) -> str:
    return public_address(rng)


@pytest.mark.parametrize("stream", STREAMS, ids=[s.name for s in STREAMS])
def test_streams_converge_to_the_right_sign_and_size(rep, stream):
    """Known spam ratios per bucket: the adjustment's sign is right once it moves, and within
    CONVERGE_AFTER messages it is within TOLERANCE of MAX_ADJUSTMENT * (2p - 1)."""
    key, curve, _ = simulate(stream, CONVERGE_AFTER, POLICY, rep, start=T0)
    limit = MAX_ADJUSTMENT * (2 * stream.spam_ratio - 1)
    assert all(a == 0 for a in curve[:int(MIN_EVIDENCE) - 1])  # nothing before the minimum of evidence
    assert abs(curve[-1] - limit) <= TOLERANCE, (key, curve[-1], limit)
    if abs(limit) >= 0.5:  # a clear stream: the sign is right from the first adjustment on
        moved = [a for a in curve if a]
        assert moved and all((a > 0) == (limit > 0) for a in moved), moved[:10]
    assert all(abs(a) <= MAX_ADJUSTMENT for a in curve)


def test_each_stream_has_its_own_key(rep):
    keys = {simulate(s, 5, POLICY, rep, start=T0)[0] for s in STREAMS}
    assert len(keys) == len(STREAMS)
    assert {k.split("/", 1)[1] for k in keys} == {"desktop/dynamic-literal", "desktop/fcrdns-match",
                                                   "server/fcrdns-match", "mobile/dynamic-bare"}


def test_one_message_and_one_client_count_once(rep):
    assert rep.record(KEY, True, "203.0.113.9", "<a@x>", now=T0) == "counted"
    assert rep.record(KEY, True, "203.0.113.9", "<a@x>", now=T0) == "duplicate-message"
    assert rep.record(KEY, False, "203.0.113.9", "<b@x>", now=T0) == "duplicate-client"
    assert rep.record(KEY, True, "::ffff:203.0.113.9", "<c@x>", now=T0) == "duplicate-client"  # the same address
    # After the memory (SEEN_DAYS) the client may count again.
    assert rep.record(KEY, True, "203.0.113.9", "<d@x>", now=T0 + 31 * DAY) == "counted"
    with pytest.raises(ReputationError):
        rep.record("not-an-id", True, "203.0.113.9", now=T0)
    with pytest.raises(ReputationError):
        rep.record(KEY, True, "mail.example.com", now=T0)


def test_feedback_reads_a_client_address_in_every_form_a_lookup_takes(rep):
    # One client written as Postfix, the API and its callers write it: the same client each time.
    forms = ["2001:db8::9", "IPv6:2001:db8::9", "IPV6:2001:DB8::9", "[2001:db8::9]", " 2001:db8::9 "]
    results = [rep.record(KEY, True, form, f"<{i}@x>", now=T0) for i, form in enumerate(forms)]
    assert results == ["counted"] + ["duplicate-client"] * (len(forms) - 1)
    for bad in ("IPv6:", "2001:db8::9]", "203.0.113.9:25"):
        with pytest.raises(ReputationError, match="not an IP address"):
            rep.record(KEY, True, bad, now=T0)


def test_a_flood_from_one_source_moves_a_score_at_most_the_cap(rep):
    rng = random.Random(5)
    # A flood alone, from one address, then from one /24: never enough evidence to move anything.
    results = [rep.record(KEY, True, "198.51.100.7", f"<f{i}@x>", now=T0) for i in range(2000)]
    assert results.count("counted") == 1
    results = [rep.record(KEY, True, f"198.51.100.{rng.randrange(256)}", f"<g{i}@x>", now=T0) for i in range(2000)]
    assert results.count("counted") == rep.source_cap - 1
    assert rep.adjustment(KEY, now=T0) == 0.0
    # Beside real evidence (balanced, one per source), another source's flood moves it at most flood_cap.
    other = "0123456789/desktop/dynamic-literal"
    for i in range(40):
        rep.record(other, i % 2 == 0, _addr(rng), f"<h{i}@x>", now=T0)
    before = rep.adjustment(other, now=T0)
    for i in range(5000):
        rep.record(other, False, f"192.0.2.{rng.randrange(256)}", f"<k{i}@x>", now=T0)
    after = rep.adjustment(other, now=T0)
    assert before != after and abs(after - before) <= rep.flood_cap, (before, after, rep.flood_cap)
    assert rep.flood_cap == pytest.approx(0.2)


def test_counts_decay_and_vanish(rep, tmp_path):
    rng = random.Random(6)
    for i in range(30):
        rep.record(KEY, True, _addr(rng), f"<{i}@x>", now=T0)
    learned = rep.learned(KEY, now=T0)
    assert learned.spam == pytest.approx(30) and learned.adjustment == 0.75
    assert "30.0 spam, 0.0 ham" in learned.why and "= +0.75" in learned.why
    month = rep.learned(KEY, now=T0 + 30 * DAY)  # one half-life
    assert month.spam == pytest.approx(15) and month.adjustment == 0.0 and "below the minimum" in month.why
    assert rep.decay(now=T0 + 30 * DAY) == 0  # still worth keeping
    assert rep.decay(now=T0 + 300 * DAY) == 1 and rep.learned(KEY, now=T0 + 300 * DAY).why == "nothing learned"


def test_expired_marks_are_purged_as_outcomes_come(rep, tmp_path):
    """The file stays bounded: a maintenance pass every DECAY_EVERY outcomes drops marks past their time."""
    from fingerprintd.reputation import DECAY_EVERY

    for i in range(DECAY_EVERY - 1):
        rep.record(KEY, True, "198.51.100.7", f"<{i}@x>", now=T0)
    marks = sqlite3.connect(tmp_path / "rep.sqlite").execute("SELECT COUNT(*) FROM marks").fetchone()[0]
    assert marks == DECAY_EVERY + 1  # one per message, one for the client, one for its network
    rep.record(KEY, True, "198.51.100.8", "<last@x>", now=T0 + 31 * DAY)  # the pass, a month later
    marks = sqlite3.connect(tmp_path / "rep.sqlite").execute("SELECT COUNT(*) FROM marks").fetchone()[0]
    assert marks == 3  # only the last outcome's


def test_the_store_persists_in_wal_mode_and_resets_per_key(tmp_path):
    path = tmp_path / "rep.sqlite"
    store = SqliteStore(path)
    rep = Reputation(store)
    rng = random.Random(7)
    for i in range(25):
        rep.record(KEY, False, _addr(rng), f"<{i}@x>", now=T0)
    store.close()
    again = Reputation(SqliteStore(path))
    assert again.learned(KEY, now=T0).adjustment == round(-25 / 35, 2)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.reset(KEY) and not again.reset(KEY)
    assert again.adjustment(KEY, now=T0) == 0.0


def test_learn_and_reputation_commands(tmp_path, capsys):
    """`learn` reads message files, mbox and Maildir; `reputation` lists what was learned and why; --reset."""
    header = ("Windows 10 or 11; dist: 12; link: Ethernet or modem; class: desktop; rules: desktop-no-rdns; "
              "id: {key}; client: {ip}; score: 1.8")
    rng = random.Random(8)
    box = mailbox.mbox(str(tmp_path / "spam.mbox"))
    maildir = mailbox.Maildir(str(tmp_path / "Junk"), create=True)
    for i in range(24):
        # Ours first (the policy service PREPENDs it); a copy below it, forged by the sender, is not read.
        forged = header.format(key="ffffffffff/server/fcrdns-match", ip="192.0.2.1")
        msg = email.message_from_string(f"X-OS-Fingerprint: {header.format(key=KEY, ip=_addr(rng))}\n"
                                        f"Message-ID: <{i}@spam.example>\nSubject: {i}\n"
                                        f"X-OS-Fingerprint: {forged}\n\nbuy\n")
        (box if i % 2 else maildir).add(msg)
    box.flush()
    maildir.add(email.message_from_string("Subject: no header\n\nhi\n"))
    (tmp_path / "one.eml").write_text("X-OS-Fingerprint: unavailable; reason: timeout\nSubject: x\n\nhi\n")
    db = str(tmp_path / "rep.sqlite")
    rc = cli.main(["learn", "--spam", "--db", db, str(tmp_path / "spam.mbox"), str(tmp_path / "Junk"),
                   str(tmp_path / "one.eml")])
    out = capsys.readouterr().out
    assert rc == 0 and "26 messages read as spam: 24 counted, 1 no-header, 1 no-verdict" in out, out
    rc = cli.main(["learn", "--spam", "--db", db, str(tmp_path / "Junk")])
    assert rc == 0 and "13 messages read as spam: 12 duplicate-message, 1 no-header" in capsys.readouterr().out
    assert cli.main(["reputation", "--db", db, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["spam"], r["ham"], r["adjustment"]) for r in rows] == [(KEY, 24.0, 0.0, 0.71)]
    assert "= +0.71" in rows[0]["why"]
    assert cli.main(["reputation", "--db", db, "--reset", KEY]) == 0
    assert f"{KEY}: reset" in capsys.readouterr().out
    assert cli.main(["learn", "--ham", "--db", db, str(tmp_path / "missing")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err


# --- through the real service: Feedback and the learned score in Lookup ----------------------------

@pytest.fixture
def service(tmp_path):
    svc = Service(Config(listen=[f"unix:{tmp_path}/api.sock"], reputation=str(tmp_path / "rep.sqlite")))
    server, _ = build_server(svc, svc.cfg.listen)
    server.start()
    channel = grpc.insecure_channel(f"unix:{tmp_path}/api.sock")
    yield svc, pb_grpc.FingerprintStub(channel), f"unix:{tmp_path}/api.sock"
    channel.close()
    server.stop(0)


def test_feedback_moves_the_served_score(service, tmp_path, capsys):
    svc, stub, address = service
    row = next(r for r in ROWS if r.name == "Windows desktop, no rDNS")
    rng = random.Random(9)
    svc.ingest([syn(row, 40500, rng, int(time.time()))], 1)
    client = mail.VerdictClient(address, timeout=5.0)
    try:
        first = mail.PolicyDecider(client).decide(
            {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": row.ip,
             "client_port": "40500", "client_name": "unknown", "reverse_client_name": "unknown",
             "helo_name": row.helo, "instance": "i1"})
    finally:
        client.close()
    assert first.startswith("PREPEND X-OS-Fingerprint: Windows") and first.endswith("; score: 1.8"), first
    key = first.split("; id: ")[1].split(";")[0]
    # The header is all `learn` needs; here the same outcomes go through the Feedback RPC.
    results = [stub.Feedback(pb.FeedbackRequest(id=key, spam=True, client_ip=_addr(rng), message_id=f"<{i}@x>")).result
               for i in range(30)]
    assert results == ["counted"] * 30
    dup = stub.Feedback(pb.FeedbackRequest(id=key, spam=True, client_ip="203.0.113.200", message_id="<0@x>"))
    assert dup.result in ("counted", "duplicate-message")  # another client: the message id binds to its client
    names = pb.Context(client_name="unknown", reverse_name="unknown", helo_name=row.helo)
    served = stub.Lookup(pb.LookupRequest(ip=row.ip, port=40500, context=names)).verdict
    assert served.id == key and served.learned > 0.5 and served.score == pytest.approx(1.8 + served.learned)
    assert list(served.rules)[-1] == "learned" and f"; learned: +{served.learned:g}; " in served.header
    with pytest.raises(grpc.RpcError) as err:
        stub.Feedback(pb.FeedbackRequest(id="bogus", spam=True, client_ip="203.0.113.1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # `fingerprintd learn --server` speaks the same RPC.
    (tmp_path / "m.eml").write_text(f"X-OS-Fingerprint: {served.header}\nMessage-ID: <cli@x>\n\nhi\n")
    assert cli.main(["learn", "--ham", "--server", address, str(tmp_path / "m.eml")]) == 0
    assert "1 messages read as ham: 1 counted" in capsys.readouterr().out


def test_feedback_without_a_store_is_refused(tmp_path):
    svc = Service(Config(listen=[f"unix:{tmp_path}/api.sock"]))
    server, _ = build_server(svc, svc.cfg.listen)
    server.start()
    try:
        with grpc.insecure_channel(f"unix:{tmp_path}/api.sock") as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.FingerprintStub(channel).Feedback(pb.FeedbackRequest(id=KEY, spam=True, client_ip="192.0.2.1"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        server.stop(0)
