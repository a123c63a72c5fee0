"""Learning from outcomes: per (signature, mail class, context bucket) spam/ham counts -> a bounded adjustment.

Mail admins train their filters from outcomes (``sa-learn``, ``rspamc
learn_spam``, junk folders); ``fingerprintd learn`` and the ``Feedback`` RPC
feed the same outcomes here, keyed by the verdict's stable identifier
(``id: <signature hash>/<mail class>/<context bucket>`` in the header).

The numbers (module constants; the service takes them as constructor arguments):

* Counts decay exponentially, half-life HALF_LIFE_DAYS (30 days): a site's
  spam changes; TxRep's 0.98 per message and Bayes' token TTLs do the same.
* No adjustment before MIN_EVIDENCE (20) decayed outcomes for the key
  (SpamAssassin's Bayes waits for 200+200 over all its tokens; a key here is
  one narrow thing, so fewer suffice).
* adjustment = MAX_ADJUSTMENT * (spam - ham) / (spam + ham + SMOOTHING):
  at most +-1.0, shrunk towards 0 while evidence is thin (SMOOTHING = 10).
* Abuse: one message (Message-ID with the key and client) counts once; one
  client address counts once per key (for SEEN_DAYS, 30 days); one source
  network (IPv4 /24, IPv6 /56) counts at most SOURCE_CAP (3) times per key in
  that time.  So a flood of feedback from one source cannot reach
  MIN_EVIDENCE alone, and added to any other evidence moves the adjustment by
  at most 2 * MAX_ADJUSTMENT * SOURCE_CAP / (MIN_EVIDENCE + SMOOTHING) = 0.2
  (the derivative of the formula above, bounded for n >= MIN_EVIDENCE).

The store is behind a small interface (Store: get / increment / decay /
reset, plus claim and count_up for the abuse limits) that a shared backend can
implement with atomic operations: counts are kept *scaled* by
2^((t - EPOCH) / half-life), so recording an outcome is a plain atomic add
(Redis HINCRBYFLOAT) and reading divides by the same factor at the time of
reading; claim is SET NX EX, count_up is INCR + EXPIRE.  SqliteStore is the
one-host backend (stdlib sqlite3, WAL, safe for the service and `learn` at once).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fingerprintd.address import AddressError, normalize_ip
from fingerprintd.classes import MAIL_CLASSES

HALF_LIFE_DAYS = 30.0
MIN_EVIDENCE = 20.0
MAX_ADJUSTMENT = 1.0
SMOOTHING = 10.0
SOURCE_CAP = 3
SEEN_DAYS = 30.0
SOURCE_PREFIX_V4 = 24
SOURCE_PREFIX_V6 = 56
EPOCH = 1_767_225_600.0  # 2026-01-01 UTC: scaled counts stay near 1 for decades
NEGLIGIBLE = 0.05  # decayed total below which decay() drops a key
DECAY_EVERY = 1000  # outcomes between two maintenance passes (expired marks, negligible keys): the file stays bounded
DAY = 86400.0

KEY_RE = re.compile(r"\A[0-9a-f]{10}/(" + "|".join(MAIL_CLASSES) + r")/[a-z?-]{1,40}\Z")


class ReputationError(ValueError):
    """Bad input (a malformed key, an address that is not one)."""


class Store(Protocol):
    """Where the counts live.  Counts are scaled (see the module docstring); every call is atomic."""

    def get(self, key: str) -> tuple[float, float, float, float] | None:
        """(scaled spam, scaled ham, first recorded, last recorded) or None."""

    def increment(self, key: str, spam: float, ham: float, now: float) -> None:
        """Add scaled weights (creating the key)."""

    def decay(self, now: float, threshold: float) -> int:
        """Maintenance: drop keys whose scaled total is under `threshold` and expired marks; how many keys went."""

    def reset(self, key: str) -> bool:
        """Forget a key (its abuse marks stay: a reset does not reopen a flood); whether it existed."""

    def items(self) -> list[tuple[str, float, float, float, float]]:
        """Every key with get()'s fields."""

    def claim(self, token: str, now: float, ttl: float) -> bool:
        """Set `token` if absent or expired; True when this call set it."""

    def count_up(self, token: str, limit: int, now: float, ttl: float) -> bool:
        """Increment the counter `token` (expiring `ttl` after its first use) if it is below `limit`."""


class SqliteStore:
    """Store on one host: stdlib sqlite3 in WAL mode (readers never wait for the writer)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # Two connections: a lookup's read never waits behind a write (a commit, a checkpoint) in WAL mode.
        self._lock = threading.Lock()  # the writer
        self._read_lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS counts (key TEXT PRIMARY KEY, spam REAL NOT NULL, ham REAL NOT NULL,
                                               first REAL NOT NULL, last REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS marks (token TEXT PRIMARY KEY, n INTEGER NOT NULL, expires REAL NOT NULL);
        """)
        self._reader = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)

    def get(self, key):
        with self._read_lock:
            return self._reader.execute("SELECT spam, ham, first, last FROM counts WHERE key = ?", (key,)).fetchone()

    def increment(self, key, spam, ham, now):
        with self._lock:
            self._db.execute("INSERT INTO counts VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                             "spam = spam + excluded.spam, ham = ham + excluded.ham, last = excluded.last",
                             (key, spam, ham, now, now))

    def decay(self, now, threshold):
        with self._lock:
            gone = self._db.execute("DELETE FROM counts WHERE spam + ham < ?", (threshold,)).rowcount
            self._db.execute("DELETE FROM marks WHERE expires <= ?", (now,))
            return gone

    def reset(self, key):
        with self._lock:
            return self._db.execute("DELETE FROM counts WHERE key = ?", (key,)).rowcount > 0

    def items(self):
        with self._read_lock:
            return self._reader.execute("SELECT key, spam, ham, first, last FROM counts ORDER BY key").fetchall()

    def claim(self, token, now, ttl):
        with self._lock:
            cur = self._db.execute("INSERT INTO marks VALUES (?, 1, ?) ON CONFLICT(token) DO UPDATE SET "
                                   "n = 1, expires = excluded.expires WHERE marks.expires <= ?",
                                   (token, now + ttl, now))
            return cur.rowcount > 0

    def count_up(self, token, limit, now, ttl):
        with self._lock:
            self._db.execute("DELETE FROM marks WHERE token = ? AND expires <= ?", (token, now))
            cur = self._db.execute("INSERT INTO marks VALUES (?, 1, ?) ON CONFLICT(token) DO UPDATE SET "
                                   "n = n + 1 WHERE marks.n < ?", (token, now + ttl, limit))
            return cur.rowcount > 0

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()


@dataclass(frozen=True, slots=True)
class Learned:
    """What was learned for one key, and why the score moved (or did not)."""

    key: str
    spam: float  # decayed counts
    ham: float
    adjustment: float
    why: str
    first: float = 0.0
    last: float = 0.0


def source_of(ip: bytes) -> str:
    """The network a client counts under for the per-source cap."""
    prefix = SOURCE_PREFIX_V4 if len(ip) == 4 else SOURCE_PREFIX_V6
    net = ipaddress.ip_network((ipaddress.ip_address(ip), prefix), strict=False)
    return str(net)


def _ip(client: str | bytes) -> bytes:
    if isinstance(client, bytes):
        return client
    try:
        return normalize_ip(client)  # the forms the API takes: the client's address as its lookup gave it
    except AddressError as exc:
        raise ReputationError(str(exc)) from None


class Reputation:
    def __init__(self, store: Store, *, half_life_days: float = HALF_LIFE_DAYS, min_evidence: float = MIN_EVIDENCE,
                 max_adjustment: float = MAX_ADJUSTMENT, smoothing: float = SMOOTHING, source_cap: int = SOURCE_CAP,
                 seen_days: float = SEEN_DAYS, clock=time.time) -> None:
        self.store = store
        self.half_life = half_life_days * DAY
        self.min_evidence = min_evidence
        self.max_adjustment = max_adjustment
        self.smoothing = smoothing
        self.source_cap = source_cap
        self.seen = seen_days * DAY
        self.clock = clock
        self._since_decay = 0
        self._decay_lock = threading.Lock()

    @property
    def flood_cap(self) -> float:
        """The most one source network's feedback can move a key's adjustment."""
        return 2 * self.max_adjustment * self.source_cap / (self.min_evidence + self.smoothing)

    def _scale(self, now: float) -> float:
        return 2.0 ** ((now - EPOCH) / self.half_life)

    def record(self, key: str, spam: bool, client: str | bytes, message_id: str = "", now: float | None = None) -> str:
        """Count one outcome; returns "counted" or why not (duplicate-message, duplicate-client, source-cap)."""
        if not KEY_RE.match(key):
            raise ReputationError(f"not a fingerprintd verdict id: {key!r}")
        ip = _ip(client)
        now = self.clock() if now is None else now
        with self._decay_lock:
            self._since_decay += 1
            due = self._since_decay >= DECAY_EVERY
            if due:
                self._since_decay = 0
        if due:
            self.decay(now)
        client_text = ipaddress.ip_address(ip).compressed
        if message_id:
            token = hashlib.sha256(f"{message_id.strip()}|{key}|{client_text}".encode()).hexdigest()[:32]
            if not self.store.claim(f"m:{token}", now, self.seen):
                return "duplicate-message"
        if not self.store.claim(f"c:{key}:{client_text}", now, self.seen):
            return "duplicate-client"
        if not self.store.count_up(f"s:{key}:{source_of(ip)}", self.source_cap, now, self.seen):
            return "source-cap"
        weight = self._scale(now)
        self.store.increment(key, weight if spam else 0.0, 0.0 if spam else weight, now)
        return "counted"

    def learned(self, key: str, now: float | None = None) -> Learned:
        row = self.store.get(key)
        if row is None:
            return Learned(key, 0.0, 0.0, 0.0, "nothing learned")
        return self._explain(key, *row, now=self.clock() if now is None else now)

    def adjustment(self, key: str, now: float | None = None) -> float:
        return self.learned(key, now).adjustment if key else 0.0

    def _explain(self, key: str, spam: float, ham: float, first: float, last: float, now: float) -> Learned:
        scale = self._scale(now)
        s, h = spam / scale, ham / scale
        n = s + h
        if n < self.min_evidence:
            why = f"{n:.1f} outcomes (decayed), below the minimum of {self.min_evidence:g}: no adjustment"
            return Learned(key, s, h, 0.0, why, first, last)
        value = self.max_adjustment * (s - h) / (n + self.smoothing)
        value = max(-self.max_adjustment, min(self.max_adjustment, round(value, 2)))
        why = (f"{s:.1f} spam, {h:.1f} ham (decayed, half-life {self.half_life / DAY:g} d): "
               f"{self.max_adjustment:g} x ({s:.1f} - {h:.1f}) / ({n:.1f} + {self.smoothing:g}) = {value:+.2f}")
        return Learned(key, s, h, value, why, first, last)

    def explain(self, now: float | None = None) -> list[Learned]:
        now = self.clock() if now is None else now
        return [self._explain(key, *rest, now=now) for key, *rest in self.store.items()]

    def reset(self, key: str) -> bool:
        return self.store.reset(key)

    def decay(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        return self.store.decay(now, NEGLIGIBLE * self._scale(now))
