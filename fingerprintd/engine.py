"""Frames in, fingerprinted observations out: packet -> flows -> matcher.

The engine owns no I/O.  Live capture and offline replay both feed it frames
and take back `Observation`s; every frame it is given is either fingerprinted
or counted under a skip reason, so the counters always add up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from fingerprintd import packet
from fingerprintd.flows import FlowLimits, FlowTable
from fingerprintd.matcher import Fingerprint, Matcher
from fingerprintd.packet import ACK, SYN, Packet

# Skip reasons the engine adds to the parser's.
R_NOT_SYN = "not-syn"  # ACK/FIN/RST: used for flow tracking only
R_RETRANSMIT = "retransmitted-syn"
R_STRAY_SYNACK = "syn+ack-without-tracked-syn"
R_OTHER_PORT = "other-port"


class Observation(NamedTuple):
    """One fingerprinted SYN or SYN+ACK."""

    mod: str  # "syn", "syn+ack", "sendsyn probe" or "sendsyn response"
    pkt: Packet
    fp: Fingerprint
    linktype: int

    @property
    def to_server(self) -> bool:
        return self.fp.to_server

    @property
    def client(self) -> tuple[bytes, int]:
        p = self.pkt
        return (p.src, p.sport) if self.fp.to_server else (p.dst, p.dport)

    @property
    def server(self) -> tuple[bytes, int]:
        p = self.pkt
        return (p.dst, p.dport) if self.fp.to_server else (p.src, p.sport)


class Engine:
    """Stateful (flow books, memo, counters) but free of I/O."""

    def __init__(
        self,
        matcher: Matcher,
        ports: Iterable[int] | None = (25,),
        p0f_bugs: bool = False,
        limits: FlowLimits | None = None,
    ) -> None:
        self.matcher = matcher
        self.ports = frozenset(ports) if ports is not None else None  # None: every port
        self.p0f_bugs = p0f_bugs
        self.flows = FlowTable(limits)
        self.packets = 0
        self.fingerprinted: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def feed(self, frame: bytes, linktype: int, sec: int, usec: int = 0) -> Observation | None:
        """Process one captured frame; the observation it yields, if any."""
        self.packets += 1
        self.flows.tick(sec)
        pkt = packet.parse(frame, linktype, sec + usec * 1e-6, self.p0f_bugs)
        if pkt.__class__ is str:
            self.skipped[pkt] += 1  # type: ignore[index]
            return None
        return self.feed_packet(pkt, linktype)  # type: ignore[arg-type]

    def feed_batch(self, batch: list[tuple[int, int, bytes]], linktype: int) -> list[Observation]:
        """`feed` for a batch of (sec, usec, frame): the observations, in order."""
        out = []
        parse = packet.parse
        bugs = self.p0f_bugs
        tick = self.flows.tick
        skipped = self.skipped
        feed_packet = self.feed_packet
        for sec, usec, frame in batch:
            tick(sec)
            pkt = parse(frame, linktype, sec + usec * 1e-6, bugs)
            if pkt.__class__ is str:
                skipped[pkt] += 1  # type: ignore[index]
                continue
            obs = feed_packet(pkt, linktype)  # type: ignore[arg-type]
            if obs is not None:
                out.append(obs)
        self.packets += len(batch)
        return out

    def feed_packet(self, pkt: Packet, linktype: int) -> Observation | None:
        tcp_type = pkt.tcp_type
        ports = self.ports
        if tcp_type == SYN:
            if ports is not None and pkt.dport not in ports and pkt.sport not in ports:
                self.skipped[R_OTHER_PORT] += 1
                return None
            flow = self.flows.syn(pkt)
            if flow is None:
                self.skipped[R_RETRANSMIT] += 1
                return None
            fp = self.matcher.fingerprint(pkt, True, 0, flow.sendsyn)
            self.flows.syn_done(flow, pkt, fp.app)
            mod = "sendsyn probe" if flow.sendsyn else "syn"
        elif tcp_type == SYN | ACK:
            if ports is not None and pkt.dport not in ports and pkt.sport not in ports:
                self.skipped[R_OTHER_PORT] += 1
                return None
            flow = self.flows.synack(pkt)
            if flow is None:
                self.skipped[R_STRAY_SYNACK] += 1
                return None
            fp = self.matcher.fingerprint(pkt, False, flow.syn_mss, flow.sendsyn)
            self.flows.synack_done(flow, pkt, fp.app)
            mod = "sendsyn response" if flow.sendsyn else "syn+ack"
        else:
            self.flows.other(pkt)
            self.skipped[R_NOT_SYN] += 1
            return None
        self.fingerprinted[mod] += 1
        return Observation(mod, pkt, fp, linktype)

    def summary(self) -> dict:
        return {
            "packets": self.packets,
            "fingerprinted": dict(self.fingerprinted),
            "skipped": dict(sorted(self.skipped.items())),
            "cache": self.matcher.cache_stats(),
        }
