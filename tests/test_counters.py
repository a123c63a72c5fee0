"""The engine's counters add up, also for a reader on another thread.

A run of the service once reported more SYNs fingerprinted than packets
read: its Stats read the counters while the capture thread was half-way
through a batch (`fingerprinted` counts per frame, `packets` per batch).
"""

from __future__ import annotations

import threading

from scapy.all import IP, TCP, Ether  # type: ignore[attr-defined]

from fingerprintd.engine import Engine
from fingerprintd.flows import RecentSyns
from fingerprintd.matcher import Matcher
from fingerprintd.packet import LINK_ETHERNET
from fingerprintd.signatures import load
from tests.conftest import OUR_DB


def _syn(sport: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="198.51.100.7", dst="192.0.2.25", ttl=57, flags="DF")
                 / TCP(sport=sport, dport=25, flags="S", seq=sport, window=64240,
                       options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                                ("WScale", 7)]))


class _ReadMidBatch(RecentSyns):
    """The service's flow books, plus a reader on another thread at the `at`-th frame of a batch."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.ticks = 0
        self.engine: Engine | None = None
        self.snapshots: list[dict] = []
        self.reader: threading.Thread | None = None

    def tick(self, sec: int) -> None:
        self.ticks += 1
        if self.ticks == self.at:
            assert self.engine is not None
            engine = self.engine
            self.reader = threading.Thread(target=lambda: self.snapshots.append(engine.summary()))
            self.reader.start()
            # Give the reader its chance now; a reader that has to wait for the batch's end
            # is what the engine promises, and this join then just gives up and carries on.
            self.reader.join(0.5)


def test_a_reader_on_another_thread_never_sees_a_half_counted_batch():
    books = _ReadMidBatch(at=4)
    engine = Engine(Matcher(load(OUR_DB)), flows=books)
    books.engine = engine
    frames = [_syn(40000 + i) for i in range(5)] + [_syn(40000)]  # the last one: a retransmission
    out = engine.feed_batch([(1_700_000_000, 0, f) for f in frames], LINK_ETHERNET)
    assert books.reader is not None
    books.reader.join(10)
    assert len(out) == 5
    [snap] = books.snapshots
    assert snap["packets"] == sum(snap["fingerprinted"].values()) + sum(snap["skipped"].values())
    assert sum(snap["syn_mail_classes"].values()) == sum(snap["fingerprinted"].values())
    assert engine.summary()["packets"] == 6 and engine.summary()["skipped"] == {"retransmitted-syn": 1}
