"""The learned reputation (reputation.Store) in Redis, so that feedback given on one host moves scores on all."""

from __future__ import annotations

import threading
import time

from fingerprintd.store import READ_PAUSE
from fingerprintd.wire import KEY_PREFIX, MEMO_MAX

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

    # write_pool, read_pool: store.open_pools(), for the service to share with its publisher and reader.
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
            if len(self._cache) >= MEMO_MAX:
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
