"""A shared view for several MX hosts: observations published to Redis, read back on a local miss.

Every sensor (`serve --redis URL`) writes each fingerprinted SYN twice, with
the host table's TTL:

* ``fpd:c:<packed ip><port, 2 bytes>``: that connection's SYN;
* ``fpd:h:<packed ip>``: the address's history as this sensor keeps it
  (first/last seen, count, OS changes) and its latest SYN;
* with `rspamd_prefix` (``p0f``), also ``p0f<ip as text>``: the raw 232-byte
  p0f v3 API answer, which rspamd's own p0f module GETs before it asks a
  socket (lualib/lua_scanners/p0f.lua: key ``prefix .. ip:to_string()``,
  value stored with SETEX).

A SYN travels as the fields its fingerprint is made of (the packet's
`shape`) plus time, ports and server address, 40-odd bytes; the reader
fingerprints it again with its own database (the matcher's memo makes that a
dict look-up), so every host's answers carry its own signatures and policy.

Publishing never blocks the capture thread: `Publisher.offer` appends to a
bounded deque (over the bound an observation is dropped and counted) and a
thread of its own writes batches as one pipelined write, RESP packed here
(redis-py's pipeline costs 8 us a command in Python, this 1.5 us; the
connection, its AUTH, TLS and unix sockets are redis-py's).  Redis down or
slow: the batch is kept and sent again after a backoff (SET is idempotent),
the outage is logged once and counted; what arrives meanwhile waits in the
deque up to its bound.

Reading (`Reader`): one MGET of the connection and host keys, bounded by the
caller's deadline; after a failure Redis is not asked again for a moment, so
an outage costs lookups nothing but the local answer.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urlsplit

from fingerprintd.compat import STATUS_OK, p0f_response
from fingerprintd.engine import Observation
from fingerprintd.hosts import HostRecord, HostTable
from fingerprintd.matcher import Matcher
from fingerprintd.nat import NatRecord, Uptime
from fingerprintd.packet import Q_DF, Packet
from fingerprintd.signatures import Label

log = logging.getLogger("fingerprintd")

KEY_PREFIX = b"fpd:"  # every key fingerprintd writes, except rspamd's (an ACL can hold a client to it)
QUEUE_MAX = 100_000  # observations waiting for Redis (an outage of 2 s at 50k SYN/s); more are dropped
BATCH = 1000  # observations per pipelined write
CONNECT_TIMEOUT = 1.0  # seconds for the publisher to connect
IO_TIMEOUT = 2.0  # seconds the publisher waits for a batch's replies before calling Redis slow
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # seconds between reconnection attempts, doubling
READ_TIMEOUT = 0.05  # the longest a lookup waits for Redis when its caller gives no deadline
READ_CONNECT_TIMEOUT = 0.25
READ_PAUSE = 1.0  # seconds lookups skip Redis after it failed them
WAIT_SLICE = 0.02  # a waiting lookup looks in Redis again this often (another MX may publish the SYN)
_MEMO_MAX = 16384

# A SYN's fields: its time and ports, then its stack (memoized by shape), then the server address.
_HEAD = struct.Struct("!dHH")  # ts, sport, dport
_STACK = struct.Struct("!BBBHIBHHBBHHB")  # ver|flags, ttl, tos, ip_opt_len, quirks, tcp_type, win, mss, wscale,
#                                            eol_pad, tot_hdr, linktype, layout length; then the layout bytes
_F_TS1, _F_PAYLOAD, _F_SENDSYN = 0x10, 0x20, 0x40
_UPTIME = struct.Struct("!IHf")  # an uptime record: minutes, modulo days, clock Hz
_HOST = struct.Struct("!ddIhHdBBddIH")  # first, last, count, distance, changes, last OS change, signatures,
#                                         os names; p0f's last ip sharing, last host change, uptime minutes, days
_MATCH_NONE, _MATCH_LATEST, _MATCH_OWN = 0, 1, 2


def _clamp(value: int, low: int, high: int) -> int:
    return low if value < low else high if value > high else value


class Codec:
    """Observations <-> bytes.  Decoding needs a matcher: the SYN is fingerprinted again."""

    def __init__(self) -> None:
        self._stacks: dict[tuple, bytes] = {}
        self._shapes: dict[bytes, tuple] = {}

    def syn(self, obs) -> bytes:
        """One SYN (an Observation or anything that reads like one: .pkt, .fp, .mod, .linktype)."""
        pkt = obs.pkt
        shape = pkt.shape
        sendsyn = obs.mod == "sendsyn probe"
        key = (shape, sendsyn, obs.linktype)
        stack = self._stacks.get(key)
        if stack is None:
            ver, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, ts1, layout, eol_pad, payload, tot_hdr = shape
            flags = ver | (_F_TS1 if ts1 else 0) | (_F_PAYLOAD if payload else 0) | (_F_SENDSYN if sendsyn else 0)
            stack = _STACK.pack(flags, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, eol_pad, tot_hdr,
                                obs.linktype & 0xFFFF, len(layout)) + layout
            if len(self._stacks) >= _MEMO_MAX:
                self._stacks.clear()
            self._stacks[key] = stack
        out = _HEAD.pack(pkt.ts, pkt.sport, pkt.dport) + stack + pkt.dst
        nat, up = obs.nat, obs.uptime
        if nat is None and up is None:
            return out
        # p0f's host records that came with this SYN: the API reports them too.
        trailer = bytearray((bool(nat) | bool(up) << 1,))
        if nat is not None:
            for text in (nat.kind, nat.reason):
                raw = text.encode()[:255]
                trailer += bytes((len(raw),)) + raw
            trailer += bytes(min(h, 255) for h in nat.raw_hits)
        if up is not None:
            trailer += _UPTIME.pack(min(up.minutes, 0xFFFFFFFF), min(up.modulo_days, 0xFFFF), up.freq)
        return out + bytes(trailer)

    def host(self, host, obs, syn: bytes = b"") -> bytes:
        """An address's history (a HostRecord, or anything that reads like one) with `obs` as its latest SYN.

        The SYN that p0f's API reports (the latest that matched an OS) travels as
        its label when it is not `obs` itself: the table may keep it in a form
        without the packet's fields."""
        match = host.last_match
        os_names = [n.encode()[:255] for n in host.os_names[:255]]
        head = _HOST.pack(host.first_seen, host.last_seen, min(host.count, 0xFFFFFFFF),
                          _clamp(host.last_distance, -32768, 32767), min(host.changes, 0xFFFF),
                          host.last_change, min(len(host.signatures), 255), len(os_names),
                          host.last_ip_sharing, host.last_host_change, min(host.uptime_minutes, 0xFFFFFFFF),
                          min(host.uptime_modulo_days, 0xFFFF))
        names = b"".join(bytes((len(n),)) + n for n in os_names)
        syn = syn or self.syn(obs)
        if match is None or match.fp.label is None:
            tail = bytes((_MATCH_NONE,))
        elif match is obs or (match.fp is obs.fp and match.pkt.ts == obs.pkt.ts):
            tail = bytes((_MATCH_LATEST,))
        else:
            label = match.fp.label
            parts = [t.encode()[:255] for t in (label.name, label.flavor or "", label.klass)]
            tail = (bytes((_MATCH_OWN, match.fp.fuzzy | match.fp.generic << 1 | label.generic << 2))
                    + b"".join(bytes((len(t),)) + t for t in parts))
        return head + names + bytes((len(syn),)) + syn + tail

    # --- decoding -------------------------------------------------------------------------

    def decode_syn(self, data: bytes, src: bytes, matcher: Matcher) -> Observation:
        ts, sport, dport = _HEAD.unpack_from(data, 0)
        off = _HEAD.size
        n_layout = data[off + _STACK.size - 1]
        stack_end = off + _STACK.size + n_layout
        stack = data[off:stack_end]
        fields = self._shapes.get(stack)
        if fields is None:
            flags, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, eol_pad, tot_hdr, linktype, _ = \
                _STACK.unpack_from(stack, 0)
            layout = bytes(stack[_STACK.size:])
            ver = flags & 0x0F
            shape = (ver, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, bool(flags & _F_TS1), layout,
                     eol_pad, bool(flags & _F_PAYLOAD), tot_hdr)
            fields = (shape, bool(flags & _F_SENDSYN), linktype)
            if len(self._shapes) >= _MEMO_MAX:
                self._shapes.clear()
            self._shapes[stack] = fields
        shape, sendsyn, linktype = fields
        ver, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, ts1, layout, eol_pad, payload, tot_hdr = shape
        dst = bytes(data[stack_end:stack_end + (4 if ver == 4 else 16)])
        if len(dst) != (4 if ver == 4 else 16):
            raise ValueError("truncated record")
        nat = up = None
        off = stack_end + len(dst)
        if off < len(data):
            present = data[off]
            off += 1
            if present & 1:
                texts = []
                for _ in range(2):
                    size = data[off]
                    texts.append(bytes(data[off + 1:off + 1 + size]).decode("utf-8", "replace"))
                    off += 1 + size
                hits = tuple(data[off:off + 4])
                if len(hits) != 4:
                    raise ValueError("truncated record")
                nat = NatRecord(texts[0], texts[1], hits)
                off += 4
            if present & 2:
                up = Uptime(*_UPTIME.unpack_from(data, off))
        pkt = Packet(ts, ver, src, dst, sport, dport, ttl, tos, 0, olen, bool(quirks & Q_DF), 0, 0,
                     tcp_type, tcp_type, 0, 0, 0, win, mss, wscale, 1 if ts1 else 0, 0, layout, eol_pad,
                     1 if payload else 0, tot_hdr, quirks, b"", shape)
        fp = matcher.fingerprint(pkt, True, 0, sendsyn)
        return Observation("sendsyn probe" if sendsyn else "syn", pkt, fp, linktype, True, nat, up)

    def decode_host(self, data: bytes, src: bytes, matcher: Matcher) -> RemoteHost:
        first, last, count, dist, changes, last_change, n_sigs, n_names, sharing, host_change, up_min, up_days = \
            _HOST.unpack_from(data, 0)
        off = _HOST.size
        names = []
        for _ in range(n_names):
            size = data[off]
            names.append(bytes(data[off + 1:off + 1 + size]).decode("utf-8", "replace"))
            off += 1 + size
        size = data[off]
        latest = self.decode_syn(data[off + 1:off + 1 + size], src, matcher)
        off += 1 + size
        kind = data[off]
        match = None
        if kind == _MATCH_LATEST:
            match = latest
        elif kind == _MATCH_OWN:
            bits = data[off + 1]
            off += 2
            texts = []
            for _ in range(3):
                size = data[off]
                texts.append(bytes(data[off + 1:off + 1 + size]).decode("utf-8", "replace"))
                off += 1 + size
            label = Label(bool(bits & 4), texts[2], texts[0], texts[1] or None, 0, 0)
            match = _Match(_MatchFp(label, bool(bits & 1), bool(bits & 2)))
        host = RemoteHost(first, last, count, dist, changes, last_change, n_sigs, names, latest, match)
        host.last_ip_sharing, host.last_host_change = sharing, host_change
        host.uptime_minutes, host.uptime_modulo_days = up_min, up_days
        return host


class _MatchFp(NamedTuple):
    """What p0f's API answer reads of the SYN it reports: its label and match quality."""

    label: Label
    fuzzy: bool
    generic: bool


class _Match(NamedTuple):
    fp: _MatchFp


class RemoteHost:
    """An address's history as the sensor that saw its latest SYN published it.

    Reads like a HostRecord for the API and the p0f socket; only the number of
    distinct signatures travels, so `signatures` holds the latest one and
    placeholders."""

    __slots__ = ("first_seen", "last_seen", "count", "last_distance", "changes", "last_change", "signatures",
                 "os_names", "latest", "last_match", "last_ip_sharing", "last_host_change", "uptime_minutes",
                 "uptime_modulo_days")

    def __init__(self, first_seen: float, last_seen: float, count: int, last_distance: int, changes: int,
                 last_change: float, n_signatures: int, os_names: list[str], latest: Observation,
                 last_match: Observation | None) -> None:
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.count = count
        self.last_distance = last_distance
        self.changes = changes
        self.last_change = last_change
        self.signatures = [""] * max(0, n_signatures - 1) + [latest.fp.raw_sig]
        self.os_names = os_names
        self.latest = latest
        self.last_match = last_match
        # p0f's host records as the sensor's table keeps them (when, not what: the API reports when).
        self.last_ip_sharing = self.last_host_change = 0.0
        self.uptime_minutes = self.uptime_modulo_days = 0

    @property
    def host_changed(self) -> bool:
        return self.changes > 0


def one_syn_host(obs) -> RemoteHost:
    """The history of an address seen once (the table no longer holds it: evicted meanwhile)."""
    fp = obs.fp
    match = obs if fp.label is not None and not fp.label.is_app else None
    host = RemoteHost(obs.pkt.ts, obs.pkt.ts, 1, fp.dist, 0, 0.0, 1, [], obs, match)
    if obs.nat is not None:
        if obs.nat.kind == "ip sharing":
            host.last_ip_sharing = obs.pkt.ts
        else:
            host.last_host_change = obs.pkt.ts
    if obs.uptime is not None:
        host.uptime_minutes, host.uptime_modulo_days = obs.uptime.minutes, obs.uptime.modulo_days
    return host


def conn_key(ip: bytes, port: int, prefix: bytes = KEY_PREFIX) -> bytes:
    return prefix + b"c:" + ip + port.to_bytes(2, "big")


def host_key(ip: bytes, prefix: bytes = KEY_PREFIX) -> bytes:
    return prefix + b"h:" + ip


def rspamd_key(ip: bytes, prefix: str) -> bytes:
    """rspamd's p0f module's key: its prefix, then the address as rspamd prints it (inet_ntop's form)."""
    return (prefix + socket.inet_ntop(socket.AF_INET if len(ip) == 4 else socket.AF_INET6, ip)).encode()


# --- connecting --------------------------------------------------------------------------------


def read_password(path: str) -> str:
    """The password file's first line (a trailing newline is not part of it)."""
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def make_pool(url: str, password: str | None = None, connect_timeout: float = CONNECT_TIMEOUT,
              timeout: float = IO_TIMEOUT):
    """A redis-py connection pool for the URL (user and password from it, or `password`)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kw = {"socket_connect_timeout": connect_timeout, "socket_timeout": timeout, "retry": Retry(NoBackoff(), 0),
          "health_check_interval": 0}
    if password is not None:
        kw["password"] = password
    return redis.ConnectionPool.from_url(url, **kw)


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = (parts.username or "") + ":***@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


# --- publishing --------------------------------------------------------------------------------


class Publisher:
    """Writes every observation to Redis from a thread of its own.

    `host_of(ip)` gives the local table's record for an address (its history
    travels with the latest SYN).  Counters: `published` (observations
    written), `dropped` (over the queue's bound), `rejected` (refused by Redis
    itself: an ACL, maxmemory), `errors` (failed batch writes), `outages`
    (episodes of Redis being unreachable or slow), `queued` (waiting now)."""

    def __init__(self, pool, ttl: float, host_of: Callable[[bytes], HostRecord | None], *,
                 rspamd_prefix: str = "", prefix: bytes = KEY_PREFIX, max_queue: int = QUEUE_MAX,
                 batch: int = BATCH, backoff: tuple[float, float] = (BACKOFF_FIRST, BACKOFF_MAX),
                 target: str = "") -> None:
        self.pool = pool
        self.ttl_ms = b"%d" % max(1, int(ttl * 1000))
        self.rspamd_ttl = b"%d" % max(1, math.ceil(ttl))
        self.host_of = host_of
        self.rspamd_prefix = rspamd_prefix
        self.prefix = prefix
        self.max_queue = max_queue
        self.batch = batch
        self.backoff = backoff
        self.target = target
        self.codec = Codec()
        self.published = self.dropped = self.rejected = self.errors = self.outages = self.batches = 0
        self.down = False
        self._queue: deque = deque()
        self._pending: list = []  # the batch being written: kept until Redis took it
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._conn = None
        self._flush_until = 0.0
        self._rejected_logged = False
        self._thread = threading.Thread(target=self._run, name="redis-publisher", daemon=True)

    # The capture thread's side: never blocks, never raises.
    def offer(self, observations: list) -> None:
        q = self._queue
        room = self.max_queue - len(q)
        if room < len(observations):
            self.dropped += len(observations) - max(room, 0)
            observations = observations[:max(room, 0)]
        if observations:
            q.extend(observations)
            self._ready.set()

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, flush: float = 1.0) -> None:
        """Stop; what is queued gets `flush` seconds to reach Redis (if it is up)."""
        self._flush_until = time.monotonic() + flush
        self._stop.set()
        self._ready.set()
        if self._thread.ident is not None:
            self._thread.join(flush + IO_TIMEOUT + 1)
        unsent = len(self._queue) + len(self._pending)
        if unsent and not self._thread.is_alive():
            self.dropped += unsent  # Redis did not take them in time: lost, and counted as such
            self._queue.clear()
            self._pending = []
            log.warning("stopping: observations not written to redis", extra={"fields": {
                "redis": self.target, "unsent": unsent}})
        if self._conn is not None:
            self._conn.disconnect()

    def stats(self) -> dict[str, int]:
        return {"published": self.published, "dropped": self.dropped, "rejected": self.rejected,
                "errors": self.errors, "outages": self.outages, "batches": self.batches,
                "queued": len(self._queue) + len(self._pending), "up": 0 if self.down else 1}

    def idle(self) -> bool:
        """Nothing waiting and nothing being written (tests and the benchmarks wait for it)."""
        return not self._queue and not self._pending

    def _run(self) -> None:
        delay = self.backoff[0]
        while True:
            if not self._pending:
                if not self._take():
                    if self._stop.is_set():
                        return
                    continue
            if self._stop.is_set() and time.monotonic() > self._flush_until:
                return
            try:
                self._write(self._pending)
            except Exception as exc:  # noqa: BLE001 - any failure of the link is an outage, never fatal
                self._failed(exc)
                if self._stop.is_set():  # stopping: retry within what is left of the flush time, no faster
                    left = self._flush_until - time.monotonic()
                    if left <= 0:
                        return
                    time.sleep(min(delay, left))
                else:
                    self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            self.published += len(self._pending)
            self.batches += 1
            self._pending = []
            if self.down:
                self.down = False
                log.info("redis reachable again; publishing", extra={"fields": {
                    "redis": self.target, "dropped": self.dropped, "published": self.published}})

    def _take(self) -> bool:
        q = self._queue
        if not q:
            self._ready.clear()
            if not q:
                self._ready.wait(0.5)
            if not q:
                return False
        n = min(len(q), self.batch)
        self._pending = [q.popleft() for _ in range(n)]
        return True

    def _commands(self, batch: list) -> tuple[bytes, int]:
        """The batch's SETs (and SETEXs) as one RESP string, and how many replies to read."""
        syn, host_rec, host_of, prefix = self.codec.syn, self.codec.host, self.host_of, self.prefix
        set_px = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" + (
            b"$2\r\nPX\r\n$%d\r\n%b\r\n" % (len(self.ttl_ms), self.ttl_ms)).replace(b"%", b"%%")
        conn_prefix, host_prefix = prefix + b"c:", prefix + b"h:"
        rspamd = self.rspamd_prefix
        setex = b"*4\r\n$5\r\nSETEX\r\n$%d\r\n%b\r\n" + (
            b"$%d\r\n%b\r\n" % (len(self.rspamd_ttl), self.rspamd_ttl)).replace(b"%", b"%%") + b"$%d\r\n%b\r\n"
        out = []
        for obs in batch:
            pkt = obs.pkt
            src = pkt.src
            host = host_of(src) or one_syn_host(obs)
            record = syn(obs)
            key = conn_prefix + src + pkt.sport.to_bytes(2, "big")
            hrec = host_rec(host, obs, record)
            hkey = host_prefix + src
            out.append(set_px % (len(key), key, len(record), record))
            out.append(set_px % (len(hkey), hkey, len(hrec), hrec))
            if rspamd:
                rkey = rspamd_key(src, rspamd)
                answer = p0f_response(STATUS_OK, host)
                out.append(setex % (len(rkey), rkey, len(answer), answer))
        return b"".join(out), len(out)

    def _write(self, batch: list) -> None:
        import redis

        data, n = self._commands(batch)
        if self._conn is None:
            self._conn = self.pool.get_connection()
        conn = self._conn
        try:
            conn.send_packed_command([data], check_health=False)
            refused = ""
            for _ in range(n):
                try:
                    conn.read_response()
                except redis.ResponseError as exc:  # this key refused (NOPERM, OOM): the others still count
                    self.rejected += 1
                    refused = str(exc)
        except BaseException:
            conn.disconnect()  # a half-read reply stream is useless: the next attempt starts afresh
            raise
        if refused and not self._rejected_logged:
            self._rejected_logged = True
            log.error("redis refuses writes (an ACL or maxmemory?); those observations are lost",
                      extra={"fields": {"redis": self.target, "error": refused}})

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.down:
            self.down = True
            self.outages += 1
            log.warning("redis unreachable or slow; observations wait in the queue (over its bound they are "
                        "dropped) and writes are retried", extra={"fields": {
                            "redis": self.target, "error": str(exc) or type(exc).__name__,
                            "queue_bound": self.max_queue}})


# --- reading -----------------------------------------------------------------------------------


class Reader:
    """Lookups in Redis, each bounded by a timeout; after a failure Redis is skipped for `pause` seconds."""

    def __init__(self, pool, matcher_of: Callable[[], Matcher], prefix: bytes = KEY_PREFIX,
                 pause: float = READ_PAUSE) -> None:
        self.pool = pool
        self.matcher_of = matcher_of
        self.prefix = prefix
        self.pause = pause
        self.codec = Codec()
        self.lookups = self.hits = self.errors = self.skipped = self.bad_records = 0
        self._skip_until = 0.0
        self._lock = threading.Lock()

    def stats(self) -> dict[str, int]:
        return {"lookups": self.lookups, "hits": self.hits, "errors": self.errors, "skipped": self.skipped,
                "bad_records": self.bad_records}

    def lookup(self, ip: bytes, port: int, timeout: float) -> tuple[Observation | None, RemoteHost | None]:
        """The connection's SYN (port 0: the address's latest) and the address's history, from Redis."""
        now = time.monotonic()
        with self._lock:
            self.lookups += 1
            if now < self._skip_until or timeout <= 0:
                self.skipped += 1
                return None, None
        keys = [host_key(ip, self.prefix)] + ([conn_key(ip, port, self.prefix)] if port else [])
        try:
            values = self._mget(keys, timeout)
        except Exception:  # noqa: BLE001 - Redis down, slow or confused: the local answer stands
            with self._lock:
                self.errors += 1
                self._skip_until = time.monotonic() + self.pause
            return None, None
        try:
            matcher = self.matcher_of()
            host = self.codec.decode_host(values[0], ip, matcher) if values[0] else None
            if port:
                obs = self.codec.decode_syn(values[1], ip, matcher) if values[1] else None
            else:
                obs = host.latest if host is not None else None
        except (struct.error, IndexError, ValueError):
            with self._lock:
                self.bad_records += 1  # not ours, or another version's: counted, ignored
            return None, None
        if obs is not None:
            with self._lock:
                self.hits += 1
        return obs, host

    def _mget(self, keys: list[bytes], timeout: float) -> list:
        conn = self.pool.get_connection()
        try:
            conn.send_command("MGET", *keys, check_health=False)
            if not conn.can_read(timeout=timeout):
                raise TimeoutError("redis did not answer in time")
            return conn.read_response(timeout=timeout)
        except BaseException:
            conn.disconnect()  # its late reply must not be read as the next one's
            raise
        finally:
            self.pool.release(conn)


class SharedLookup:
    """The local table first, then Redis: what every lookup path asks when the service has a store.

    Same call as HostTable.lookup, plus an absolute `deadline` (time.monotonic)
    that caps the whole call.  A waiting lookup looks in Redis first (the SYN
    may have reached another MX long ago), then waits for the local table in
    slices, looking in Redis between them."""

    def __init__(self, hosts: HostTable, reader: Reader, remote_timeout: float = READ_TIMEOUT,
                 wait_slice: float = WAIT_SLICE) -> None:
        self.hosts = hosts
        self.reader = reader
        self.remote_timeout = remote_timeout
        self.wait_slice = wait_slice

    def lookup(self, ip: bytes, port: int = 0, wait: float = 0.0, deadline: float | None = None):
        obs, host = self.hosts.lookup(ip, port, 0.0)
        if obs is not None:
            return obs, host
        now = time.monotonic()
        end = now + wait
        hard = end + self.remote_timeout if deadline is None else deadline
        end = min(end, hard)
        while True:
            r_obs, r_host = self.reader.lookup(ip, port, min(self.remote_timeout, hard - time.monotonic()))
            if r_obs is not None:
                return r_obs, host if host is not None else r_host
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None, host if host is not None else r_host
            obs, host = self.hosts.lookup(ip, port, min(remaining, self.wait_slice))
            if obs is not None:
                return obs, host


# --- shared reputation -------------------------------------------------------------------------

REPUTATION_CACHE = 5.0  # seconds a host keeps a key's counts before asking Redis again (lookups read them)

# A mark (one message, one client per key) is its expiry time; the caller's clock decides, Redis's TTL cleans up.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# A capped counter (one source network per key): n and its expiry, reset once expired.
_COUNT_UP = """
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local e = tonumber(redis.call('HGET', KEYS[1], 'e') or '0')
if e <= tonumber(ARGV[1]) then
  n = 0
  redis.call('HSET', KEYS[1], 'e', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if n >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'n', n + 1)
return 1
"""
# Drop a key whose scaled total is negligible, unless an increment got there first (atomic on the server).
_DROP_IF_SMALL = """
local s = tonumber(redis.call('HGET', KEYS[1], 'spam') or '0')
local h = tonumber(redis.call('HGET', KEYS[1], 'ham') or '0')
if s + h < tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""


class RedisReputationStore:
    """reputation.Store in Redis, so that feedback given on one host moves scores on all of them.

    Counts are kept scaled (reputation.py), so recording an outcome is an
    atomic HINCRBYFLOAT from any host and decay needs no rewrite: every host
    divides by the same factor of the same clock.  A key is a hash
    (spam, ham, first, last) at ``fpd:r:<key>``; the abuse marks are
    ``fpd:m:<token>`` and expire in Redis too.  Lookups read a key's counts
    through a cache of `cache_seconds` (feedback elsewhere shows here within
    that), with the reader's short timeout; a failure answers "nothing
    learned" and Redis is skipped for `pause` seconds, so a lookup never waits
    on a dead Redis for its score."""

    def __init__(self, write_pool, read_pool, prefix: bytes = KEY_PREFIX, cache_seconds: float = REPUTATION_CACHE,
                 pause: float = READ_PAUSE) -> None:
        import redis

        self.redis = redis.Redis(connection_pool=write_pool)
        self.reads = redis.Redis(connection_pool=read_pool)
        self.prefix = prefix
        self.cache_seconds = cache_seconds
        self.pause = pause
        self.read_errors = 0
        self._cache: dict[str, tuple[float, tuple | None]] = {}
        self._skip_until = 0.0
        self._lock = threading.Lock()
        self._claim = self.redis.register_script(_CLAIM)
        self._count_up = self.redis.register_script(_COUNT_UP)
        self._drop_if_small = self.redis.register_script(_DROP_IF_SMALL)

    def _key(self, key: str) -> bytes:
        return self.prefix + b"r:" + key.encode()

    def get(self, key: str):
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
            if now < self._skip_until:
                return None
        try:
            values = self.reads.hmget(self._key(key), "spam", "ham", "first", "last")
        except Exception:  # noqa: BLE001 - no learned part rather than a stalled lookup
            with self._lock:
                self.read_errors += 1
                self._skip_until = time.monotonic() + self.pause
            return None
        row = None if values[0] is None and values[1] is None else tuple(float(v or 0.0) for v in values)
        with self._lock:
            if len(self._cache) >= _MEMO_MAX:
                self._cache.clear()
            self._cache[key] = (now + self.cache_seconds, row)
        return row

    def increment(self, key: str, spam: float, ham: float, now: float) -> None:
        k = self._key(key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrbyfloat(k, "spam", spam)
        pipe.hincrbyfloat(k, "ham", ham)
        pipe.hsetnx(k, "first", now)
        pipe.hset(k, "last", now)
        pipe.execute()
        with self._lock:
            self._cache.pop(key, None)  # this host sees its own feedback at once

    def _scan(self) -> list[bytes]:
        return list(self.redis.scan_iter(match=self.prefix + b"r:*", count=1000))

    def decay(self, now: float, threshold: float) -> int:
        gone = sum(int(self._drop_if_small(keys=[k], args=[threshold])) for k in self._scan())
        with self._lock:
            self._cache.clear()
        return gone  # the marks expire in Redis by themselves

    def reset(self, key: str) -> bool:
        with self._lock:
            self._cache.pop(key, None)
        return bool(self.redis.delete(self._key(key)))

    def items(self) -> list[tuple[str, float, float, float, float]]:
        keys = self._scan()
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(k, "spam", "ham", "first", "last")
        skip = len(self.prefix) + 2
        rows = [(k[skip:].decode(), *(float(v or 0.0) for v in vals)) for k, vals in zip(keys, pipe.execute(),
                                                                                       strict=True)]
        return sorted(rows)

    def claim(self, token: str, now: float, ttl: float) -> bool:
        return bool(self._claim(keys=[self.prefix + b"m:" + token.encode()],
                                args=[now, now + ttl, max(1, int(ttl * 1000))]))

    def count_up(self, token: str, limit: int, now: float, ttl: float) -> bool:
        return bool(self._count_up(keys=[self.prefix + b"m:" + token.encode()],
                                   args=[now, now + ttl, limit, max(1, int(ttl * 1000))]))

    def close(self) -> None:
        self.redis.close()
        self.reads.close()
