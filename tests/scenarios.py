"""The scoring scenarios of issue 12: who connects, with which names, and what the score must be.

Each row is a sender as Postfix sees it (client_address, client_name = the
verified name or "unknown", reverse_client_name, helo_name, sasl_username)
with a SYN built to a line of the bundled signatures, picked by its label (so
the rows keep working when lines are added to signatures/p0f.fp), and the
bound its score must meet.  Used by tests/test_scoring.py (policy service and
milter, in-process), tests/test_reputation.py, tests/test_mail.py (real
Postfix) and benchmarks/scoring.py (the table); with the pieces they share:
the real service on a unix socket (Api), pymilter's class with libmilter's
calls recorded (recording_milter), one row through both filters
(through_filters), real kernel SYNs from a namespace (kernel_syns).
"""

from __future__ import annotations

import importlib.util
import random
import socket
import sys
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from fingerprintd import mail
from fingerprintd.config import Config
from fingerprintd.learn import verdict_fields
from fingerprintd.server import build_server
from fingerprintd.service import Service
from fingerprintd.signatures import WIN_MSS, Database, TcpSig, load
from tests.conftest import OUR_DB, need
from tests.craft import Shape, frame, shape_from_sig

SERVER_IP = "192.0.2.25"


@dataclass(frozen=True)
class Row:
    name: str
    label: str  # the signature label the SYN is built to ("" for a real kernel SYN)
    ip: str
    client_name: str  # Postfix: the verified name, or "unknown"
    reverse_name: str  # Postfix: the PTR, or "unknown"
    helo: str
    want: str  # "<=0", ">=1", or "none" (no header: trusted or authenticated)
    sasl: str = ""
    mss: int = 1460
    layout: tuple[int, ...] | None = None  # pick the label's line with this option layout (first otherwise)
    os_name: str = ""  # what the SYN must come out as (the row checks its own SYN)
    sig_has: str = ""  # ... and whose text has this (":mss*44,": the window of Linux 4.19+ at MSS 1460)
    wscale: int = 7  # for a line whose scale is '*'

    def ok(self, score: float | None) -> bool:
        if self.want == "none":
            return score is None
        if score is None:
            return False
        return score <= 0 if self.want == "<=0" else score >= 1.0


# Windows 10/11's layout: mss, nop, ws, nop, nop, sok (the Windows Server SYN is the same).
WIN10_LAYOUT = (2, 1, 3, 1, 1, 4)
EOP_PTR = "mail-bn1on0090.outbound.protection.outlook.com"
EOP_HELO = "na01-bn1-OBE.outbound.protection.outlook.com"  # seen in a header (mta-context.md §5)

ROWS = (
    Row("Exchange Online (Windows Server)", "Windows 10 or 11", "198.51.100.10", EOP_PTR, EOP_PTR, EOP_HELO, "<=0",
        layout=WIN10_LAYOUT, os_name="Windows"),
    Row("Exchange on-premises (Windows Server)", "Windows 10 or 11", "198.51.100.11", "mail.example-corp.de",
        "mail.example-corp.de", "mail.example-corp.de", "<=0", layout=WIN10_LAYOUT, os_name="Windows"),
    Row("Linux MTA, MTU 1500", "Linux 4.19 and newer", "198.51.100.12", "mx1.example.net", "mx1.example.net",
        "mx1.example.net", "<=0", os_name="Linux", sig_has=":mss*44,"),
    # Behind a 1280-byte tunnel: MSS 1240, the window 52 of them (as a real 6.x kernel sends, test_scoring.py).
    Row("Linux MTA, 1280 tunnel", "Linux 4.19 and newer", "198.51.100.13", "mx2.example.net", "mx2.example.net",
        "mx2.example.net", "<=0", mss=1240, os_name="Linux", sig_has=":mss*52,"),
    Row("FreeBSD MTA", "FreeBSD 9.x or newer", "198.51.100.14", "smtp.example.org", "smtp.example.org",
        "smtp.example.org", "<=0", os_name="FreeBSD"),
    Row("Windows desktop, no rDNS", "Windows 10 or 11", "203.0.113.45", "unknown", "unknown", "DESKTOP-4F7K2LQ",
        ">=1", layout=WIN10_LAYOUT, os_name="Windows"),
    Row("Windows desktop, dynamic rDNS", "Windows 10 or 11", "203.0.113.46", "dsl-203-0-113-46.dyn.example-isp.net",
        "dsl-203-0-113-46.dyn.example-isp.net", "[203.0.113.46]", ">=1", layout=WIN10_LAYOUT, os_name="Windows"),
    Row("Windows desktop, PTR not verifying", "Windows 10 or 11", "203.0.113.47", "unknown",
        "host47.example-isp.net", "DESKTOP-4F7K2LQ", ">=1", layout=WIN10_LAYOUT, os_name="Windows"),
    Row("Android phone, carrier name", "Linux Android 8 and newer", "203.0.113.48",
        "mobile-203-0-113-48.lte.example-carrier.net", "mobile-203-0-113-48.lte.example-carrier.net", "localhost",
        ">=1", mss=1400, os_name="Linux"),
    Row("Embedded/IoT, no rDNS", "Nintendo 3DS", "203.0.113.49", "unknown", "unknown", "mail.example.com", ">=1",
        mss=1360, os_name="Nintendo"),
    Row("Windows XP, names agree", "Windows XP", "203.0.113.50", "mail.example.com", "mail.example.com",
        "mail.example.com", ">=1", os_name="Windows"),
    Row("Scanner (masscan)", "masscan", "203.0.113.51", "unknown", "unknown", "[203.0.113.51]", ">=1",
        os_name="masscan"),
    Row("Windows desktop, trusted network", "Windows 10 or 11", "10.20.30.40", "unknown", "unknown",
        "DESKTOP-4F7K2LQ", "none", layout=WIN10_LAYOUT, os_name="Windows"),
    Row("Windows desktop, authenticated", "Windows 10 or 11", "203.0.113.52", "unknown", "unknown",
        "DESKTOP-4F7K2LQ", "none", sasl="alice", layout=WIN10_LAYOUT, os_name="Windows"),
)


@cache
def database() -> Database:
    return load(OUR_DB)


def signature(label: str, layout: tuple[int, ...] | None = None, has: str = "") -> TcpSig:
    """The first specific [tcp:request] line with this label (and layout, and text)."""
    for sig in database().request:
        if (sig.label.text == label and not sig.label.generic and (layout is None or tuple(sig.layout) == layout)
                and has in sig.text and sig.ver != 6):
            return sig
    raise LookupError(f"no [tcp:request] line labeled {label!r} with layout {layout} and {has!r} in {OUR_DB}")


def shape(row: Row, rng: random.Random) -> Shape:
    sig = signature(row.label, row.layout, row.sig_has)
    s = shape_from_sig(sig, rng, ver=4)
    mss = sig.mss if sig.mss is not None else row.mss
    s = replace(s, mss=mss, payload=b"", wscale=sig.wscale if sig.wscale is not None else row.wscale)
    if sig.win_type == WIN_MSS:
        s = replace(s, win=min(65535, sig.win * mss))
    return s


def syn(row: Row, port: int, rng: random.Random, ts: int) -> tuple[int, int, bytes]:
    return (ts, 0, bytes(frame(shape(row, rng), row.ip, SERVER_IP, port, 25, rng, seq=rng.randrange(1, 1 << 31))))


def policy_attrs(row: Row, port: int, instance: str) -> dict[str, str]:
    """The policy request Postfix sends at RCPT (Postfix 3.7's attributes, the ones that matter here)."""
    return {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
            "client_address": row.ip, "client_port": str(port), "client_name": row.client_name,
            "reverse_client_name": row.reverse_name, "helo_name": row.helo, "sasl_username": row.sasl,
            "sasl_method": "PLAIN" if row.sasl else "", "instance": instance, "sender": "a@example.net",
            "recipient": "user@test.example"}


def milter_inputs(row: Row) -> tuple[str, dict[str, str]]:
    """The connect hostname and macros Postfix gives a milter (MILTER_README, smtpd_milter.c): the verified
    name or "[ip]"; `_` = "<reverse name> [<ip>]", "(may be forged)" when the names differ."""
    hostname = row.client_name if row.client_name != "unknown" else f"[{row.ip}]"
    forged = " (may be forged)" if row.client_name != row.reverse_name else ""
    macros = {"_": f"{row.reverse_name} [{row.ip}]{forged}", "{client_addr}": row.ip,
              "{client_resolve}": "OK" if row.client_name != "unknown" else (
                  "FORGED" if row.reverse_name != "unknown" else "FAIL")}
    if row.sasl:
        macros["{auth_authen}"] = row.sasl
    return hostname, macros


# --- learning: streams of outcomes with known spam ratios ------------------------------------

@dataclass(frozen=True)
class Stream:
    """Messages from one kind of sender (one bucket), a known share of them spam."""

    name: str
    label: str
    spam_ratio: float
    names: str  # "dynamic": a residential name built from the address; "mta": a name its HELO agrees with
    helo: str = ""
    layout: tuple[int, ...] | None = None
    mss: int = 1460
    sig_has: str = ""


STREAMS = (
    Stream("Windows desktops, dynamic rDNS", "Windows 10 or 11", 0.95, "dynamic", "[{ip}]", WIN10_LAYOUT),
    Stream("Windows Server MTAs", "Windows 10 or 11", 0.05, "mta", "", WIN10_LAYOUT),
    Stream("Linux MTAs (a site whose Linux mail is half spam)", "Linux 4.19 and newer", 0.5, "mta",
           sig_has=":mss*44,"),
    Stream("Android phones, carrier names", "Linux Android 8 and newer", 0.8, "dynamic", "localhost", mss=1400),
)


def public_address(rng: random.Random) -> str:
    """A random public IPv4 address (never one of the bundled policy's trusted networks)."""
    import ipaddress

    while True:
        ip = ipaddress.IPv4Address(rng.randrange(1 << 24, 224 << 24))
        if ip.is_global:
            return str(ip)


def stream_message(stream: Stream, i: int, rng: random.Random) -> tuple[Row, bool]:
    """The i-th message of a stream: a sender (a fresh address, its names) and whether it is spam."""
    ip = public_address(rng)
    if stream.names == "dynamic":
        name = f"dsl-{ip.replace('.', '-')}.dyn.example-isp.net"
        helo = stream.helo.format(ip=ip)
    else:
        name = f"mx{i}.example{i % 97}.net"
        helo = stream.helo or name
    row = Row(stream.name, stream.label, ip, name, name, helo, "", layout=stream.layout, mss=stream.mss,
              sig_has=stream.sig_has)
    return row, rng.random() < stream.spam_ratio


def simulate(stream: Stream, messages: int, policy, reputation, seed: int = 1, start: float | None = None):
    """Run a stream's outcomes into `reputation`: its key, the adjustment after each message, the static score."""
    from fingerprintd.classes import bundled_classes
    from fingerprintd.context import from_postfix
    from fingerprintd.engine import Engine
    from fingerprintd.matcher import Matcher

    rng = random.Random(f"{stream.name}/{seed}")
    engine = Engine(Matcher(database(), classes=bundled_classes()))
    now = start if start is not None else 1_790_000_000.0
    curve, key, static = [], "", 0.0
    for i in range(messages):
        row, spam = stream_message(stream, i, rng)
        obs = engine.feed(syn(row, 1024 + i % 60000, rng, int(now))[2], 1, int(now), 0)
        assert obs is not None
        v = policy.verdict(obs.fp, obs.pkt.src, from_postfix(row.client_name, row.reverse_name, row.helo))
        assert not key or v.key == key, (key, v.key)  # one stream, one key: the id is stable across senders
        key, static = v.key, v.score
        reputation.record(key, spam, row.ip, f"<{i}.{seed}@{stream.name.split()[0].lower()}.example>", now=now)
        curve.append(reputation.adjustment(key, now=now))
        now += 60.0  # a message a minute: decay plays no part within a stream
    return key, curve, static


# --- the filters, in-process ------------------------------------------------------------------

def recording_milter(client: mail.VerdictClient, enforce: bool = False, macros: dict | None = None):
    """fingerprintd's milter class with libmilter's context calls recorded instead of sent."""
    need(importlib.util.find_spec("Milter") is not None, "pymilter is not installed (pip install -e '.[test]')")
    cls = mail.make_milter(client, enforce)

    class Recording(cls):
        def __init__(self):
            super().__init__()
            self._setctx(None)  # pymilter's bookkeeping, without a libmilter context
            self.added, self.removed, self.replies = [], [], []

        def getsymval(self, name):
            return (macros or {}).get(name)

        def addheader(self, name, value, idx=-1):
            self.added.append((name, value))

        def chgheader(self, name, idx, value):
            self.removed.append((name, idx))

        def setreply(self, rcode, xcode, msg):
            self.replies.append((rcode, xcode, msg))

    return Recording()


class Api:
    """The real service (bundled policy unless a config says otherwise), its gRPC API on a unix socket."""

    def __init__(self, tmp_path: Path, **config) -> None:
        self.path = f"{tmp_path}/api.sock"
        self.service = Service(Config(listen=[f"unix:{self.path}"], **config))
        self.server, _ = build_server(self.service, self.service.cfg.listen)
        self.server.start()
        self.client = mail.VerdictClient(f"unix:{self.path}", timeout=5.0)  # generous: no timing is tested here

    def close(self) -> None:
        self.client.close()
        self.server.stop(0).wait()


def through_filters(api: Api, row: Row, port: int) -> tuple[str | None, str | None]:
    """The header value the policy service PREPENDs and the one the milter adds (None: no header)."""
    action = mail.PolicyDecider(api.client).decide(policy_attrs(row, port, f"inst.{port}"))
    prepended = action.removeprefix("PREPEND X-OS-Fingerprint: ") if action.startswith("PREPEND ") else None
    hostname, macros = milter_inputs(row)
    m = recording_milter(api.client, macros=macros)
    m.connect(hostname, socket.AF_INET, (row.ip, port))
    m.hello(row.helo)
    m.envfrom("<a@example.net>")
    m.eom()
    added = dict(m.added).get("X-OS-Fingerprint")
    return prepended, added


def score_of(value: str | None) -> float | None:
    return None if value is None else float(verdict_fields(value)["score"])


# --- real kernel SYNs: a Linux MTA at MTU 1500 and behind a 1280-byte tunnel ----------------------

KERNEL_ROWS = (
    Row("Linux MTA (kernel SYN), MTU 1500", "", "203.0.113.80", "mx3.example.net", "mx3.example.net",
        "mx3.example.net", "<=0", os_name="Linux"),
    Row("Linux MTA (kernel SYN), MTU 1280", "", "203.0.113.80", "mx3.example.net", "mx3.example.net",
        "mx3.example.net", "<=0", os_name="Linux"),
)
KERNEL_PORTS = (30000, 31000)  # the source ports of the two SYNs


def kernel_syns(tmp_path: Path) -> dict[int, tuple[int, int, bytes]]:
    """Real SYNs from 203.0.113.80 (a client namespace) at MTU 1500 and 1280, by source port."""
    from fingerprintd.capture import open_offline
    from tests.netns import NetnsPair, can_use_netns

    ok, why = can_use_netns()
    need(ok, why)
    pcap = tmp_path / "kernel.pcap"
    # One SYN to port 25 of an address with no listener: the SYN is what counts, a reset ends it.
    code = ("import socket,sys\ns=socket.socket()\ns.bind(('203.0.113.80',int(sys.argv[2])))\ns.settimeout(3)\n"
            "try:\n s.connect((sys.argv[1],25))\nexcept OSError:\n pass\ns.close()\n")
    with NetnsPair(net=88) as pair:
        pair.ns(pair.srv, "ip", "addr", "add", "203.0.113.1/24", "dev", pair.vsrv)
        pair.ns(pair.cli, "ip", "addr", "add", "203.0.113.80/24", "dev", pair.vcli)
        cap = pair.capture(pcap, "tcp port 25 and tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0")
        try:
            for mtu, port in zip((1500, 1280), KERNEL_PORTS, strict=True):
                pair.set_mtu(mtu)
                pair.ns(pair.cli, sys.executable, "-c", code, "203.0.113.1", str(port), timeout=30)
        finally:
            pair.stop_capture(cap)
    out = {}
    for batch in open_offline(str(pcap), None).batches():
        for ts, us, data in batch:
            out[int.from_bytes(data[14 + 20:14 + 22], "big")] = (ts, us, data)  # Ethernet, IPv4 without options
    return out
