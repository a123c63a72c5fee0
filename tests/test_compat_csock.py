"""The p0f socket's compiled query loop (fingerprintd/_csock.pyx) against its reference, the pure-Python
P0fSocketServer._loop: the same queries, sent the same way over real unix sockets, against real host tables
fed the same fingerprinted SYNs, must get the same answer bytes and leave the same counters.

The compiled loop answers a repeated query from a memo while the table's generation is unchanged; the
script below changes the table between queries (a host's latest SYN, a host that was unknown, a host that
expires) so that a memo that outlived its answer would show.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import replace

import pytest

from fingerprintd import accel, compat
from fingerprintd.classes import bundled_classes
from fingerprintd.engine import Engine
from fingerprintd.hosts import HostTable
from fingerprintd.matcher import Matcher
from tests.conftest import need
from tests.craft import STACKS, frame
from tests.observed import DB, RNG, observe

TTL = 600.0


@pytest.fixture(autouse=True, scope="module")
def _built():
    need(accel.available(), "the compiled accelerator is not built (pip install -e . builds it; see setup.py)")


def _query(addr: bytes, kind: int = 4, magic: int = compat.QUERY_MAGIC) -> bytes:
    return struct.pack("=IB16s", magic, kind, addr)


def _v4(text: str) -> bytes:
    return socket.inet_aton(text)


def _mapped(text: str) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + socket.inet_aton(text)


def _observe6(stack: str, src: str, sport: int = 40000, ts: float = 1_700_000_000.0):
    eng = Engine(Matcher(DB, classes=bundled_classes()))
    shape = replace(STACKS[stack], ver=6)
    obs = eng.feed(bytes(frame(shape, src, "2001:db8::25", sport, 25, RNG, seq=RNG.randrange(1, 1 << 31))),
                   1, int(ts), int(ts % 1 * 1e6))
    assert obs is not None
    return obs


class Clock:
    """The table's clock, moved by the script: expiry without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _recv(c: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = c.recv(n - len(got))
        assert chunk, f"closed after {len(got)} of {n} bytes"
        got += chunk
    return got


# The SYNs the script adds, made once: both runs add the very same observations.
SYNS = {
    "a1": observe("win7", src="203.0.113.9"),
    "a2": observe("linux", src="203.0.113.9", sport=40001, ts=1_700_000_005),
    "b": observe("linux", src="198.51.100.20"),
    "late": observe("freebsd", src="198.51.100.77", ts=1_700_000_009),
    "six": _observe6("linux", "2001:db8::7"),
}
A, B, LATE = _v4("203.0.113.9"), _v4("198.51.100.20"), _v4("198.51.100.77")
SIX = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
UNKNOWN6 = socket.inet_pton(socket.AF_INET6, "2001:db8::99")

# (action, ...): ("ask", connection, bytes sent, answers expected), ("split", connection, bytes, answers:
# sent in two parts a moment apart), ("add", SYN), ("tick", seconds on the table's clock).
SCRIPT = [
    ("add", "a1"), ("add", "b"), ("add", "six"),
    ("ask", 0, _query(A), 1), ("ask", 0, _query(A), 1),  # the second from the memo
    ("ask", 0, _query(_mapped("203.0.113.9"), 6), 1),  # IPv4-mapped: the same host
    ("ask", 1, _query(B), 1), ("ask", 0, _query(B), 1),  # two connections
    ("ask", 0, _query(LATE), 1), ("ask", 0, _query(LATE), 1),  # unknown, twice
    ("ask", 0, _query(SIX, 6), 1), ("ask", 1, _query(UNKNOWN6, 6), 1), ("ask", 1, _query(UNKNOWN6, 6), 1),
    ("ask", 0, _query(b"\0" * 16, 5), 1), ("ask", 0, _query(A, 4, 0x12345678), 1),  # bad type, bad magic
    ("add", "a2"),  # A's latest SYN changes: its answer must too
    ("ask", 0, _query(A), 1), ("ask", 1, _query(_mapped("203.0.113.9"), 6), 1), ("ask", 0, _query(A), 1),
    ("add", "late"),  # the unknown host becomes known
    ("ask", 0, _query(LATE), 1), ("ask", 1, _query(LATE), 1),
    ("ask", 0, _query(A) + _query(b"\0" * 16, 7) + _query(B), 3),  # pipelined, one bad
    ("split", 1, _query(B) + _query(A), 2),  # a partial query, then the rest and another
    ("ask", 1, _query(B), 1),  # one at a time again after the buffered path
    ("tick", TTL / 2),
    ("ask", 0, _query(A), 1), ("ask", 0, _query(SIX, 6), 1),
    ("tick", TTL),  # every host expired: no write, only the clock
    ("ask", 0, _query(A), 1), ("ask", 1, _query(B), 1), ("ask", 0, _query(SIX, 6), 1),
    ("add", "b"),  # B again: known again
    ("ask", 1, _query(B), 1), ("ask", 1, _query(B), 1),
]


def _run(compiled_loop: bool, compiled_table: bool, tmp_path) -> tuple[list[bytes], dict, tuple[int, int]]:
    """The script against a fresh server: the answers per step, the server's counters, the table's
    (lookups, hits)."""
    clock = Clock()
    table = (accel.compiled().hosts.HostTable if compiled_table else HostTable)(ttl=TTL, timer=clock)
    with accel.selected(compiled_loop):
        server = compat.P0fSocketServer(str(tmp_path / f"p0f-{compiled_loop}-{compiled_table}.sock"), table)
    assert (server._fast is not None) == compiled_loop
    server.start()
    conns = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    answers = []
    try:
        for c in conns:
            c.settimeout(10)
            c.connect(server.path)
        for step in SCRIPT:
            if step[0] == "add":
                table.add(SYNS[step[1]])
            elif step[0] == "tick":
                clock.now += step[1]
            elif step[0] == "ask":
                conns[step[1]].sendall(step[2])
                answers.append(_recv(conns[step[1]], 232 * step[3]))
            else:
                c = conns[step[1]]
                c.sendall(step[2][:10])
                time.sleep(0.05)  # read by the server on its own, most likely: either way, the same answers
                c.sendall(step[2][10:])
                answers.append(_recv(c, 232 * step[3]))
    finally:
        for c in conns:
            c.close()
        stats = server.stats()
        server.stop()
    stats.pop("connections")
    return answers, stats, (table.lookups, table.hits)


@pytest.mark.parametrize("compiled_table", [True, False], ids=["compiled-table", "pure-table"])
def test_the_compiled_loop_answers_as_the_reference(tmp_path, compiled_table):
    want_answers, want_stats, want_lookups = _run(False, False, tmp_path)
    got_answers, got_stats, got_lookups = _run(True, compiled_table, tmp_path)
    assert len(got_answers) == len(want_answers)
    for i, (got, want) in enumerate(zip(got_answers, want_answers, strict=True)):
        assert got == want, f"answer {i}: {compat._RESPONSE.unpack_from(got)} != {compat._RESPONSE.unpack_from(want)}"
    assert got_stats == want_stats
    assert got_lookups == want_lookups
    # The script's oracle is the reference; what it must have seen, so that the comparison means something:
    statuses = [struct.unpack_from("=I", a, 4)[0] for a in want_answers]
    assert statuses.count(compat.STATUS_BAD_QUERY) == 2 and statuses.count(compat.STATUS_NO_MATCH) >= 5
    assert want_stats["queries"] == sum(s[3] for s in SCRIPT if s[0] in ("ask", "split"))
    assert want_stats["bad_queries"] == 3


def test_the_memo_answers_without_a_lookup_and_counts_it(tmp_path):
    """A repeated query on the compiled loop is answered without the table's lookup while the table takes
    no write (the lookup is counted all the same), and looked up again after a write."""
    table = accel.compiled().hosts.HostTable()
    table.add(SYNS["b"])
    calls = []
    real = table.lookup

    class Counting:  # the table as the server sees it: its lookups counted here
        generation = property(lambda self: table.generation)
        timer = property(lambda self: table.timer)
        _lock = property(lambda self: table._lock)
        lookups = property(lambda self: table.lookups, lambda self, v: setattr(table, "lookups", v))
        hits = property(lambda self: table.hits, lambda self, v: setattr(table, "hits", v))

        def lookup(self, *args):
            calls.append(args)
            return real(*args)

    with accel.selected(True):
        server = compat.P0fSocketServer(str(tmp_path / "p0f.sock"), Counting())
    server.start()
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(server.path)
            first = [_ask(c, _query(B)) for _ in range(5)]
            assert len(calls) == 1 and len(set(first)) == 1
            table.add(SYNS["b"])  # a write: the next answer is looked up, and is the new one
            second = _ask(c, _query(B))
            assert len(calls) == 2 and second != first[0]
    finally:
        server.stop()
    assert (table.lookups, table.hits) == (6, 6)  # the memo's four answers counted as lookups


def _ask(c: socket.socket, query: bytes) -> bytes:
    c.sendall(query)
    return _recv(c, 232)


def test_an_expired_host_is_not_answered_from_the_memo(tmp_path):
    """On the real clock (time.monotonic, read by the loop itself): the memo's answer lapses with the host."""
    table = accel.compiled().hosts.HostTable(ttl=0.3)
    table.add(SYNS["b"])
    with accel.selected(True):
        server = compat.P0fSocketServer(str(tmp_path / "p0f.sock"), table)
    server.start()
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(server.path)
            assert [struct.unpack_from("=I", _ask(c, _query(B)), 4)[0] for _ in range(3)] == [compat.STATUS_OK] * 3
            time.sleep(0.5)  # past the host's expiry (0.3 s, plus the table's 1/16 s quantum)
            assert struct.unpack_from("=I", _ask(c, _query(B)), 4)[0] == compat.STATUS_NO_MATCH
    finally:
        server.stop()


def test_more_distinct_names_than_the_memo_keeps(tmp_path):
    """The compiled memo keeps each distinct 192 bytes of names once, up to 1,024 of them, then starts
    over: hosts with 1,100 distinct OS flavors, asked about twice over, get the reference's answers."""
    base = SYNS["b"]
    syns = []
    for i in range(1100):
        label = replace(base.fp.label, flavor=f"flavor {i}")
        obs = base._replace(fp=base.fp._replace(label=label),
                            pkt=base.pkt._replace(src=struct.pack("!I", 0x0A000000 + i)))
        syns.append(obs)
    queries = [_query(struct.pack("!I", 0x0A000000 + i)) for i in range(1100)] * 2
    runs = []
    for compiled in (False, True):
        table = (accel.compiled().hosts.HostTable if compiled else HostTable)()
        table.add_batch(syns)
        with accel.selected(compiled):
            server = compat.P0fSocketServer(str(tmp_path / f"names-{compiled}.sock"), table)
        server.start()
        try:
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(10)
                c.connect(server.path)
                runs.append([_ask(c, q) for q in queries])
        finally:
            server.stop()
    want, got = runs
    assert len({a[40:] for a in want}) == 1100  # as many names as hosts, each asked twice
    assert got == want
