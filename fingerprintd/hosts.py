"""A bounded table of fingerprinted SYNs, by connection and by host.

Mail filters ask about a connection (client ip, client port) a few
milliseconds after its SYN went past, or about a client address alone.  Both
tables expire entries after `ttl` seconds, and when a table is full the least
recently used entry goes first, so a SYN flood from millions of spoofed
sources cannot grow memory past the bound.

Per host it keeps the history a spam score can use: first and last seen,
connection count, last distance, how many different signatures were seen
(a NAT or host-change signal, like p0f's `last_chg`/`last_nat`).

Thread-safe: the capture thread adds, API threads read and may wait for a
SYN that has not been captured yet.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from fingerprintd.address import AddressError, normalize_ip  # noqa: F401 - compat, server and the tests import them here

if TYPE_CHECKING:  # types only: the compiled copy (setup.py) is imported while fingerprintd.engine loads
    from fingerprintd.engine import Observation
    from fingerprintd.matcher import Fingerprint

MAX_SIGNATURES_PER_HOST = 8  # distinct raw signatures remembered per host
MAX_INTERNED_SERVERS = 256  # (server, port, mod, linktype) shared by all entries; more are stored per entry
EXPIRY_QUANTUM = 1 / 16  # seconds: writes this close together share one expiry time


class Syn:
    """What the table keeps of one fingerprinted SYN: the parts of an `Observation` a lookup answers with.

    A flood of spoofed sources fills the table with a million of these, so
    they are small: the verdict is the matcher's shared `Fingerprint`, where
    it was seen (server address and port, kind, link type) is one interned
    tuple, and the client address and port are the
    connection table's int key (`conn_key`), decoded when asked for.  It
    reads like an Observation (``obs.pkt.src``, ``obs.fp``, ``obs.server``);
    ``pkt`` is the record itself.
    """

    __slots__ = ("ts", "key", "ttl", "where", "fp", "expires")  # six slots: 80 bytes, seven would be 96

    def __init__(self, ts: float, key: int, ttl: int, where: tuple[bytes, int, str, int], fp: Fingerprint) -> None:
        self.ts = ts
        self.key = key
        self.ttl = ttl
        self.where = where  # (server address, server port, mod, linktype): interned, shared by many
        self.fp = fp
        self.expires = 0.0  # set by the table that holds it

    # The host records a SYN set off (nat.py): almost always none, so they live
    # in a subclass's slots only when there are some.
    nat = None
    uptime = None

    @property
    def dst(self) -> bytes:
        return self.where[0]

    @property
    def dport(self) -> int:
        return self.where[1]

    @property
    def mod(self) -> str:
        return self.where[2]

    @property
    def linktype(self) -> int:
        return self.where[3]

    @property
    def pkt(self) -> Syn:
        return self

    @property
    def src(self) -> bytes:
        key = self.key
        if key >> 144:
            return (key >> 16 & _ADDR6).to_bytes(16, "big")
        return (key >> 16).to_bytes(4, "big")

    @property
    def sport(self) -> int:
        return self.key & 0xFFFF

    @property
    def ip_ver(self) -> int:
        return 6 if self.key >> 144 else 4

    @property
    def to_server(self) -> bool:
        return self.fp.to_server

    @property
    def client(self) -> tuple[bytes, int]:
        return self.src, self.sport

    @property
    def server(self) -> tuple[bytes, int]:
        return self.dst, self.dport

    def __repr__(self) -> str:
        return f"Syn({self.mod}, {self.src.hex()}:{self.sport} -> {self.dst.hex()}:{self.dport}, {self.fp.raw_sig})"


class SynWithRecords(Syn):
    """A Syn that set off a host-change, ip-sharing or uptime record."""

    __slots__ = ("nat", "uptime")  # type: ignore[misc]


_ADDR6 = (1 << 128) - 1
_V6_MARK = 1 << 128  # set in an IPv6 key, so that ::a.b.c.d and a.b.c.d differ


def conn_key(ip: bytes, port: int) -> int:
    """(address, port) as one int: 32 bytes for IPv4, against 136 for a tuple and its items.

    An IPv6 key carries a marker bit, so ::a.b.c.d and a.b.c.d differ.
    """
    return (int.from_bytes(ip, "big") | (_V6_MARK if len(ip) == 16 else 0)) << 16 | port


def host_key(ip: bytes) -> int:
    """An address as an int (an IPv6 one with a marker bit, as in `conn_key`)."""
    return int.from_bytes(ip, "big") | (_V6_MARK if len(ip) == 16 else 0)


def shared_where(servers: dict, where: tuple[bytes, int, str, int]) -> tuple[bytes, int, str, int]:
    """(server, port, mod, linktype) interned in a table's `servers`: one tuple for the many SYNs of an MX's
    few addresses and ports (at most MAX_INTERNED_SERVERS kept; the rest are stored per entry)."""
    shared = servers.get(where)
    if shared is None:
        shared = where
        if len(servers) < MAX_INTERNED_SERVERS:
            servers[where] = where
    return shared


def syn_of(obs: Observation, servers: dict | None = None) -> Syn:
    """The table's record of a fingerprinted SYN; its `where` interned in `servers` when given (a table's)."""
    pkt = obs.pkt
    where = (pkt.dst, pkt.dport, obs.mod, obs.linktype)
    if servers is not None:
        where = shared_where(servers, where)
    if obs.nat is None and obs.uptime is None:
        return Syn(pkt.ts, conn_key(pkt.src, pkt.sport), pkt.ttl, where, obs.fp)
    syn = SynWithRecords(pkt.ts, conn_key(pkt.src, pkt.sport), pkt.ttl, where, obs.fp)
    syn.nat = obs.nat
    syn.uptime = obs.uptime
    return syn


class HostRecord:
    """One client address's history within the table's window.

    The table keeps a host seen once as its `Syn` alone (a spoofed flood is
    all such hosts) and makes a HostRecord of it when asked or when the
    second SYN comes.
    """

    __slots__ = ("first_seen", "last_seen", "count", "last_distance", "signatures", "os_names", "last_change",
                 "changes", "latest", "last_match", "expires", "last_ip_sharing", "last_host_change",
                 "uptime_minutes", "uptime_modulo_days")

    def __init__(self, obs: Syn) -> None:
        fp = obs.fp
        label = fp.label
        self.first_seen = self.last_seen = obs.ts
        self.count = 1
        self.last_distance = fp.dist
        self.signatures = [fp.raw_sig]  # distinct raw_sigs, oldest first
        os_match = label is not None and not label.is_app
        self.os_names = [label.name] if os_match else []
        self.last_change = 0.0  # when the matched OS name last changed
        self.changes = 0
        self.latest = obs
        # The latest SYN that matched an OS (not a tool): what p0f's API reports.
        self.last_match = obs if os_match else None
        self.expires = obs.expires
        # p0f's host records (nat.py) as its API reports them: the time of the last
        # "ip sharing" (last_nat) and "host change" (last_chg) record, the last uptime.
        self.last_ip_sharing = self.last_host_change = 0.0
        self.uptime_minutes = self.uptime_modulo_days = 0
        if obs.nat is not None or obs.uptime is not None:
            self._records(obs)

    def _records(self, obs: Syn) -> None:
        nat, up = obs.nat, obs.uptime
        if nat is not None:
            if nat.kind == "ip sharing":
                self.last_ip_sharing = obs.ts
            else:
                self.last_host_change = obs.ts
        if up is not None:
            self.uptime_minutes, self.uptime_modulo_days = up.minutes, up.modulo_days

    def update(self, obs: Syn) -> None:
        """A later SYN from this address (a `Syn`: its fields are read directly, not through `pkt`)."""
        fp = obs.fp
        ts = obs.ts
        self.last_seen = ts
        self.count += 1
        self.last_distance = fp.dist
        self.latest = obs
        if obs.nat is not None or obs.uptime is not None:
            self._records(obs)
        sigs = self.signatures
        raw = fp.raw_sig
        if sigs[-1] != raw and raw not in sigs:  # the same stack again, almost always
            sigs.append(raw)
            del sigs[:-MAX_SIGNATURES_PER_HOST]
        label = fp.label
        if label is not None and not label.is_app:
            self.last_match = obs
            names = self.os_names
            name = label.name
            if not names:
                names.append(name)
            elif names[-1] != name:
                self.changes += 1
                self.last_change = ts
                if name in names:
                    names.remove(name)
                names.append(name)
                del names[:-MAX_SIGNATURES_PER_HOST]

    @property
    def host_changed(self) -> bool:
        return self.changes > 0


class ExpiringLRU:
    """A bounded mapping whose entries expire `ttl` seconds after their last write.

    Values carry their own expiry (an ``expires`` attribute, set on write):
    a (time, value) pair per entry would cost 80 bytes more.  cachetools'
    TTLCache does the same job but is slower on the insert path, which the
    capture thread takes twice per SYN (benchmarks/test_lru.py measures it).
    Writes move an entry to the back, so the front is always the oldest:
    expiry pops from the front.
    """

    def __init__(self, maxsize: int, ttl: float, timer=time.monotonic) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self.timer = timer
        self._data: OrderedDict = OrderedDict()  # key -> value, oldest write first
        self._writes = 0

    def get(self, key, default=None):
        item = self._data.get(key)
        if item is None or item.expires <= self.timer():
            return default
        return item

    def __setitem__(self, key, value) -> None:
        self.put(key, value, self.timer() + self.ttl)

    def put(self, key, value, expires: float) -> None:
        """Write with a given expiry (the host table writes both tables with the same one)."""
        data = self._data
        value.expires = expires
        data[key] = value
        data.move_to_end(key)
        if len(data) > self.maxsize:
            data.popitem(last=False)
        self._writes += 1
        if not self._writes & 255:
            self.expire()  # in bulk: peeking at the front costs more than a write

    def expire(self) -> None:
        now = self.timer()
        data = self._data
        while data:
            key = next(iter(data))
            if data[key].expires > now:
                break
            del data[key]

    def __len__(self) -> int:
        return len(self._data)


def host_table(max_connections: int = 1_000_000, max_hosts: int = 1_000_000, ttl: float = 600.0,
               timer=time.monotonic) -> HostTable:
    """A host table from the selected implementation (fingerprintd/accel.py): the compiled copy of this
    module's (setup.py; its records are C structs), or this one."""
    from fingerprintd import accel  # not at the top: the compiled copy of this module loads with accel

    impl = accel.ACCEL
    return (impl.hosts.HostTable if impl is not None else HostTable)(max_connections, max_hosts, ttl, timer)


class HostTable:
    def __init__(self, max_connections: int = 1_000_000, max_hosts: int = 1_000_000,
                 ttl: float = 600.0, timer=time.monotonic) -> None:
        self.connections = ExpiringLRU(max_connections, ttl, timer)
        self.hosts = ExpiringLRU(max_hosts, ttl, timer)  # address -> Syn (seen once) or HostRecord
        self.ttl = ttl
        self.timer = timer
        self.added = 0
        # Bumped by every write, inside the lock: an answer made from the table while it read G is still
        # the answer while it reads G (and the host has not expired): the p0f socket's compiled memo.
        self.generation = 0
        self.lookups = 0
        self.hits = 0
        self._servers: dict[tuple, tuple] = {}  # interned (server, port, mod, linktype): a few, ours
        self._expires = 0.0  # the expiry given to every write until `_fresh_until`: one float for many
        self._fresh_until = -1.0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._writes = 0  # SYNs written: every 256th expires both tables' fronts
        self._waiting = 0  # lookups blocked in wait(): only then is a notify worth its cost
        # Called with each batch's list of Syns after it is added, outside the lock, on the
        # capture thread: how the asyncio gRPC server learns a SYN it waits for arrived
        # without a thread blocked here (once per batch: with nobody waiting it returns at once).
        # A tuple, swapped whole, so the capture thread never iterates a list another thread is changing.
        self.arrival_hooks: tuple[Callable[[list[Syn]], None], ...] = ()

    def add(self, obs: Observation) -> None:
        """Record a fingerprinted SYN (SYN+ACKs describe servers: ignored here)."""
        self.add_batch((obs,))

    def add_batch(self, observations: list[Observation] | tuple[Observation, ...]) -> None:
        """Record a batch's fingerprinted SYNs (SYN+ACKs describe servers: ignored here)."""
        servers = self._servers
        syns = []
        for obs in observations:
            fp = obs.fp
            if fp is not None and fp.to_server:
                syns.append(syn_of(obs, servers))
        self.add_syns(syns)

    def add_syns(self, syns: list[Syn]) -> None:
        """Record SYNs made outside the table: by add_batch, or by the compiled live loop (_replay.LiveLoop),
        their `where` tuples interned in `_servers` (at most MAX_INTERNED_SERVERS of them).

        The capture thread's path, so it is written out flat: one lock and one
        clock read per batch, not per SYN, and each table touched once per SYN
        (a write into an OrderedDict appends a new key at the back already; only
        a key written again is moved there).
        """
        if not syns:
            return
        conns = self.connections._data
        hosts = self.hosts._data
        max_conns = self.connections.maxsize
        max_hosts = self.hosts.maxsize
        with self._lock:
            now = self.timer()
            if now >= self._fresh_until:
                # Writes within EXPIRY_QUANTUM share one expiry (a float per entry is 32 bytes):
                # an entry lives between ttl and ttl + EXPIRY_QUANTUM seconds after its write.
                self._fresh_until = now + EXPIRY_QUANTUM
                self._expires = now + self.ttl + EXPIRY_QUANTUM
            expires = self._expires
            for syn in syns:
                syn.expires = expires
                key = syn.key
                size = len(conns)
                conns[key] = syn
                if len(conns) == size:  # the key was there: it moves to the back
                    conns.move_to_end(key)
                elif size >= max_conns:
                    conns.popitem(last=False)
                hkey = key >> 16
                host = hosts.get(hkey)
                if host is None or host.expires <= now:
                    if host is not None:
                        del hosts[hkey]
                    hosts[hkey] = syn
                    if len(hosts) > max_hosts:
                        hosts.popitem(last=False)
                elif host.__class__ is HostRecord:
                    record = host
                    record.update(syn)
                    record.expires = expires
                    hosts.move_to_end(hkey)
                else:
                    record = HostRecord(host)
                    record.update(syn)
                    record.expires = expires
                    hosts[hkey] = record
                    hosts.move_to_end(hkey)
            added = len(syns)
            self.added += added
            self.generation += 1
            writes = self._writes
            self._writes = writes + added
            if (writes & ~255) != (self._writes & ~255):
                self.connections.expire()  # in bulk: peeking at the front costs more than a write
                self.hosts.expire()
            if self._waiting:
                self._arrived.notify_all()
        for hook in self.arrival_hooks:
            hook(syns)

    def lookup(self, ip: bytes, port: int = 0, wait: float = 0.0) -> tuple[Syn | None, HostRecord | None]:
        """The SYN of connection (ip, port), or the latest from ip when port is 0.

        Waits up to `wait` seconds for it to arrive.
        """
        deadline = time.monotonic() + wait
        with self._lock:
            self.lookups += 1
            while True:
                host = self.hosts.get(host_key(ip))
                if host is not None and host.__class__ is not HostRecord:
                    host = HostRecord(host)
                obs = self.connections.get(conn_key(ip, port)) if port else (host.latest if host else None)
                remaining = deadline - time.monotonic()
                if obs is not None or remaining <= 0:
                    break
                self._waiting += 1
                try:
                    self._arrived.wait(remaining)
                finally:
                    self._waiting -= 1
            if obs is not None:
                self.hits += 1
            return obs, host

    def host(self, ip: bytes) -> HostRecord | None:
        """The address's history, for the service's own readers (the Redis publisher): not a lookup,
        so not counted in `lookups`/`hits`, and never waits."""
        with self._lock:
            host = self.hosts.get(host_key(ip))
        if host is not None and host.__class__ is not HostRecord:
            host = HostRecord(host)  # a Syn (a host seen once) never changes: read outside the lock
        return host

    def sizes(self) -> dict[str, int]:
        with self._lock:
            self.connections.expire()
            self.hosts.expire()
            return {"connections": len(self.connections), "hosts": len(self.hosts)}
