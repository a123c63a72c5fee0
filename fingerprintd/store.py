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

The records are wire.py's: 40-odd bytes a SYN, fingerprinted again by the
reader with its own database, so every host's answers carry its own
signatures and policy.

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
from fingerprintd.wire import KEY_PREFIX, Codec, RemoteHost, conn_key, host_key, one_syn_host, rspamd_key

log = logging.getLogger("fingerprintd")

QUEUE_MAX = 100_000  # observations waiting for Redis (an outage of 2 s at 50k SYN/s); more are dropped
BATCH = 1000  # observations per pipelined write
CONNECT_TIMEOUT = 1.0  # seconds for the publisher to connect
IO_TIMEOUT = 2.0  # seconds the publisher waits for a batch's replies before calling Redis slow
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # seconds between reconnection attempts, doubling
READ_TIMEOUT = 0.05  # the longest a lookup waits for Redis when its caller gives no deadline
READ_CONNECT_TIMEOUT = 0.25
READ_PAUSE = 1.0  # seconds lookups skip Redis after it failed them
WAIT_SLICE = 0.02  # a waiting lookup looks in Redis again this often (another MX may publish the SYN)

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


class Pools(NamedTuple):
    """One Redis's connection pools, shared by all that the service keeps there (redis-py hands each
    caller a connection of its own): `write` for the publisher and the reputation's updates, `read`, with
    the short timeouts, for lookups and the reputation's reads."""

    write: object
    read: object


def open_pools(url: str, password_file: str = "") -> Pools:
    """The pools for the URL, the password file read once for both."""
    password = read_password(password_file) if password_file else None
    return Pools(make_pool(url, password), make_pool(url, password, READ_CONNECT_TIMEOUT, READ_TIMEOUT))


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
