"""Connection tracking that decides which SYNs and SYN+ACKs get fingerprinted.

p0f does not fingerprint every SYN it sees: a retransmitted SYN (same
4-tuple, same ISN, flow still tracked) is skipped, a SYN+ACK is only
fingerprinted for a tracked flow whose SYN it saw, and the SYN+ACK is matched
with that SYN's MSS in hand.  Which flows are still tracked depends on p0f's
bounded tables (``process.c``): flows expire 30 s after creation, the table
holds 1,000 flows and 10,000 hosts, and hitting a cap prunes the oldest 10 %
of flows (and at most one host).  This module keeps the same books so that a
replay reports exactly the packets p0f reports.

One approximation: p0f keeps HTTP flows open while it reads their headers;
here an HTTP flow closes at the server's first payload.  That changes nothing
but the rare retransmitted-SYN check on the same flow.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from fingerprintd.packet import ACK, FIN, RST, SENDSYN_MSS, SENDSYN_WIN, Packet

EXPIRE_INTERVAL = 50  # p0f runs expiry every 50th packet
_U32 = 0xFFFFFFFF


class Host:
    """One address's entry in p0f's host table."""

    __slots__ = ("first_seen", "last_seen", "use_cnt", "total_conn", "nat")

    def __init__(self, first_seen: int, last_seen: int) -> None:
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.use_cnt = 0  # flows that reference it; p0f never frees a host in use
        self.total_conn = 0
        self.nat = None  # nat.HostState once a signature was scored: it lives and dies with the host


class Flow:
    """A connection from its SYN until p0f would forget it."""

    __slots__ = ("key", "client", "server", "created", "next_cli_seq", "syn_mss", "sendsyn", "acked",
                 "next_srv_seq", "http", "request", "cli_tps", "srv_tps")

    def __init__(self, key: tuple, client: Host, server: Host, created: int, next_cli_seq: int) -> None:
        self.key = key  # (client, client port, server, server port)
        self.client = client
        self.server = server
        self.created = created
        self.next_cli_seq = next_cli_seq
        self.syn_mss = 0
        self.sendsyn = False
        self.acked = False
        self.next_srv_seq = 0
        self.http = 0  # 0 unknown, 1 HTTP, -1 not HTTP
        self.request = b""
        self.cli_tps = 0  # timestamp clock readings, see nat.check_uptime: 0 none yet, -1 bad, else Hz
        self.srv_tps = 0


class FlowLimits(NamedTuple):  # not a dataclass: making one costs every command ~1 ms of start
    max_conn: int = 1000
    max_hosts: int = 10000
    conn_max_age: int = 30  # seconds
    host_idle: int = 120 * 60  # seconds


class FlowTable:
    """p0f's flow and host bookkeeping, driven one packet at a time."""

    def __init__(self, limits: FlowLimits | None = None) -> None:
        self.limits = limits or FlowLimits()
        # Oldest first: flows by creation, hosts by last touch.  OrderedDict,
        # not dict: popping from the front of a plain dict leaves a trail of
        # dead slots that makes finding the oldest entry O(n).
        self.flows: OrderedDict[tuple, Flow] = OrderedDict()
        self.hosts: OrderedDict[tuple, Host] = OrderedDict()
        self.packets = 0
        self._last_expire = 0

    def tick(self, sec: int) -> None:
        """Count one captured packet (before parsing), expiring like p0f."""
        self.packets += 1
        if self.packets % EXPIRE_INTERVAL == 0 and sec != self._last_expire:
            self._last_expire = sec
            self._expire(sec)

    def _expire(self, now: int) -> None:
        lim = self.limits
        old = []
        for key, flow in self.flows.items():
            if (now - flow.created) & _U32 <= lim.conn_max_age:
                break
            old.append(key)
        for key in old:
            self._destroy(key)
        idle = []
        for key, host in self.hosts.items():
            if (now - host.last_seen) & _U32 <= lim.host_idle:
                break
            if not host.use_cnt:
                idle.append(key)
        for key in idle:
            del self.hosts[key]

    def _destroy(self, key: tuple) -> None:
        flow = self.flows.pop(key)
        flow.client.use_cnt -= 1
        flow.server.use_cnt -= 1

    def _nuke_flows(self) -> None:
        popitem = self.flows.popitem
        for _ in range(min(len(self.flows), 1 + len(self.flows) * 10 // 100)):
            flow = popitem(last=False)[1]
            flow.client.use_cnt -= 1
            flow.server.use_cnt -= 1

    def _host(self, key: bytes, now: int) -> Host:
        """Look up or create an address's host entry, touching it (p0f's order)."""
        hosts = self.hosts
        host = hosts.get(key)
        if host is None:
            if len(hosts) > self.limits.max_hosts:
                # p0f prunes flows, then frees the oldest host if idle: one at most.
                self._nuke_flows()
                if hosts:
                    oldest = next(iter(hosts))
                    if not hosts[oldest].use_cnt:
                        del hosts[oldest]
            host = hosts[key] = Host(now, now)
        else:
            host.last_seen = now
            hosts.move_to_end(key)
        return host

    # Keys: a host is its packed address (4 or 16 bytes, so the IP version is
    # implied); a flow is (client, client port, server, server port).

    def _lookup(self, pkt: Packet) -> tuple[Flow | None, bool]:
        flow = self.flows.get((pkt.src, pkt.sport, pkt.dst, pkt.dport))
        if flow is not None:
            return flow, True
        return self.flows.get((pkt.dst, pkt.dport, pkt.src, pkt.sport)), False

    def syn(self, pkt: Packet) -> Flow | None:
        """A SYN: the new flow to fingerprint it under, or None for a duplicate."""
        src, sport, dst, dport = pkt.src, pkt.sport, pkt.dst, pkt.dport
        key = (src, sport, dst, dport)
        flows = self.flows
        flow = flows.get(key)
        if flow is not None:
            if (flow.next_cli_seq - 1) & _U32 == pkt.seq:
                return None
            self._destroy(key)
        else:
            flow = flows.get((dst, dport, src, sport))
            if flow is not None:  # the other side opened the same pair
                self._destroy(flow.key)
        if len(flows) > self.limits.max_conn:
            self._nuke_flows()
        now = int(pkt.ts)
        client = self._host(src, now)
        server = self._host(dst, now)
        client.use_cnt += 1
        server.use_cnt += 1
        client.total_conn += 1
        server.total_conn += 1
        flow = Flow(key, client, server, now, (pkt.seq + 1) & _U32)
        flow.sendsyn = pkt.win == SENDSYN_WIN and pkt.mss == SENDSYN_MSS
        self.flows[key] = flow
        return flow

    def syn_done(self, flow: Flow, pkt: Packet, app: bool) -> None:
        """After fingerprinting a SYN: tools' flows are dropped, as in p0f."""
        flow.syn_mss = pkt.mss
        if app and not flow.sendsyn:
            self._destroy(flow.key)

    def synack(self, pkt: Packet) -> Flow | None:
        """A SYN+ACK: its tracked flow if it should be fingerprinted, else None."""
        flow, to_srv = self._lookup(pkt)
        if flow is None:
            return None
        if flow.sendsyn:
            return flow
        if to_srv or flow.acked:
            return None
        flow.acked = True
        return flow

    def synack_done(self, flow: Flow, pkt: Packet, app: bool) -> None:
        if flow.sendsyn or app:
            self._destroy(flow.key)
        else:
            flow.next_srv_seq = (pkt.seq + 1) & _U32

    def other(self, pkt: Packet) -> tuple[Flow, bool] | None:
        """ACK, FIN or RST: keep the flow books as p0f does.

        Returns (flow, to_srv) when p0f would read the packet's timestamp for
        uptime (an in-sequence ACK, or a FIN/RST) - the flow may be gone by then.
        """
        flow, to_srv = self._lookup(pkt)
        if flow is None:
            return None
        if pkt.tcp_type & (FIN | RST):
            self._destroy(flow.key)
            return flow, to_srv
        if flow.sendsyn or not flow.acked:
            self._destroy(flow.key)
            return None
        if to_srv:
            if flow.next_cli_seq != pkt.seq:
                return None
            flow.next_cli_seq = (flow.next_cli_seq + pkt.pay_len) & _U32
        else:
            if flow.next_srv_seq != pkt.seq:
                return None
            flow.next_srv_seq = (flow.next_srv_seq + pkt.pay_len) & _U32
        if pkt.pay_len and not self._http_needs_more(flow, pkt, to_srv):
            self._destroy(flow.key)
        return flow, to_srv

    @staticmethod
    def _http_needs_more(flow: Flow, pkt: Packet, to_srv: bool) -> bool:
        """p0f keeps a flow open only while it may still read HTTP headers."""
        if not to_srv or flow.http < 0:
            return False  # the server spoke (first, or answering), or not HTTP
        if flow.http == 0:
            if len(flow.request) < 16:
                flow.request += pkt.payload[: 16 - len(flow.request)]
            if len(flow.request) < 15:
                return True
            flow.http = 1 if flow.request.startswith((b"GET /", b"HEAD /")) else -1
        return flow.http > 0


class _SynOnly:
    """What RecentSyns hands the engine for a new SYN: its client's host entry, no flow state."""

    __slots__ = ("sendsyn", "syn_mss", "client", "server", "cli_tps", "srv_tps")

    def __init__(self, sendsyn: bool, client: Host) -> None:
        self.sendsyn = sendsyn
        self.syn_mss = 0
        self.client = client
        self.server = None
        self.cli_tps = 0
        self.srv_tps = 0


class RecentSyns:
    """Flow books for the live service: skip retransmitted SYNs, track nothing else.

    The service only answers questions about clients, so it needs neither
    p0f's SYN+ACK pairing nor its flow table; keeping p0f's books would cost
    a third of the per-SYN budget.  A SYN is a retransmission when the same
    4-tuple was seen with the same ISN among the last `size` SYNs.  Clients
    keep a host entry (for the host-change scores, nat.py) among the last
    `hosts` addresses seen.
    """

    def __init__(self, size: int = 65536, hosts: int = 65536) -> None:
        self.size = size
        self.max_hosts = hosts
        self.seen: OrderedDict[tuple, int] = OrderedDict()
        self.hosts: OrderedDict[bytes, Host] = OrderedDict()

    def tick(self, sec: int) -> None:
        pass

    def syn(self, pkt: Packet) -> _SynOnly | None:
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        seen = self.seen
        if seen.get(key) == pkt.seq:
            return None
        seen[key] = pkt.seq
        seen.move_to_end(key)
        if len(seen) > self.size:
            seen.popitem(last=False)
        now = int(pkt.ts)
        hosts = self.hosts
        host = hosts.get(pkt.src)
        if host is None:
            host = hosts[pkt.src] = Host(now, now)
            if len(hosts) > self.max_hosts:
                hosts.popitem(last=False)
        else:
            host.last_seen = now
            hosts.move_to_end(pkt.src)
        return _SynOnly(pkt.win == SENDSYN_WIN and pkt.mss == SENDSYN_MSS, host)

    def syn_done(self, flow, pkt: Packet, app: bool) -> None:
        pass

    def synack(self, pkt: Packet) -> None:
        return None  # not tracked: reported as a SYN+ACK without a tracked SYN

    def synack_done(self, flow, pkt: Packet, app: bool) -> None:
        pass

    def other(self, pkt: Packet) -> None:
        return None


__all__ = ["ACK", "FlowTable", "FlowLimits", "Flow", "Host", "RecentSyns"]
