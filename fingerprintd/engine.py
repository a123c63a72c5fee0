"""Frames in, fingerprinted observations out: packet -> flows -> matcher.

The engine owns no I/O.  Live capture and offline replay both feed it frames
and take back `Observation`s; every frame it is given is either fingerprinted
or counted under a skip reason, so the counters always add up:
``packets == sum(fingerprinted.values()) + sum(skipped.values())``, and
``sum(syn_mail_classes.values()) == fingerprinted["syn"] + fingerprinted["sendsyn probe"]``.
A batch updates them under a lock and `summary()` reads them under it: a
reader on another thread (the service's Stats) sees them between batches,
never half-way through one (it once saw more fingerprinted than packets).
"""

from __future__ import annotations

import struct
import threading
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from fingerprintd import accel, nat, packet
from fingerprintd.classes import NO_CLASSES, ClassMap
from fingerprintd.flows import FlowLimits, FlowTable, RecentSyns
from fingerprintd.matcher import Fingerprint, Matcher
from fingerprintd.mode import P0fMode
from fingerprintd.nat import NatRecord, Uptime
from fingerprintd.packet import ACK, SYN, Packet
from fingerprintd.signatures import Database

# Skip reasons the engine adds to the parser's.
R_NOT_SYN = "not-syn"  # ACK/FIN/RST: used for flow tracking only
R_RETRANSMIT = "retransmitted-syn"
R_STRAY_SYNACK = "syn+ack-without-tracked-syn"
R_OTHER_PORT = "other-port"


class Observation(NamedTuple):
    """One fingerprinted SYN or SYN+ACK, with the host records it set off.

    With `Engine(host_records=True)` an ACK, FIN or RST of a tracked flow can
    also yield an observation of its own: mod "uptime", `fp` None (p0f logs
    uptime from any packet of a flow whose timestamps allow it).
    """

    mod: str  # "syn", "syn+ack", "sendsyn probe", "sendsyn response", or "uptime"
    pkt: Packet
    fp: Fingerprint  # None only for mod "uptime"
    linktype: int
    to_server: bool  # the packet went client -> server
    nat: NatRecord | None  # a "host change" or "ip sharing" record, p0f logs it after the observation
    uptime: Uptime | None  # p0f logs it after the mtu line

    @property
    def client(self) -> tuple[bytes, int]:
        p = self.pkt
        return (p.src, p.sport) if self.to_server else (p.dst, p.dport)

    @property
    def server(self) -> tuple[bytes, int]:
        p = self.pkt
        return (p.dst, p.dport) if self.to_server else (p.src, p.sport)


_new_observation = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path
# pcapy's next_batch metadata: (sec, usec, offset in the buffer, captured length) per frame.
BATCH_META = struct.Struct("=IIII")


def split_batch(blob: bytes, meta: bytes) -> list[tuple[int, int, bytes]]:
    """A next_batch buffer and its BATCH_META records as (sec, usec, frame) triples."""
    return [(s, u, blob[o : o + n]) for s, u, o, n in BATCH_META.iter_unpack(meta)]


def join_batch(batch: list[tuple[int, int, bytes]]) -> tuple[bytes, bytes]:
    """(sec, usec, frame) triples as a next_batch buffer and its BATCH_META records (split_batch's inverse)."""
    blob, meta = bytearray(), bytearray()
    for sec, usec, frame in batch:
        meta += BATCH_META.pack(sec, usec, len(blob), len(frame))
        blob += frame
    return bytes(blob), bytes(meta)


def build_engine(db: Database, classes: ClassMap = NO_CLASSES, ports: Iterable[int] | None = (25,),
                 live: bool = False, host_records: bool | None = None) -> Engine:
    """The engine the CLI, the service and the accuracy report run: the matcher, the flow books and the
    parser all in the mode the database was read in (signatures.load(path, mode)), so no two stages can
    disagree about p0f's deviations.  `live`: the service's books (flows.RecentSyns), no host records from
    ACK/FIN/RST; otherwise p0f's books, with them."""
    impl = accel.ACCEL  # the compiled Matcher with the accelerator: the same Fingerprints, made faster
    matcher = (impl.matcher.Matcher if impl is not None else Matcher)(db, classes=classes)
    return Engine(matcher, ports=ports, flows=live_books() if live else None,
                  host_records=not live if host_records is None else host_records)


def p0f_books(limits: FlowLimits | None = None) -> FlowTable:
    """p0f's flow books (replay), from the selected implementation (fingerprintd/accel.py)."""
    impl = accel.ACCEL
    return (impl.flows.FlowTable if impl is not None else FlowTable)(limits)


def live_books(size: int = 65536, hosts: int = 65536) -> RecentSyns:
    """The service's flow books (see flows.RecentSyns), from the selected implementation."""
    impl = accel.ACCEL
    return (impl.flows.RecentSyns if impl is not None else RecentSyns)(size, hosts)


class Engine:
    """Stateful (flow books, memo, counters) but free of I/O."""

    def __init__(
        self,
        matcher: Matcher,
        ports: Iterable[int] | None = (25,),
        limits: FlowLimits | None = None,
        flows: FlowTable | RecentSyns | None = None,
        host_records: bool = False,
    ) -> None:
        self.matcher = matcher
        self.ports = frozenset(ports) if ports is not None else None  # None: every port
        # p0f's deviations on or off (fingerprintd.mode): the matcher's, which is its database's; the parser
        # is given it below.  There is no way to tell the engine another.
        self.mode: P0fMode = matcher.mode
        # The implementation this engine runs, fixed when it is built: the compiled loop, or None for the
        # pure-Python reference below (both give the same observations, counters and bytes).
        self.accel = accel.ACCEL
        self.flows = flows if flows is not None else p0f_books(limits)  # p0f's books unless told otherwise
        self.packets = 0
        self.fingerprinted: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.syn_classes: Counter[str] = Counter()  # SYNs by the sender's mail class
        self.records: Counter[str] = Counter()  # host change, ip sharing, uptime
        self.host_records = host_records  # uptime records from ACK/FIN/RST packets too
        self._lock = threading.Lock()  # held for a whole batch: the counters change together

    # Read by the compiled loops (_speedups._Loop, _replay): the mode's switches as bools, derived.
    @property
    def p0f_bugs(self) -> bool:
        """Every deviation of the mode at once: what the parser is told."""
        return self.mode.p0f_bugs

    @property
    def nat_exact(self) -> bool:
        """p0f's NAT scoring to the bit, see nat.py."""
        return self.mode.nat_exact

    def feed(self, frame: bytes, linktype: int, sec: int, usec: int = 0) -> Observation | None:
        """Process one captured frame; the observation it yields, if any."""
        out = self.feed_batch([(sec, usec, frame)], linktype)
        return out[0] if out else None

    def feed_blob(self, blob: bytes, meta: bytes, linktype: int) -> list[Observation]:
        """Process captured frames as pcapy's next_batch hands them over: one buffer, and BATCH_META
        records; their observations, in order.  The compiled loop reads the frames in place."""
        impl = self.accel
        if impl is not None:
            with self._lock:
                return impl.speedups.feed_blob(self, blob, meta, linktype, impl.nat)
        return self.feed_batch(split_batch(blob, meta), linktype)

    def feed_batch(self, batch: list[tuple[int, int, bytes]], linktype: int) -> list[Observation]:
        """Process captured frames, given as (sec, usec, frame); their observations, in order."""
        with self._lock:
            impl = self.accel
            if impl is not None:
                return impl.speedups.feed_batch(self, batch, linktype, impl.nat)
            return self._feed_batch(batch, linktype)

    def _feed_batch(self, batch: list[tuple[int, int, bytes]], linktype: int) -> list[Observation]:
        out = []
        parse = packet.parse
        mode = self.mode
        flows = self.flows
        fingerprint = self.matcher.fingerprint
        ports = self.ports
        skipped = self.skipped
        done = self.fingerprinted
        classes = self.syn_classes
        exact = mode.nat_exact
        on_syn = nat.on_syn
        records = self.records
        for sec, usec, frame in batch:
            flows.tick(sec)
            pkt = parse(frame, linktype, sec + usec * 1e-6, mode)
            if pkt.__class__ is str:
                skipped[pkt] += 1  # type: ignore[index]
                continue
            tcp_type = pkt.tcp_type  # type: ignore[union-attr]
            if tcp_type != SYN and tcp_type != SYN | ACK:
                due = flows.other(pkt)  # type: ignore[arg-type]
                skipped[R_NOT_SYN] += 1
                if due is not None and self.host_records:
                    up = nat.on_other(due[0], due[1], pkt, sec * 1000 + usec // 1000)  # type: ignore[arg-type]
                    if up is not None:
                        records["uptime"] += 1
                        out.append(_new_observation(Observation, ("uptime", pkt, None, linktype, due[1], None, up)))
                continue
            if ports is not None and pkt.dport not in ports and pkt.sport not in ports:  # type: ignore[union-attr]
                skipped[R_OTHER_PORT] += 1
                continue
            if tcp_type == SYN:
                flow = flows.syn(pkt)  # type: ignore[arg-type]
                if flow is None:
                    skipped[R_RETRANSMIT] += 1
                    continue
                fp = fingerprint(pkt, True, 0, flow.sendsyn)  # type: ignore[arg-type]
                flows.syn_done(flow, pkt, fp.app)  # type: ignore[arg-type]
                mod = "sendsyn probe" if flow.sendsyn else "syn"
                classes[fp.mail_class] += 1
                to_srv = True
            else:
                flow = flows.synack(pkt)  # type: ignore[arg-type]
                if flow is None:
                    skipped[R_STRAY_SYNACK] += 1
                    continue
                fp = fingerprint(pkt, False, flow.syn_mss, flow.sendsyn)  # type: ignore[arg-type]
                flows.synack_done(flow, pkt, fp.app)  # type: ignore[arg-type]
                mod = "sendsyn response" if flow.sendsyn else "syn+ack"
                to_srv = False
            done[mod] += 1
            rec, up = on_syn(to_srv, flow, pkt, fp, sec, sec * 1000 + usec // 1000, exact)  # type: ignore[arg-type]
            if rec is not None:
                records[rec.kind] += 1
            if up is not None:
                records["uptime"] += 1
            out.append(_new_observation(Observation, (mod, pkt, fp, linktype, to_srv, rec, up)))
        self.packets += len(batch)
        return out

    def summary(self) -> dict:
        """The counters, all from the same moment (between two batches)."""
        with self._lock:
            return {
                "packets": self.packets,
                "fingerprinted": dict(self.fingerprinted),
                "skipped": dict(sorted(self.skipped.items())),
                "syn_mail_classes": dict(sorted(self.syn_classes.items())),
                "records": dict(sorted(self.records.items())),
                "cache": self.matcher.cache_stats(),
            }
