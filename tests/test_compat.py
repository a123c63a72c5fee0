"""Drop-in compatibility with real p0f clients: the p0f v3 API socket and p0f-analyzer UDP.

The clients are other people's code: PyPI's `p0f` (the p0f3 API client) and
Haraka's `haraka-plugin-p0f` (its P0FClient, pipelining) from the npm
registry; the analyzer queries are the exact datagrams amavisd-new sends.
Every answer comes from real kernel SYNs captured on a veth.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from fingerprintd import compat
from fingerprintd.hosts import HostTable, host_table
from fingerprintd.service import JsonFormatter
from tests.conftest import ROOT, need
from tests.helpers import Served
from tests.netns import NetnsPair, can_use_netns
from tests.observed import observe

NODE_MODULES = ROOT / "tests" / "node" / "node_modules"

# The socket server's tests run on both loops: the pure-Python reference and the compiled one
# (fingerprintd/_csock.pyx; tests/test_compat_csock.py compares their answers), each with its own table.
both = pytest.mark.parametrize("implementation", ["pure", "compiled"], indirect=True)


# --- encoders, no network ------------------------------------------------------

def _query(addr: bytes, kind: int = 4, magic: int = compat.QUERY_MAGIC) -> bytes:
    return struct.pack("=IB16s", magic, kind, addr)


def _fields(resp: bytes) -> tuple:
    assert len(resp) == compat.RESPONSE_SIZE == 232
    return struct.unpack("=IIIIIIIIIhBB32s32s32s32s32s32s", resp)


def test_p0f_answers():
    table = HostTable()
    table.add(observe("win7", src="203.0.113.9"))
    table.add(observe("linux", src="203.0.113.9", sport=40001, ts=1_700_000_005))
    ok = _fields(compat.p0f_answer(_query(socket.inet_aton("203.0.113.9")), table))
    assert ok[:2] == (compat.RESPONSE_MAGIC, compat.STATUS_OK)
    assert (ok[2], ok[3], ok[4]) == (1_700_000_000, 1_700_000_005, 2)  # first/last seen, connections
    # last_chg is the time of p0f's last host change record: none here (each observe() has books
    # of its own; tests/test_nat.py checks the records against p0f); distance
    assert ok[8] == 0 and ok[9] == 9
    assert ok[12].rstrip(b"\0") == b"Linux" and ok[13].rstrip(b"\0") == b"3.11 and newer" and ok[11] == 0
    assert ok[16].rstrip(b"\0") == b"Ethernet or modem"
    mapped = compat.p0f_answer(_query(b"\0" * 10 + b"\xff\xff" + socket.inet_aton("203.0.113.9"), 6), table)
    assert _fields(mapped)[1] == compat.STATUS_OK
    assert _fields(compat.p0f_answer(_query(socket.inet_aton("198.51.100.1")), table))[1] == compat.STATUS_NO_MATCH
    assert _fields(compat.p0f_answer(_query(b"\0" * 16, 5), table))[1] == compat.STATUS_BAD_QUERY
    assert _fields(compat.p0f_answer(_query(b"\0" * 16, 4, 0x12345678), table))[:2] == (compat.RESPONSE_MAGIC, 0)


def test_a_kept_answer_follows_the_host_record(monkeypatch):
    """The server keeps packed answers per address: one is served again only while the host
    record it was packed from has not changed; a new SYN from the host changes the answer."""
    table, memo = HostTable(), {}
    table.add(observe("win7", src="203.0.113.9"))
    query = _query(socket.inet_aton("203.0.113.9"))
    first = _fields(compat.p0f_answer(query, table, memo))
    assert (first[4], first[12].rstrip(b"\0")) == (1, b"Windows")
    assert _fields(compat.p0f_answer(query, table, memo))[4] == 1  # unchanged: kept
    table.add(observe("linux", src="203.0.113.9", sport=40001, ts=1_700_000_005))
    again = _fields(compat.p0f_answer(query, table, memo))
    assert (again[3], again[4], again[12].rstrip(b"\0")) == (1_700_000_005, 2, b"Linux")
    mapped = _query(b"\0" * 10 + b"\xff\xff" + socket.inet_aton("203.0.113.9"), 6)
    assert _fields(compat.p0f_answer(mapped, table, memo))[4] == 2 and len(memo) == 1  # one host, one entry
    monkeypatch.setattr(compat, "ANSWER_MEMO", 8)
    for i in range(18):  # more addresses than the bound
        table.add(observe("linux", src=socket.inet_ntoa(struct.pack("!I", 0x0A000000 + i))))
        compat.p0f_answer(_query(struct.pack("!I", 0x0A000000 + i)), table, memo)
    assert len(memo) <= 8


def test_the_names_follow_both_the_matched_and_the_latest_syn():
    """The answer's OS names come from the host's last OS match, its link from its latest SYN: a masscan probe
    (no MSS, so no link) after a Linux SYN leaves the OS and takes the link away (the packed names are kept
    per pair of verdicts, never per match alone)."""
    table = HostTable()
    table.add(observe("linux", src="203.0.113.9"))
    query = _query(socket.inet_aton("203.0.113.9"))
    first = _fields(compat.p0f_answer(query, table))
    assert (first[12].rstrip(b"\0"), first[16].rstrip(b"\0")) == (b"Linux", b"Ethernet or modem")
    table.add(observe("masscan", src="203.0.113.9", sport=40001, ts=1_700_000_005))
    after = _fields(compat.p0f_answer(query, table))
    assert (after[12].rstrip(b"\0"), after[16].rstrip(b"\0")) == (b"Linux", b"")


def test_strings_are_always_terminated():
    table = HostTable()
    obs = observe("linux", src="203.0.113.10")
    long_label = obs.fp.label.__class__(False, "unix", "MacOS X", "10.9 or newer (sometimes iPhone or iPad)", 1, 1)
    table.add(obs._replace(fp=obs.fp._replace(label=long_label)))
    flavor = _fields(compat.p0f_answer(_query(socket.inet_aton("203.0.113.10")), table))[13]
    assert flavor.endswith(b"\0") and flavor.rstrip(b"\0") == b"10.9 or newer (sometimes iPhone"


@pytest.mark.parametrize("datagram,reply", [
    (b"[203.0.113.11]:40000 abc123", "[203.0.113.11]:40000 abc123 Linux 3.11 and newer; dist: 9; link: Ethernet or "
                                     "modem; params: none; raw_mtu: 1500; raw_sig: 4:55+9:0:1460:mss*20,7:mss,sok,"
                                     "ts,nop,ws:df,id+:0\r\n"),
    (b"[203.0.113.11]:40001 n2", "[203.0.113.11]:40001 n2 \r\n"),  # unknown connection: empty result
    (b"[IPv6:::ffff:203.0.113.11]:40000 n3", "[IPv6:::ffff:203.0.113.11]:40000 n3 Linux 3.11 and newer; "),
    (b"[203.0.113.11] n4", "[203.0.113.11] n4 Linux 3.11 and newer; dist: 9"),  # latest from the address
    (b"203.0.113.11 n5", "203.0.113.11 n5 Linux 3.11 and newer;"),
    (b"[198.51.100.7]:25 x", "[198.51.100.7]:25 x \r\n"),
    (b"[203.0.113.11]:40000 ", "[203.0.113.11]:40000  Linux"),  # an empty nonce is still a nonce
    (b"nonsense", None), (b"[203.0.113.11]:40000 bad\x01nonce", None), (b"[not-an-ip]:25 n", None),
    (b"[203.0.113.11]:70000 n", None), (b"[203.0.113.11]:40000 " + b"x" * 1025, None),
])
def test_analyzer_protocol(datagram, reply):
    table = HostTable()
    table.add(observe("linux", src="203.0.113.11", sport=40000))
    got = compat.analyzer_reply(datagram, table)
    if reply is None:
        assert got is None
    else:
        assert got is not None and got.decode().startswith(reply) and got.endswith(b"\r\n")


LINUX_RESULT = ("Linux 3.11 and newer; dist: 9; link: Ethernet or modem; params: none; raw_mtu: 1500; "
                "raw_sig: 4:55+9:0:1460:mss*20,7:mss,sok,ts,nop,ws:df,id+:0")


def _bundled_verdict():
    """The bundled policy with no trusted networks, as the service serves it (no reputation)."""
    from fingerprintd.policy import parse_policy, served_verdict

    text = (ROOT / "signatures" / "policy.toml").read_text()
    policy = parse_policy(re.sub(r"^trusted_networks = .*$", "trusted_networks = []", text, count=1, flags=re.M))
    return lambda fp, ip, ctx, host: served_verdict(policy.verdict(fp, ip, ctx, host), "")


@pytest.mark.parametrize("datagram,reply", [
    # amavisd-new's forms: byte for byte what they were without the extension.
    (b"[203.0.113.11]:40000 1f2e3d4c", f"[203.0.113.11]:40000 1f2e3d4c {LINUX_RESULT}\r\n"),
    (b"[203.0.113.11] n2", f"[203.0.113.11] n2 {LINUX_RESULT}\r\n"),
    (b"[198.51.100.7]:25 x", "[198.51.100.7]:25 x \r\n"),
    # A nonce with spaces that is not the extension stays a nonce, echoed whole.
    (b"[203.0.113.11]:40000 a b fpd1 rdns=x", f"[203.0.113.11]:40000 a b fpd1 rdns=x {LINUX_RESULT}\r\n"),
    (b"[203.0.113.11]:40000 a fpd1x", f"[203.0.113.11]:40000 a fpd1x {LINUX_RESULT}\r\n"),
])
def test_analyzer_plain_queries_unchanged_with_the_verdict(datagram, reply):
    table = HostTable()
    table.add(observe("linux", src="203.0.113.11", sport=40000))
    assert compat.analyzer_reply(datagram, table, verdict=_bundled_verdict()) == reply.encode()


@pytest.mark.parametrize("fields,tail", [
    # policy.toml, a Linux stack (class server): server-mta -0.3 (verified, not dynamic, HELO agrees), final.
    ("rdns=mail.example.org helo=mail.example.org", r"class: server; rules: server-mta; id: [0-9a-f]{10}/server/"
                                                     r"fcrdns-match; score: -0\.3"),
    # server-dynamic-rdns +0.3 (a DSL name; the HELO does not matter for a server stack).
    ("rdns=dsl-45.dyn.example.net helo=DESKTOP-4F7K2LQ", r"class: server; rules: server-dynamic-rdns; "
                                                         r"id: [0-9a-f]{10}/server/dynamic-bare; score: 0\.3"),
    # rdns= : the MTA recorded none (no verified name); an address-literal HELO.
    ("rdns= helo=[203.0.113.11]", r"class: server; rules: none; id: [0-9a-f]{10}/server/nordns-literal; score: 0"),
    # No names at all: the verdict without context; unknown fields are ignored.
    ("", r"class: server; rules: none; id: [0-9a-f]{10}/server/nocontext; score: 0"),
    ("future=1", r"class: server; rules: none; id: [0-9a-f]{10}/server/nocontext; score: 0"),
])
def test_analyzer_extension_answers_the_verdict(fields, tail):
    table = HostTable()
    table.add(observe("linux", src="203.0.113.11", sport=40000))
    datagram = f"[203.0.113.11]:40000 n7 fpd1 {fields}".rstrip().encode()
    got = compat.analyzer_reply(datagram, table, verdict=_bundled_verdict())
    assert got is not None
    assert re.fullmatch(re.escape(f"[203.0.113.11]:40000 n7 {LINUX_RESULT}; ") + tail + "\r\n", got.decode()), got


@pytest.mark.parametrize("datagram,reply", [
    (b"[203.0.113.11]:40000 n8 fpd1 rdns", None),  # a field without "="
    (b"[203.0.113.11]:40000 n8 fpd1 helo=a helo=b", None),  # twice
    (b"[203.0.113.11]:40000 n8 fpd1 rdns=" + b"a" * 256, None),  # over 255
    (b"[203.0.113.11]:40000 n8 fpd1  helo=a", None),  # an empty field
    (b"[198.51.100.7]:25 n8 fpd1 rdns=mail.example.org", b"[198.51.100.7]:25 n8 \r\n"),  # unknown: empty
])
def test_analyzer_extension_malformed_or_unknown(datagram, reply):
    table = HostTable()
    table.add(observe("linux", src="203.0.113.11", sport=40000))
    assert compat.analyzer_reply(datagram, table, verdict=_bundled_verdict()) == reply


# --- real clients against the running service -------------------------------------

@pytest.fixture
def served(tmp_path):
    ok, why = can_use_netns()
    need(ok, why)
    os.chmod(tmp_path, 0o755)
    with NetnsPair(net=81) as pair:
        pair.start_listener()
        s = Served(pair, str(tmp_path / "api.sock"), str(tmp_path / "serve.log"),
                   "--p0f-socket", str(tmp_path / "p0f.sock"), "--analyzer-udp", "0.0.0.0:2345",
                   "--analyzer-allow", "127.0.0.0/8", "--log", str(tmp_path / "p0f.log"))
        try:
            for port in (36001, 36002, 36003):
                pair.connect(pair.server4, 1, 0, port)
            pair.connect(pair.server6, 1, 0, 36010)
            assert s.lookup(pair.client4, 36003, wait_ms=2000)["found"]
            assert s.lookup(pair.client6, 36010, wait_ms=2000)["found"]
            yield pair, s, tmp_path
        finally:
            s.stop()


def test_pypi_p0f_client(served):
    from p0f import P0f

    pair, s, tmp = served
    client = P0f(str(tmp / "p0f.sock"), timeout=2)
    info = client.get_info(pair.client4, return_raw_data=True)
    assert info["magic"] == compat.RESPONSE_MAGIC and info["status"] == compat.STATUS_OK
    assert info["os_name"].rstrip(b"\0") == b"Linux" and info["total_conn"] == 3 and info["distance"] == 0
    assert info["link_type"].rstrip(b"\0") == b"Ethernet or modem"
    with pytest.raises(KeyError):  # the client's way of saying "no match"
        client.get_info("198.51.100.77")
    client.close()
    # IPv6: the PyPI client sends type 4 for IPv6 (broken upstream), so ours:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(tmp / "p0f.sock"))
        sock.sendall(_query(socket.inet_pton(socket.AF_INET6, pair.client6), 6))
        got = _fields(_recv(sock, 232))
    assert got[1] == compat.STATUS_OK and got[4] == 1


@both
def test_a_live_hosts_answer_follows_its_next_syn(served):
    """The same question on one connection before and after the host's next kernel SYN: the answer kept
    from the first (the compiled loop's memo) gives way to the new one."""
    pair, s, tmp = served
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(tmp / "p0f.sock"))
        query = _query(socket.inet_aton(pair.client4))
        before = []
        for _ in range(3):
            sock.sendall(query)
            before.append(_fields(_recv(sock, 232)))
        pair.connect(pair.server4, 1, 0, 36004)
        assert s.lookup(pair.client4, 36004, wait_ms=2000)["found"]
        sock.sendall(query)
        after = _fields(_recv(sock, 232))
    assert [b[4] for b in before] == [3, 3, 3] and after[4] == 4  # connections seen
    assert after[3] >= before[0][3]  # last seen


def _recv(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk
        data += chunk
    return data


HARAKA = r"""
const { P0FClient } = require(process.argv[1] + '/haraka-plugin-p0f');  // node -e: argv[1] is the first argument
const client = new P0FClient(process.argv[2]);
const ips = JSON.parse(process.argv[3]);
const results = {};
let pending = ips.length;
for (const ip of ips) {   // all queued at once: pipelined on one connection
  client.query(ip, (err, r) => {
    results[ip] = err ? { error: err.message } : r;
    if (--pending === 0) { console.log(JSON.stringify(results)); process.exit(0); }
  });
}
setTimeout(() => { console.log(JSON.stringify({ timeout: true, results })); process.exit(1); }, 10000);
"""


def test_haraka_p0f_client_pipelining(served):
    need(shutil.which("node") is not None and (NODE_MODULES / "haraka-plugin-p0f").is_dir(),
         "node and haraka-plugin-p0f (make test installs it into tests/node) are needed")
    pair, s, tmp = served
    ips = [pair.client4, pair.client6, "198.51.100.1", pair.client4, "::ffff:" + pair.client4] * 4
    out = subprocess.run(["node", "-e", HARAKA, str(NODE_MODULES), str(tmp / "p0f.sock"), json.dumps(ips)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads(out.stdout)
    assert results[pair.client4]["os_name"] == "Linux" and results[pair.client4]["total_conn"] == 3
    assert results[pair.client4]["link_type"] == "Ethernet or modem"
    assert results[pair.client6]["total_conn"] == 1
    assert results["198.51.100.1"] is None  # no match
    assert results["::ffff:" + pair.client4]["os_name"] == "Linux"


def test_many_clients_and_a_rude_one(served):
    pair, s, tmp = served
    socks = []
    for _ in range(50):
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(tmp / "p0f.sock"))
        socks.append(c)
    rude = socket.socket(socket.AF_UNIX)
    rude.connect(str(tmp / "p0f.sock"))
    rude.sendall(_query(socket.inet_aton(pair.client4))[:10])  # half a query, then gone
    rude.close()
    q = _query(socket.inet_aton(pair.client4))
    for c in socks:
        c.sendall(q * 3)
    for c in socks:
        answers = _recv(c, 232 * 3)
        assert all(_fields(answers[i:i + 232])[1] == compat.STATUS_OK for i in range(0, 696, 232))
        c.close()
    assert oct(os.stat(tmp / "p0f.sock").st_mode & 0o777) == "0o660"


AMAVISD = r"""
import socket, sys, random
# What amavisd-new sends: one datagram "[ip]:port nonce"; it then waits 50 ms for the
# reply (that budget is measured in benchmarks/test_service.py; here: the reply, before a generous timeout).
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(5)
out = []
for query in sys.argv[1:]:
    nonce = "%08x" % random.randrange(0x7fffffff)
    s.sendto(f"{query} {nonce}".encode(), ("127.0.0.1", 2345))
    reply = s.recv(2048).decode()
    q, n, result = reply.split(" ", 2)
    assert (q, n) == (query, nonce) and result.endswith("\r\n"), reply
    out.append(result.strip() or "EMPTY")
print("\n".join(out))
"""


def test_amavisd_style_queries(served):
    pair, s, tmp = served
    queries = [f"[{pair.client4}]:36001", f"[{pair.client4}]:36999", f"[IPv6:{pair.client6}]:36010",
               f"[{pair.client4}]"]
    out = subprocess.run(["ip", "netns", "exec", pair.srv, "python3", "-c", AMAVISD, *queries],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Linux 4.19 and newer; dist: 0; link: Ethernet or modem; params: none; raw_mtu: 1500; "
                               "raw_sig: 4:64+0:")
    assert lines[1] == "EMPTY"  # unknown connection: an empty result (after the 20 ms wait for its SYN)
    # IPv6 with a flow label: named like its IPv4 twin (p0f would say ???).
    assert lines[2].startswith("Linux 4.19 and newer; dist: 0; link: Ethernet or modem; params: none; raw_mtu: 1500; "
                               "raw_sig: 6:64+0:")
    assert lines[3].startswith("Linux 4.19 and newer")
    # Not from an allowed network (the client namespace): no reply at all.
    probe = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5);"
             f"s.sendto(b'[{pair.client4}]:36001 x', ('{pair.server4}', 2345));"
             "print(s.recv(100) if 0 else '', end='')\ntry:\n s.recv(100); print('REPLY')\nexcept OSError: "
             "print('SILENT')")
    silent = subprocess.run(["ip", "netns", "exec", pair.cli, "python3", "-c", probe], capture_output=True, text=True,
                            timeout=10)
    assert silent.stdout.strip() == "SILENT", silent.stderr


def test_p0f_log_of_the_live_service(served):
    pair, s, tmp = served
    lines = (tmp / "p0f.log").read_text().splitlines()
    syn = [ln for ln in lines if "mod=syn|" in ln]
    assert len(syn) == 4 and all("|srv=" in ln and "|subj=cli|os=" in ln for ln in syn)
    assert any(f"|cli={pair.client4}/36002|" in ln for ln in syn)
    assert len([ln for ln in lines if "mod=mtu|" in ln]) == 4




@pytest.mark.parametrize("peer,allowed", [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.5", True), ("fe80::1%lo", False),
    ("192.0.2.1", False), ("::ffff:192.0.2.1", False), ("10.1.2.3", True), ("not-an-address", False),
])
def test_analyzer_allows_only_its_networks(peer, allowed):
    server = compat.AnalyzerServer("127.0.0.1", 0, HostTable(), ["127.0.0.0/8", "::1/128", "10.0.0.0/8"])
    try:
        assert server.allowed(peer) is allowed
    finally:
        server.sock.close()


# --- hostile and careless clients of the p0f socket ------------------------------

def _ask(path, timeout: float = 5.0) -> bytes | None:
    """One query on a fresh connection: the answer, or None if the server closed it unanswered."""
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(timeout)
        c.connect(str(path))
        return _ask_on(c)


def _ask_on(c: socket.socket) -> bytes | None:
    try:
        c.sendall(_query(socket.inet_aton("198.51.100.3")))
    except (BrokenPipeError, ConnectionResetError):
        return None
    data = b""
    while len(data) < 232:
        try:
            chunk = c.recv(232 - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def _answered(resp: bytes | None) -> bool:
    """The answer an empty table gives any valid query."""
    return resp is not None and _fields(resp)[:2] == (compat.RESPONSE_MAGIC, compat.STATUS_NO_MATCH)


def _eventually(probe, tries: int = 100, pause: float = 0.1):
    """probe() until it returns something true, a bounded number of times."""
    for _ in range(tries):
        got = probe()
        if got:
            return got
        time.sleep(pause)
    return probe()


@pytest.fixture
def p0f_server(tmp_path):
    servers = []

    def start(**kw) -> compat.P0fSocketServer:
        server = compat.P0fSocketServer(str(tmp_path / f"p0f{len(servers)}.sock"), host_table(), **kw)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@both
def test_connection_cap(p0f_server):
    server = p0f_server(max_connections=4)
    inside = [socket.socket(socket.AF_UNIX) for _ in range(4)]
    for c in inside:
        c.settimeout(5)
        c.connect(server.path)
        assert _answered(_ask_on(c))
    assert _ask(server.path) is None  # the fifth: accepted and closed, unanswered
    assert server.stats()["refused"] == 1 and server.stats()["connections"] == 4
    assert all(_answered(_ask_on(c)) for c in inside)  # the four are still served
    inside.pop().close()
    assert _answered(_eventually(lambda: _ask(server.path)))  # a freed slot is reused
    for c in inside:
        c.close()


@both
def test_idle_connections_do_not_lock_out_a_fresh_client(p0f_server):
    server = p0f_server(max_connections=4, idle_timeout=0.5)
    idle = [socket.socket(socket.AF_UNIX) for _ in range(4)]
    for c in idle:
        c.settimeout(5)
        c.connect(server.path)
        assert _answered(_ask_on(c))  # in, then silent
    assert _ask(server.path) is None  # the cap is full
    assert _answered(_eventually(lambda: _ask(server.path)))  # until the idle ones time out
    assert server.stats()["idle_closed"] >= 4
    assert all(c.recv(1) == b"" for c in idle)  # they were closed, not just forgotten
    for c in idle:
        c.close()


@both
def test_a_slow_but_active_client_is_not_idle(p0f_server):
    server = p0f_server(idle_timeout=1.5)
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(5)
        c.connect(server.path)
        for _ in range(40):  # a query every 0.1 s for 4 s: over two idle timeouts' worth
            assert _answered(_ask_on(c))
            time.sleep(0.1)
    assert server.stats()["idle_closed"] == 0


@both
def test_bad_queries_are_answered_and_counted(p0f_server):
    server = p0f_server()
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(5)
        c.connect(server.path)
        c.sendall(_query(b"\0" * 16, 5) + _query(b"\0" * 16, 4, 0x12345678) + _query(b"\0" * 16))  # pipelined
        answers = _recv(c, 3 * 232)
        c.sendall(_query(b"\0" * 16, 7))  # alone
        answers += _recv(c, 232)
    assert [_fields(answers[i:i + 232])[1] for i in range(0, 4 * 232, 232)] == [
        compat.STATUS_BAD_QUERY, compat.STATUS_BAD_QUERY, compat.STATUS_NO_MATCH, compat.STATUS_BAD_QUERY]
    assert (server.stats()["queries"], server.stats()["bad_queries"]) == (4, 3)


# The server in a process of its own: its file limit and its memory are its own.
CHILD = r"""
import json, resource, sys
from fingerprintd import compat
from fingerprintd.hosts import host_table
path, nofile, kw = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
if nofile:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
server = compat.P0fSocketServer(path, host_table(), **kw)
server.start()
print("ready", flush=True)
for line in sys.stdin:   # each line asks for the state
    print(json.dumps({**server.stats(), "alive": server.alive(), "buffered": server.buffered()}), flush=True)
server.stop()
"""


class ChildServer:
    def __init__(self, path, nofile: int = 0, **kw) -> None:
        self.path = path
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(nofile), json.dumps(kw)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout.readline().strip() == "ready"

    def state(self) -> dict:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def rss_kib(self) -> int:
        status = open(f"/proc/{self.proc.pid}/status").read()
        return int(status.split("VmRSS:")[1].split()[0])

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@both
def test_out_of_file_descriptors(tmp_path):
    child = ChildServer(tmp_path / "p0f.sock", nofile=48)
    early = []
    flood = []
    try:
        for _ in range(5):
            c = socket.socket(socket.AF_UNIX)
            c.settimeout(5)
            c.connect(str(child.path))
            assert _answered(_ask_on(c))
            early.append(c)
        for i in range(100):  # twice the file limit
            c = socket.socket(socket.AF_UNIX)
            c.settimeout(5)
            c.connect(str(child.path))
            flood.append(c)
            if i % 10 == 0:
                assert all(_answered(_ask_on(c)) for c in early)  # the clients already in: answered throughout
        state = child.state()
        assert state["alive"] and state["fd_exhausted"] > 0
        assert all(_answered(_ask_on(c)) for c in early)
        for c in flood:
            c.close()
        assert _answered(_eventually(lambda: _ask(child.path)))  # descriptors free again: new clients served
        assert child.state()["alive"]
    finally:
        for c in early + flood:
            c.close()
        child.stop()


@both
def test_a_pipeliner_that_never_reads(tmp_path):
    child = ChildServer(tmp_path / "p0f.sock")
    try:
        before = child.rss_kib()
        hostile = socket.socket(socket.AF_UNIX)
        hostile.connect(str(child.path))
        hostile.settimeout(2)
        batch = _query(socket.inet_aton("198.51.100.4")) * 1000
        sent = 0
        for _ in range(400):  # 400,000 queries, 93 MB of answers, unless the server stops reading
            try:
                sent += hostile.send(batch)
            except TimeoutError:
                break
        assert _answered(_ask(child.path))  # someone else is still served
        state = child.state()
        assert state["throttled"] >= 1
        assert state["buffered"] <= 2 * compat.MAX_PENDING * 232 + 21
        assert child.rss_kib() - before < 16 * 1024
        assert sent < len(batch) * 400  # its send blocked: the server stopped reading it
        # Nothing was lost: once it reads, every query it sent has its answer.
        want = sent // 21 * 232
        got = 0
        hostile.settimeout(5)
        while got < want:
            chunk = hostile.recv(min(65536, want - got))
            assert chunk
            got += len(chunk)
        hostile.close()
        assert child.state()["queries"] == sent // 21 + 1
    finally:
        child.stop()


@both
def test_a_client_that_stops_reading_loses_no_answer(p0f_server):
    """One query at a time, each read alone by the server, and none of the answers read: the
    answers back up into the server's buffer, then it stops reading; all arrive once the client reads."""
    server = p0f_server()
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(1)
        c.connect(server.path)
        sent = 0
        for _ in range(20_000):
            try:
                c.sendall(_query(socket.inet_aton("198.51.100.8")))
            except TimeoutError:
                break
            sent += 1
            time.sleep(0.0002)  # apart, so that each is read on its own
        assert server.stats()["throttled"] >= 1 and sent < 20_000
        c.settimeout(5)
        answers = _recv(c, sent * 232)
    assert all(_answered(answers[i:i + 232]) for i in range(0, len(answers), 232))
    assert server.stats()["queries"] == sent


@both
def test_a_dead_socket_thread_is_reported(tmp_path, caplog, implementation):
    server = compat.P0fSocketServer(str(tmp_path / "p0f.sock"), host_table())
    assert (server._fast is not None) == (implementation == "compiled")
    with caplog.at_level(logging.ERROR, logger="fingerprintd"), socket.socket(socket.AF_UNIX) as client:
        server.start()
        client.settimeout(10)
        client.connect(server.path)
        assert _answered(_ask_on(client))
        server._sel.close()  # a real fault under the loop: its selector is gone
        assert _eventually(lambda: server.failed is not None)  # what the service polls
        assert client.recv(1) == b""  # its clients are let go at once, not left to time out
    server._thread.join(5)
    assert not server.alive() and isinstance(server.failed, ValueError | OSError)
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "error" and line["thread"] == "p0f-socket" and "Traceback" in line["error"]
    with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as late:
        late.connect(server.path)  # nobody listens: a new client fails open at once
    server.stop()


# --- the analyzer's counters ---------------------------------------------------------

def _datagrams(port: int, source: str, *payloads: bytes, replies: int) -> list[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(10)
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
        return [s.recv(2048) for _ in range(replies)]


def test_analyzer_counts_what_it_does():
    server = compat.AnalyzerServer("127.0.0.1", 0, HostTable(), ["127.0.0.2/32"], wait=0.0)
    server.start()
    try:
        got = _datagrams(server.port, "127.0.0.2", b"nonsense", b"[198.51.100.5]:25 n1", replies=1)
        assert got == [b"[198.51.100.5]:25 n1 \r\n"]
        _datagrams(server.port, "127.0.0.1", b"[198.51.100.5]:25 n2", replies=0)  # not allowed: silence
        assert _eventually(lambda: server.stats()["refused"] == 1 and server.stats()["answered"] == 1)
        assert server.stats() == {"answered": 1, "refused": 1, "malformed": 1, "busy": 0, "send_errors": 0}
    finally:
        server.stop()


def test_analyzer_bounds_the_datagrams_in_flight():
    # Lookups of connections never seen wait the full 3 s: the first two hold both places.
    server = compat.AnalyzerServer("127.0.0.1", 0, HostTable(), ["127.0.0.0/8"], wait=3.0, max_inflight=2)
    server.start()
    try:
        got = _datagrams(server.port, "127.0.0.1", *[f"[198.51.100.6]:25 n{i}".encode() for i in range(10)],
                         replies=2)
        assert sorted(g.split(b" ")[1] for g in got) == [b"n0", b"n1"]
        assert _eventually(lambda: server.stats()["answered"] == 2) and server.stats()["busy"] == 8
    finally:
        server.stop()


def test_a_dead_analyzer_thread_is_reported(caplog):
    server = compat.AnalyzerServer("127.0.0.1", 0, HostTable(), ["127.0.0.0/8"])
    with caplog.at_level(logging.ERROR, logger="fingerprintd"):
        server.start()
        server.sock.close()  # a real fault under the loop: its socket is gone
        assert _eventually(lambda: server.failed is not None)  # what the service polls
    assert _eventually(lambda: not server.alive()) and isinstance(server.failed, OSError)
    assert any(getattr(r, "fields", {}).get("thread") == "p0f-analyzer" for r in caplog.records)
    server.stop()


def test_analyzer_feedback_datagrams(tmp_path):
    """fpd1-feedback records through the reputation store, with its dedupe; malformed ones get no reply."""
    from fingerprintd.reputation import Reputation, SqliteStore

    rep = Reputation(SqliteStore(tmp_path / "rep.sqlite"))
    key = "0123456789/desktop/nordns-bare"
    reply = lambda d: compat.feedback_reply(d, rep.record)  # noqa: E731
    assert reply(f"fpd1-feedback n1 spam {key} 203.0.113.9 <a@x>".encode()) == b"fpd1-feedback n1 counted\r\n"
    assert reply(f"fpd1-feedback n2 spam {key} 203.0.113.9 <a@x>".encode()) == \
        b"fpd1-feedback n2 duplicate-message\r\n"
    assert reply(f"fpd1-feedback n3 ham {key} 203.0.113.9".encode()) == b"fpd1-feedback n3 duplicate-client\r\n"
    assert reply(b"fpd1-feedback n4 ham not-an-id 203.0.113.9") == b"fpd1-feedback n4 invalid\r\n"
    assert reply(f"fpd1-feedback n5 maybe {key} 203.0.113.9".encode()) is None
    assert reply(f"fpd1-feedback n6 spam {key}".encode()) is None
    assert rep.learned(key).spam > 0 and rep.learned(key).ham == 0
