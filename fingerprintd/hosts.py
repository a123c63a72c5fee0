"""A bounded table of fingerprinted SYNs, by connection and by host.

Mail filters ask about a connection (client ip, client port) a few
milliseconds after its SYN went past, or about a client address alone.  Both
tables are cachetools TTLCaches: entries expire after `ttl` seconds, and when
a table is full the least recently used entry goes first, so a SYN flood from
millions of spoofed sources cannot grow memory past the bound.

Per host it keeps the history a spam score can use: first and last seen,
connection count, last distance, how many different signatures were seen
(a NAT or host-change signal, like p0f's `last_chg`/`last_nat`).

Thread-safe: the capture thread adds, API threads read and may wait for a
SYN that has not been captured yet.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field

from cachetools import TTLCache

from fingerprintd.engine import Observation

MAX_SIGNATURES_PER_HOST = 8  # distinct raw signatures remembered per host


class AddressError(ValueError):
    """An address that cannot be parsed."""


def normalize_ip(text: str) -> bytes:
    """Packed address from text: IPv4, IPv6, IPv4-mapped IPv6 and Postfix's `IPv6:` prefix.

    An IPv4-mapped address (``::ffff:192.0.2.1``) is its IPv4 address, since
    that is what the SYN carried.
    """
    t = text.strip()
    if t[:5].lower() == "ipv6:":
        t = t[5:]
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        addr = ipaddress.ip_address(t)
    except ValueError:
        raise AddressError(f"not an IP address: {text!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.packed


@dataclass(slots=True)
class HostRecord:
    first_seen: float
    last_seen: float
    count: int = 0
    last_distance: int = 0
    signatures: list[str] = field(default_factory=list)  # distinct raw_sigs, oldest first
    os_names: list[str] = field(default_factory=list)  # distinct matched OS names
    last_change: float = 0.0  # when the matched OS name last changed
    changes: int = 0
    latest: Observation | None = None

    @property
    def host_changed(self) -> bool:
        return self.changes > 0


class HostTable:
    def __init__(self, max_connections: int = 1_000_000, max_hosts: int = 1_000_000,
                 ttl: float = 600.0, timer=time.monotonic) -> None:
        self.connections: TTLCache = TTLCache(max_connections, ttl, timer=timer)
        self.hosts: TTLCache = TTLCache(max_hosts, ttl, timer=timer)
        self.added = 0
        self.lookups = 0
        self.hits = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    def add(self, obs: Observation) -> None:
        """Record a fingerprinted SYN (SYN+ACKs describe servers: ignored here)."""
        if not obs.fp.to_server:
            return
        pkt, fp = obs.pkt, obs.fp
        with self._lock:
            self.added += 1
            self.connections[(pkt.src, pkt.sport)] = obs
            host = self.hosts.get(pkt.src)
            if host is None:
                host = HostRecord(pkt.ts, pkt.ts)
            host.last_seen = pkt.ts
            host.count += 1
            host.last_distance = fp.dist
            if fp.raw_sig not in host.signatures:
                host.signatures.append(fp.raw_sig)
                del host.signatures[:-MAX_SIGNATURES_PER_HOST]
            if fp.label is not None and not fp.label.is_app:
                name = fp.label.name
                if host.os_names and host.os_names[-1] != name:
                    host.changes += 1
                    host.last_change = pkt.ts
                if name in host.os_names:
                    host.os_names.remove(name)
                host.os_names.append(name)
                del host.os_names[:-MAX_SIGNATURES_PER_HOST]
            host.latest = obs
            self.hosts[pkt.src] = host  # re-set: refreshes its TTL and LRU place
            self._arrived.notify_all()

    def lookup(self, ip: bytes, port: int = 0, wait: float = 0.0) -> tuple[Observation | None, HostRecord | None]:
        """The SYN of connection (ip, port), or the latest from ip when port is 0.

        Waits up to `wait` seconds for it to arrive.
        """
        deadline = time.monotonic() + wait
        with self._lock:
            self.lookups += 1
            while True:
                host = self.hosts.get(ip)
                obs = self.connections.get((ip, port)) if port else (host.latest if host else None)
                remaining = deadline - time.monotonic()
                if obs is not None or remaining <= 0:
                    break
                self._arrived.wait(remaining)
            if obs is not None:
                self.hits += 1
            return obs, host

    def sizes(self) -> dict[str, int]:
        with self._lock:
            self.connections.expire()
            self.hosts.expire()
            return {"connections": len(self.connections), "hosts": len(self.hosts)}
