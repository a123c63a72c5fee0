"""The gRPC API (fingerprintd.v1.Fingerprint), plus health and reflection.

A thin edge: requests are validated here (INVALID_ARGUMENT with a message),
answers come from the host table and the policy.

The server is grpc.aio on one event-loop thread, so no client can take the
service away from the others by holding threads: a Lookup whose SYN is not
captured yet waits as a future the capture thread resolves (through
HostTable.arrival_hooks and loop.call_soon_threadsafe), and a Watch stream is
a coroutine with a bounded queue that drops, and counts, what a slow reader
does not take.  Watch messages are paced for all streams together, since what
they cost the loop is per message.  Waits and streams are capped per client
address and in all (RESOURCE_EXHAUSTED beyond); a Lookup that needs no wait is
never refused.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import re
import socket
import threading
import time
from collections import Counter, deque
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Gauge, Histogram

from fingerprintd.classes import MAIL_CLASSES
from fingerprintd.context import Context, from_postfix
from fingerprintd.engine import Observation
from fingerprintd.hosts import AddressError, HostRecord, HostTable, normalize_ip
from fingerprintd.matcher import Fingerprint, PerFingerprint
from fingerprintd.policy import Verdict
from fingerprintd.reputation import Reputation, ReputationError
from fingerprintd.unixsock import remove_stale_socket
from fingerprintd.v1 import fingerprintd_pb2 as pb
from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

log = logging.getLogger("fingerprintd")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Fingerprint"].full_name
MAIL_CLASS_PB = {name: pb.MailClass.Value(f"MAIL_CLASS_{name.upper()}") for name in MAIL_CLASSES}
REDIS_TIMEOUT = 0.05  # seconds a Lookup without a deadline waits for Redis after a local miss
REDIS_MAX_TIMEOUT = 1.0  # at most this much of a caller's deadline goes to Redis
REDIS_THREADS = 8  # Redis look-ups at once (each one bounded by its deadline)
FANOUT_INTERVAL = 0.005  # seconds the Watch fan-out gathers observations before handing them to the streams


class Backend(Protocol):
    """What the API needs from the running service."""

    hosts: HostTable
    reader: object  # store.Reader with --redis (looked up after a local miss), else None
    max_batch: int
    max_wait_ms: int
    reputation: Reputation | None  # None: no learning (Feedback answers FAILED_PRECONDITION)

    def subscribe(self) -> queue.Queue: ...

    def unsubscribe(self, q: queue.Queue) -> None: ...

    def stats(self) -> dict: ...

    def verdict(self, fp: Fingerprint, ip: bytes, ctx: Context | None, host: HostRecord | None,
                client: str = "") -> Verdict: ...


def _make_fp_part(fp: Fingerprint) -> pb.Observation:
    """The verdict's fields of an Observation message."""
    label = fp.label
    return pb.Observation(
        matched=label is not None, os_class=label.klass if label else "", os_name=label.name if label else "",
        os_flavor=(label.flavor or "") if label else "", label=fp.os_text, generic=fp.generic, fuzzy=fp.fuzzy,
        tool=bool(label and label.is_app), distance=fp.dist, raw_sig=fp.raw_sig, link=fp.link or "???",
        mtu=fp.raw_mtu, params=fp.params, mail_class=MAIL_CLASS_PB[fp.mail_class],
    )


_fp_part = PerFingerprint(_make_fp_part)  # built once per stack
MAX_CONTEXT_NAME = 1024  # bytes per name in a Lookup's context (DNS names stop at 253)


def context_of(req: pb.LookupRequest) -> Context | None:
    """The request's MTA context (None: not given); an oversized name is INVALID_ARGUMENT."""
    if not req.HasField("context"):
        return None
    c = req.context
    names = []
    for field in ("client_name", "reverse_name", "helo_name"):
        if not c.HasField(field):
            names.append(None)
            continue
        value = getattr(c, field)
        if len(value.encode()) > MAX_CONTEXT_NAME:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"context.{field} is over {MAX_CONTEXT_NAME} bytes")
        names.append(value)
    return from_postfix(*names)


def _ip(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def observation_pb(obs: Observation) -> pb.Observation:
    pkt = obs.pkt
    msg = pb.Observation(client_ip=_ip(pkt.src), client_port=pkt.sport, server_ip=_ip(pkt.dst),
                         server_port=pkt.dport, time=pkt.ts, ip_version=pkt.ip_ver, ttl=pkt.ttl)
    msg.MergeFrom(_fp_part(obs.fp))
    if obs.nat is not None:
        msg.nat = obs.nat.kind
        msg.nat_reasons.extend(obs.nat.reason.split())
    if obs.uptime is not None:
        msg.uptime_minutes = obs.uptime.minutes
        msg.uptime_modulo_days = obs.uptime.modulo_days
    return msg


def host_pb(host: HostRecord) -> pb.Host:
    return pb.Host(
        first_seen=host.first_seen, last_seen=host.last_seen, seen_count=host.count,
        host_changed=host.host_changed, last_change=host.last_change,
        distinct_signatures=len(host.signatures), last_distance=host.last_distance, os_names=host.os_names,
        last_ip_sharing=host.last_ip_sharing, last_host_change=host.last_host_change,
        uptime_minutes=host.uptime_minutes, uptime_modulo_days=host.uptime_modulo_days,
    )


@dataclass(frozen=True)
class Limits:
    """What one client, and all clients together, may hold open.

    A client is an address (the port is left out: one client, many connections);
    gRPC names no peer on a unix socket, so all its clients are one.  Only waits
    and streams cost something that lasts; a Lookup answered at once is never
    limited.  A LookupBatch waits once, whatever its size.  A stream holds at most
    `watch_queue` references to messages shared by all streams, plus what gRPC
    buffers up to the client's flow-control window.
    """

    waits: int = 8192  # Lookups/LookupBatches waiting for a SYN, all clients
    waits_per_client: int = 2048
    streams: int = 1024  # Watch streams open, all clients
    streams_per_client: int = 64
    watch_queue: int = 1000  # observations buffered per Watch stream; a slow reader loses the excess
    watch_rate: int = 5000  # Watch messages sent a second, all streams together


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


def _refusals(handler):
    """Turn a _Refused raised in a handler into the call's status."""

    @functools.wraps(handler)
    async def wrapped(self, request, context):
        try:
            return await handler(self, request, context)
        except _Refused as r:
            await context.abort(r.code, r.details)

    return wrapped


def client_key(peer: str) -> str:
    """`ipv4:203.0.113.5:41234` -> `203.0.113.5`; unix peers share one key per socket."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer


class _Stream:
    """One Watch stream's filter (None: everything) and bounded queue (loop thread only)."""

    __slots__ = ("wants", "queue", "ready", "drops")

    def __init__(self, wants) -> None:
        self.wants = wants
        self.queue: deque[pb.Observation] = deque()  # messages shared by every stream they go to
        self.ready = asyncio.Event()
        self.drops = 0


class _Waiter:
    """One Lookup's or LookupBatch's wait: woken through `fut`, told which keys were hit."""

    __slots__ = ("fut", "hits")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fut: asyncio.Future = loop.create_future()
        self.hits: set[tuple[bytes, int]] = set()


class _Pace:
    """Turns to send a Watch message, `rate` a second for all streams together, first come first served.

    What Watch costs the loop is per message sent, so it is bounded here, not per
    stream: 1,000 streams that read get `rate` / 1,000 messages a second each (the
    rest is dropped and counted at their queues), and Lookups keep the loop.
    """

    TICK = 0.005  # seconds between releases: a release's sends are a few hundred microseconds of work

    def __init__(self, rate: int, loop: asyncio.AbstractEventLoop) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * self.TICK)
        self.loop = loop
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.turns: deque[asyncio.Future] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def turn(self) -> None:
        self._refill()
        if self.tokens >= 1 and not self.turns:
            self.tokens -= 1
            return
        fut = self.loop.create_future()
        self.turns.append(fut)
        if self._timer is None:
            self._timer = self.loop.call_later(self.TICK, self._release)
        await fut

    def _release(self) -> None:
        self._timer = None
        self._refill()
        while self.turns and self.tokens >= 1:
            fut = self.turns.popleft()
            if not fut.done():  # else its stream is gone
                fut.set_result(None)
                self.tokens -= 1
        if self.turns:
            self._timer = self.loop.call_later(self.TICK, self._release)


class Servicer(pb_grpc.FingerprintServicer):
    """The API, run on the event loop: nothing here blocks on a client or on the capture."""

    def __init__(self, backend: Backend, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.b = backend
        self.limits = limits
        self.loop = loop
        # (ip, port) -> the waits for it; port 0 waits for any SYN from ip.
        # Changed on the loop thread only; the capture thread only tests membership.
        self._waiters: dict[tuple[bytes, int], set[_Waiter]] = {}
        self._waits: Counter[str] = Counter()  # open waits by client
        self._streams: dict[_Stream, str] = {}  # open Watch streams -> client
        self._stream_count: Counter[str] = Counter()
        self._fanout: _Fanout | None = None
        self._pace = _Pace(limits.watch_rate, loop)
        # Redis look-ups block: they run in a few threads of their own, never on the loop.
        self._redis_pool: ThreadPoolExecutor | None = None
        self.counters: Counter[str] = Counter()  # see stats(); the metrics endpoint reads them at scrape time
        # Made with registry=None: the service's metrics endpoint collects them from here.
        self.lookup_seconds = Histogram(
            "fingerprintd_lookup_seconds", "Time to answer a Lookup or LookupBatch, waits included",
            ["method", "waited"], registry=None,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self._observe = {(m, w): self.lookup_seconds.labels(m, w)
                         for m in ("Lookup", "LookupBatch") for w in ("yes", "no")}
        self.open = Gauge("fingerprintd_grpc_open", "Waits and Watch streams open now", ["kind"], registry=None)
        self.open.labels("waits").set_function(lambda: sum(self._waits.values()))
        self.open.labels("streams").set_function(lambda: len(self._streams))

    def _cap(self, used: int, cap: int, limit: str, what: str) -> None:
        """Refuse one more (RESOURCE_EXHAUSTED, counted under `limit`) once `used` has reached `cap`."""
        if used >= cap:
            self.counters[f"refused_{limit}"] += 1
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"over {cap} {what}")

    # --- what the capture side calls ---------------------------------------

    def arrived(self, syns: list) -> None:
        """A batch of SYNs is in the table (capture thread): wake whoever waits for one of them."""
        waiters = self._waiters
        if not waiters:
            return
        for syn in syns:
            ip, port = syn.src, syn.sport
            if (ip, port) in waiters or (ip, 0) in waiters:
                try:
                    self.loop.call_soon_threadsafe(self._wake, ip, port)
                except RuntimeError:  # the loop is closed: the server is gone
                    return

    def _wake(self, ip: bytes, port: int) -> None:
        for key in ((ip, port), (ip, 0)):
            for waiter in self._waiters.get(key, ()):
                waiter.hits.add(key)
                if not waiter.fut.done():
                    waiter.fut.set_result(None)

    # --- requests ----------------------------------------------------------

    def _query(self, req: pb.LookupRequest) -> tuple[bytes, int, float]:
        try:
            ip = normalize_ip(req.ip)
        except AddressError as exc:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if req.port > 65535:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"port out of range 0..65535: {req.port}")
        if req.wait_ms > self.b.max_wait_ms:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"wait_ms {req.wait_ms} is over the limit of {self.b.max_wait_ms}")
        return ip, req.port, req.wait_ms / 1000

    def _answer(self, ip: bytes, obs: Observation | None, host: HostRecord | None,
                ctx: Context | None = None) -> pb.LookupResponse:
        if obs is None:
            return pb.LookupResponse(found=False, host=host_pb(host) if host else None)
        v = self.b.verdict(obs.fp, ip, ctx, host, _ip(ip))
        return pb.LookupResponse(
            found=True, observation=observation_pb(obs), host=host_pb(host) if host else None,
            verdict=pb.Verdict(score=v.score, action=v.action, rules=v.rules, header=v.header, trusted=v.trusted,
                               mail_class=MAIL_CLASS_PB[obs.fp.mail_class], reply=v.reply, id=v.key,
                               learned=v.learned, bucket=v.key.rpartition("/")[2]),
        )

    async def _from_redis(self, queries: list[tuple[bytes, int, float]], found: list, context) -> None:
        """Fill in the misses of `found` from Redis (--redis), within the caller's deadline.

        A miss here may be a connection another MX took: Redis is asked before
        any wait (the SYN is usually long published) and again when a wait ends."""
        reader = getattr(self.b, "reader", None)
        missing = [i for i, (obs, _) in enumerate(found) if obs is None]
        if reader is None or not missing:
            return
        left = context.time_remaining()
        budget = REDIS_TIMEOUT if left is None else max(0.0, min(REDIS_MAX_TIMEOUT, left * 0.8))
        if budget <= 0:
            return
        if self._redis_pool is None:
            self._redis_pool = ThreadPoolExecutor(max_workers=REDIS_THREADS, thread_name_prefix="grpc-redis")
        deadline = time.monotonic() + budget

        def ask() -> list:
            return [reader.lookup(queries[i][0], queries[i][1], deadline - time.monotonic()) for i in missing]

        try:
            answers = await self.loop.run_in_executor(self._redis_pool, ask)
        except RuntimeError:  # the pool is shut down: the service is stopping
            return
        for i, (obs, host) in zip(missing, answers, strict=True):
            if obs is not None:
                found[i] = (obs, found[i][1] or host)
            elif found[i][1] is None and host is not None:
                found[i] = (None, host)

    async def _wait(self, queries: list[tuple[bytes, int, float]], found: list, client: str) -> None:
        """Fill in `found` as the missing SYNs arrive, each until its own wait is up.

        One wait for the whole list: every missing key wakes the same waiter, and
        the list costs its client one wait however long it is.
        """
        limits = self.limits
        self._cap(sum(self._waits.values()), limits.waits, "waits", "waiting lookups in all")
        self._cap(self._waits[client], limits.waits_per_client, "waits_per_client", f"waiting lookups from {client}")
        self._waits[client] += 1
        self.counters["waits"] += 1
        start = time.monotonic()
        pending = {i for i, (obs, _) in enumerate(found) if obs is None and queries[i][2]}
        by_key: dict[tuple[bytes, int], list[int]] = {}
        for i in pending:
            by_key.setdefault(queries[i][:2], []).append(i)
        expiry = deque(sorted((start + queries[i][2], i) for i in pending))
        waiter = _Waiter(self.loop)
        for key in by_key:
            self._waiters.setdefault(key, set()).add(waiter)
        # Looked up again once registered: a SYN that landed in between is not missed.
        # After that only the keys that were hit: a batch costs its arrivals, not
        # its length times its arrivals.
        waiter.hits.update(by_key)
        try:
            while True:
                hits, waiter.hits = waiter.hits, set()
                for key in hits:
                    for i in by_key.get(key, ()):
                        if i in pending:
                            found[i] = self.b.hosts.lookup(*key)
                            if found[i][0] is not None:
                                pending.discard(i)
                now = time.monotonic()
                while expiry and (expiry[0][0] <= now or expiry[0][1] not in pending):
                    pending.discard(expiry.popleft()[1])
                if not expiry:
                    break
                if waiter.fut.done():
                    waiter.fut = self.loop.create_future()
                if waiter.hits:  # hit while we looked
                    continue
                try:
                    async with asyncio.timeout(expiry[0][0] - now):
                        await waiter.fut
                except TimeoutError:
                    pass
        finally:
            for key in by_key:
                waiting = self._waiters[key]
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[key]
            self._waits[client] -= 1
            if not self._waits[client]:
                del self._waits[client]

    def _observe_latency(self, method: str, waited: bool, t0: float) -> None:
        self._observe[method, "yes" if waited else "no"].observe(time.perf_counter() - t0)

    @_refusals
    async def Lookup(self, request, context):  # noqa: N802 (gRPC method names)
        t0 = time.perf_counter()
        ip, port, wait = self._query(request)
        ctx = context_of(request)
        found = [self.b.hosts.lookup(ip, port)]
        if found[0][0] is None:
            await self._from_redis([(ip, port, wait)], found, context)
        waited = found[0][0] is None and wait > 0
        if waited:
            await self._wait([(ip, port, wait)], found, client_key(context.peer()))
            await self._from_redis([(ip, port, wait)], found, context)
        answer = self._answer(ip, *found[0], ctx)
        self._observe_latency("Lookup", waited, t0)
        return answer

    @_refusals
    async def Feedback(self, request, context):  # noqa: N802
        rep = getattr(self.b, "reputation", None)
        if rep is None:
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, "this service keeps no reputation store "
                                                                "(serve --reputation PATH)")
        if len(request.message_id) > 998:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "message_id is over 998 bytes")

        def record() -> pb.FeedbackResponse:
            result = rep.record(request.id, request.spam, request.client_ip, request.message_id)
            learned = rep.learned(request.id)
            return pb.FeedbackResponse(result=result, adjustment=learned.adjustment, why=learned.why)

        try:
            # A write (a commit, now and then a WAL checkpoint) stays off the event loop.
            return await asyncio.to_thread(record)
        except ReputationError as exc:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    @_refusals
    async def LookupBatch(self, request, context):  # noqa: N802
        t0 = time.perf_counter()
        if len(request.queries) > self.b.max_batch:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"batch of {len(request.queries)} is over the limit of {self.b.max_batch}")
        queries = [self._query(q) for q in request.queries]
        contexts = [context_of(q) for q in request.queries]
        found = [self.b.hosts.lookup(ip, port) for ip, port, _ in queries]
        await self._from_redis(queries, found, context)
        waited = any(obs is None and w for (obs, _), (_, _, w) in zip(found, queries, strict=True))
        if waited:  # then wait, together, for the ones not captured yet
            await self._wait(queries, found, client_key(context.peer()))
            await self._from_redis(queries, found, context)
        answer = pb.LookupBatchResponse(
            results=[self._answer(ip, obs, host, ctx)
                     for (ip, _, _), (obs, host), ctx in zip(queries, found, contexts, strict=True)])
        self._observe_latency("LookupBatch", waited, t0)
        return answer

    @_refusals
    async def Watch(self, request, context):  # noqa: N802
        try:
            name_rx = re.compile(request.os_name_regex) if request.os_name_regex else None
        except re.error as exc:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"bad os_name_regex: {exc}") from None
        ports = set(request.ports)
        wanted = set(request.mail_classes)
        if bad := wanted - set(MAIL_CLASS_PB.values()):
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"mail_classes: not a mail class: {', '.join(map(str, sorted(bad)))}")
        unknown_only = request.unknown_only
        filtered = bool(unknown_only or name_rx or ports or wanted)

        def wants(obs: Observation) -> bool:
            label = obs.fp.label
            if unknown_only and label is not None:
                return False
            if name_rx and not (label and name_rx.search(label.name)):
                return False
            if ports and obs.server[1] not in ports:
                return False
            return not wanted or MAIL_CLASS_PB[obs.fp.mail_class] in wanted

        client = client_key(context.peer())
        limits = self.limits
        self._cap(len(self._streams), limits.streams, "streams", "Watch streams in all")
        self._cap(self._stream_count[client], limits.streams_per_client, "streams_per_client",
                  f"Watch streams from {client}")
        stream = _Stream(wants if filtered else None)
        self._streams[stream] = client
        self._stream_count[client] += 1
        if self._fanout is None:
            self._fanout = _Fanout(self)
        try:
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                while stream.queue:
                    await self._pace.turn()
                    # Suspends while the client does not read (HTTP/2 flow control):
                    # meanwhile the queue fills to its bound and the excess is dropped.
                    await context.write(stream.queue.popleft())
        finally:
            del self._streams[stream]
            self._stream_count[client] -= 1
            if not self._stream_count[client]:
                del self._stream_count[client]
            if not self._streams and self._fanout is not None:
                self._fanout.stop()
                self._fanout = None

    async def deliver(self, batch: list[Observation], messages: list[pb.Observation]) -> None:
        """Observations from the capture side -> each stream that wants them (loop thread)."""
        bound = self.limits.watch_queue
        counters = self.counters
        counters["watch_observations"] += len(batch)
        for n, stream in enumerate(list(self._streams)):
            if n and not n % 64:
                await asyncio.sleep(0)  # Lookups in between: a batch for 1,000 streams is not one long step
            q = stream.queue
            room = bound - len(q)
            wants = stream.wants
            picked = range(len(batch)) if wants is None else [i for i, obs in enumerate(batch) if wants(obs)]
            if room <= 0:  # a reader that does not keep up
                lost = len(picked)
            else:
                lost = max(0, len(picked) - room)
                q.extend(messages[i] for i in picked[:room])
                if picked:
                    stream.ready.set()
            if lost:
                stream.drops += lost
                counters["watch_drops"] += lost

    async def Stats(self, request, context):  # noqa: N802
        # Off the loop: table sizes expire entries, which may take a while on a big table.
        return pb.StatsResponse(**await self.loop.run_in_executor(None, self.b.stats))

    def stats(self) -> dict[str, int]:
        """This server's own counters (Server.stats(); the Stats RPC answers the service's).

        waits: Lookups and LookupBatches that waited; watch_observations: observations handed to the streams
        (before their filters); watch_drops: observations a slow Watch reader lost
        (offered while its queue was full, counted before its filter; the service's
        own watch_drops counts those lost earlier, in the queue it fills for this
        server); refused_*: RESOURCE_EXHAUSTED answers by limit; open_waits, open_streams.
        """
        out = {k: 0 for k in ("waits", "watch_observations", "watch_drops", "refused_waits",
                              "refused_waits_per_client", "refused_streams", "refused_streams_per_client")}
        out.update(self.counters)
        out["open_waits"] = sum(self._waits.values())
        out["open_streams"] = len(self._streams)
        return out


class _Fanout:
    """The one subscriber to the service's observations while any Watch stream is open.

    A thread takes them from the service's queue and hands them to the loop in
    batches, one batch at a time: if the loop falls behind, the service's bounded
    queue fills and the service counts the loss, rather than callbacks piling up.
    """

    def __init__(self, servicer: Servicer) -> None:
        self.servicer = servicer
        self.q = servicer.b.subscribe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-fanout", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        servicer, q = self.servicer, self.q
        while not self._stop.is_set():
            try:
                batch = [q.get(timeout=0.2)]
            except queue.Empty:
                continue
            # A moment for more to come: the loop's cost is per batch and stream, so
            # batches of one SYN each would make 1,000 streams cost 1,000 steps a SYN.
            time.sleep(FANOUT_INTERVAL)
            try:
                while len(batch) < 1024:
                    batch.append(q.get_nowait())
            except queue.Empty:
                pass
            messages = [observation_pb(obs) for obs in batch]  # here, once, not on the loop
            try:
                done = asyncio.run_coroutine_threadsafe(servicer.deliver(batch, messages), servicer.loop)
            except RuntimeError:  # the loop is closed
                return
            while not self._stop.is_set():
                try:
                    done.result(0.2)
                    break
                except futures.TimeoutError:
                    pass
                except Exception:  # a bug; Watch goes on with the next batch
                    log.exception("Watch fan-out failed")
                    break

    def stop(self) -> None:
        self._stop.set()
        self.servicer.b.unsubscribe(self.q)


class TokenCheck(grpc.aio.ServerInterceptor):
    """A shared secret for remote filters: `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}"

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

        self.deny = grpc.unary_unary_rpc_method_handler(deny)
        self.deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return await continuation(details)  # health and reflection stay open
        if dict(details.invocation_metadata).get("authorization") == self.expected:
            return await continuation(details)
        return self.deny_stream if details.method.endswith("/Watch") else self.deny


class _Loop:
    """The one event loop all the process's gRPC servers run on, in its own thread."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                cls._thread = threading.Thread(target=cls._loop.run_forever, name="grpc", daemon=True)
                cls._thread.start()
            return cls._loop

    @classmethod
    def on_loop(cls) -> bool:
        return threading.current_thread() is cls._thread


def _run(loop: asyncio.AbstractEventLoop, fn, *args, timeout: float | None = None):
    """fn(*args) on the loop thread (a coroutine function is awaited there); its result here."""

    async def call():
        out = fn(*args)
        return await out if asyncio.iscoroutine(out) else out

    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)


class Health:
    """The aio health servicer, driven from any thread as the service does."""

    def __init__(self, servicer, loop: asyncio.AbstractEventLoop) -> None:
        self.servicer = servicer
        self.loop = loop

    def _do(self, coro_fn, *args) -> None:
        if _Loop.on_loop():
            self.loop.create_task(coro_fn(*args))
        else:
            _run(self.loop, coro_fn, *args, timeout=5.0)  # a stuck loop must not hang who reports a fault

    def set(self, service: str, status) -> None:
        self._do(self.servicer.set, service, status)

    def enter_graceful_shutdown(self) -> None:
        self._do(self.servicer.enter_graceful_shutdown)


class Server:
    """A grpc.aio server with the blocking interface of grpc.Server that the service uses."""

    def __init__(self, aio: grpc.aio.Server, servicer: Servicer, loop: asyncio.AbstractEventLoop) -> None:
        self.aio = aio
        self.servicer = servicer
        self.loop = loop
        self._stopped = threading.Event()

    def add_insecure_port(self, address: str) -> int:
        return _run(self.loop, self.aio.add_insecure_port, address)

    def add_secure_port(self, address: str, credentials) -> int:
        return _run(self.loop, self.aio.add_secure_port, address, credentials)

    def start(self) -> None:
        hosts = self.servicer.b.hosts
        hosts.arrival_hooks = (*hosts.arrival_hooks, self.servicer.arrived)
        _run(self.loop, self.aio.start)

    def stop(self, grace: float | None) -> threading.Event:
        """Stop (waits and streams are cancelled after `grace` seconds); the event is set once stopped."""
        hosts = self.servicer.b.hosts
        hosts.arrival_hooks = tuple(h for h in hosts.arrival_hooks if h != self.servicer.arrived)

        async def stop() -> None:
            try:
                await self.aio.stop(grace)
            finally:
                if self.servicer._fanout is not None:
                    self.servicer._fanout.stop()
                    self.servicer._fanout = None
                if self.servicer._redis_pool is not None:
                    self.servicer._redis_pool.shutdown(wait=False, cancel_futures=True)
                self._stopped.set()

        asyncio.run_coroutine_threadsafe(stop(), self.loop)
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def stats(self) -> dict[str, int]:
        return _run(self.loop, self.servicer.stats)


def build_server(backend: Backend, listen: list[str], token: str = "", tls: tuple[bytes, bytes] | None = None,
                 limits: Limits | None = None) -> tuple[Server, Health]:
    """A started-ready server bound to `listen` (HOST:PORT or unix:PATH)."""
    for addr in listen:
        if addr.startswith("unix:"):
            remove_stale_socket(addr[5:])
    loop = _Loop.get()

    async def make() -> tuple[Server, Health]:
        interceptors = [TokenCheck(token)] if token else []
        aio = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        api = Servicer(backend, limits or Limits(), loop)
        pb_grpc.add_FingerprintServicer_to_server(api, aio)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, aio)
        await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), aio)
        return Server(aio, api, loop), Health(health_servicer, loop)

    server, health_ = _run(loop, make)
    creds = grpc.ssl_server_credentials([(tls[0], tls[1])]) if tls else None
    for addr in listen:
        try:
            bound = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
        except RuntimeError:  # grpcio raises this when bind() fails
            bound = 0
        if not bound and not addr.startswith("unix:"):
            raise OSError(f"cannot listen on {addr} (address in use, or not a local address)")
    return server, health_
