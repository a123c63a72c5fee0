"""`fingerprintd serve`: live capture -> engine -> host table -> gRPC answers.

Capture runs in its own thread (a slow query never stalls it); the gRPC
server answers from the host table on its own asyncio loop (waits and Watch
streams are futures and bounded queues there, so no client can hold a thread
and starve the others; see server.py); the main thread waits
for signals: SIGHUP reloads the signatures, the mail classes and the policy
(a bad file is reported with file:line and the old ones stay in force),
SIGTERM and SIGINT stop cleanly.  Logs are JSON lines on stderr.

A part that dies (the capture, the p0f socket, the analyzer) never leaves a
healthy-looking process: the error is logged as JSON, health turns
NOT_SERVING, and `run` returns 1 so that systemd (Restart=on-failure)
starts the service again.  The p0f log is the exception by design: a write
that fails (a full disk) is logged once per episode and counted, and the
capture goes on; SIGHUP reopens it (logrotate).
"""

from __future__ import annotations

import gc
import grp
import json
import logging
import os
import pwd
import queue
import select
import signal
import threading
import time
import traceback
from collections import Counter
from operator import attrgetter, itemgetter

from fingerprintd.capture import CaptureError, Live, open_live, ports_filter
from fingerprintd.classes import ClassesError, ClassMap, load_classes
from fingerprintd.compat import AnalyzerServer, P0fSocketServer
from fingerprintd.config import Config, split_host_port
from fingerprintd.data import default_classes, default_policy, default_signatures
from fingerprintd.engine import Observation, build_engine, join_batch
from fingerprintd.hosts import host_table
from fingerprintd.matcher import PerFingerprint
from fingerprintd.mode import P0fMode
from fingerprintd.policy import Policy, PolicyError, Verdict, load_policy, served_verdict
from fingerprintd.report import join_lines, p0f_log_formatter, p0f_tails
from fingerprintd.reputation import Reputation, SqliteStore
from fingerprintd.server import SERVICE_NAME, Limits, build_server
from fingerprintd.signatures import Database, SignatureError, load

STOP_JOIN = 5.0  # seconds the capture thread gets to finish its batch at stop

log = logging.getLogger("fingerprintd")
_FP = itemgetter(2)  # Observation.fp, read at C speed over a batch
_SYN_FP = attrgetter("fp")  # hosts.Syn.fp
WATCH_QUEUE = 10_000  # observations buffered per Watch stream; a slow reader loses the excess


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(level: int, msg: str, **fields) -> None:
    log.log(level, msg, extra={"fields": fields})


def tune_gc() -> None:
    """The table holds up to millions of long-lived objects; the collector's
    default thresholds would rescan them all every few thousand SYNs
    (measured: 2.4x the per-SYN cost).  Nothing here forms cycles, so full
    collections are left to the service's hourly one (its pause is logged)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 1_000_000)


# The SYN-by-action counters take the policy's action for the stack, trusted networks aside:
# made once per stack (a dict look-up per SYN) where the full verdict with its trust check cost
# 1.5 to 4.4 us per SYN. No sender has this address, and no trusted network is meant to hold it.
_NO_CLIENT = b"\xff" * 16


def _action_memo(policy: Policy) -> PerFingerprint[str]:
    return PerFingerprint(lambda fp: policy.verdict(fp, _NO_CLIENT).action)


class Signals:
    """SIGHUP, SIGTERM and SIGINT, queued for the main loop to act on.

    Installed before anything slow (the files load afterwards): a SIGHUP
    while a large database loads must not kill the process.  The handlers only
    append the number: Event.set() there could deadlock on the lock the
    interrupted main thread already holds inside Event.wait() (seen: a SIGTERM
    that never stopped the service)."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, _frame: self.pending.append(signum))

    def take(self) -> set[int]:
        got = set()
        while self.pending:
            got.add(self.pending.pop())
        return got


class LogFile:
    """The p0f-format log: appended unbuffered, reopened on SIGHUP.

    A failed write loses those lines, counted, and is logged once until a write
    works again; it never reaches the capture thread (a full disk once killed it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors = 0
        self.lines_lost = 0
        self.reopens = 0
        self._failing = False
        self._lock = threading.Lock()  # a reopen never closes the descriptor a write is using
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, text: str | bytes, lines: int) -> None:
        data = memoryview(text.encode("utf-8") if text.__class__ is str else text)
        with self._lock:
            try:
                while data:
                    data = data[os.write(self._fd, data):]
            except OSError as exc:
                self.errors += 1
                self.lines_lost += lines
                if not self._failing:
                    self._failing = True
                    event(logging.ERROR, "cannot write the p0f log; capture goes on, lines are lost until "
                          "writes work again", path=self.path, error=str(exc))
                return
            if self._failing:
                self._failing = False
                event(logging.INFO, "writing the p0f log again", path=self.path, lines_lost=self.lines_lost)

    def reopen(self) -> None:
        try:
            fd = self._open()
        except OSError as exc:
            event(logging.ERROR, "cannot reopen the p0f log; still writing the old file", path=self.path,
                  error=str(exc))
            return
        with self._lock:
            old, self._fd = self._fd, fd
        os.close(old)
        self.reopens += 1

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def live_loop(engine, hosts):
    """The compiled capture path (_replay.LiveLoop) for this engine and table, or None: the pure path."""
    impl = engine.accel
    if impl is None or type(hosts) is not impl.hosts.HostTable or type(engine.flows) is not impl.flows.RecentSyns:
        return None
    return impl.replay.LiveLoop(engine, p0f_tails, hosts)


class Service:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.db_path = cfg.signatures or default_signatures()
        self.policy_path = cfg.policy or default_policy()
        self.classes_path = cfg.classes or default_classes()
        db, classes, self.policy = self._load_files()  # errors propagate: startup fails with file:line
        self.engine = build_engine(db, classes, cfg.ports, live=True)
        self.hosts = host_table(cfg.max_connections, cfg.max_hosts, cfg.ttl_seconds)
        self._loop = live_loop(self.engine, self.hosts)
        self.max_batch = cfg.max_batch
        self.max_wait_ms = cfg.max_wait_ms
        self.reputation = None
        self.redis_pools = None  # store.Pools: made once, for the reputation, the publisher and the reader
        if cfg.reputation and not cfg.redis_reputation:
            self.reputation = Reputation(SqliteStore(cfg.reputation))
        if cfg.redis_reputation:  # learned on every host, counted in one place (issue 13)
            from fingerprintd import store
            from fingerprintd.redisrep import RedisReputationStore

            if cfg.reputation:
                event(logging.WARNING, "reputation kept in redis; the reputation file is not used",
                      file=cfg.reputation)
            self.redis_pools = store.open_pools(cfg.redis_url, cfg.redis_password_file)
            self.reputation = Reputation(RedisReputationStore(*self.redis_pools))
        self.captures: list[Live] = []
        self.started = time.time()
        self.reloads = 0
        self.reload_failures = 0
        self.watch_drops = 0
        self.syn_actions: dict[str, int] = {}  # fingerprinted SYNs by the policy's action for their stack
        self._syn_action = _action_memo(self.policy)
        self._watchers: set[queue.Queue] = set()
        self._watch_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed = ""  # the part whose fatal error stopped the service
        self.log: LogFile | None = None
        self._log_lines = join_lines(p0f_log_formatter())  # a batch's lines, in one call
        self.compat: list[P0fSocketServer | AnalyzerServer] = []
        self.grpc_server = None
        self._health = None
        self.metrics = None
        # Redis (--redis): the publisher, the reader, and what every lookup path asks (the local
        # table alone without Redis; the table first, then Redis, with it).
        self.publisher = None
        self.reader = None
        self.lookups = self.hosts

    # --- capture ----------------------------------------------------------

    def open_store(self) -> None:
        """The Redis publisher and reader, as configured (--redis)."""
        cfg = self.cfg
        if not cfg.redis_url:
            return
        from fingerprintd import store

        pools = self.redis_pools = self.redis_pools or store.open_pools(cfg.redis_url, cfg.redis_password_file)
        target = store.describe(cfg.redis_url)
        self.publisher = store.Publisher(pools.write, cfg.ttl_seconds, self.hosts.host,
                                         rspamd_prefix=cfg.redis_rspamd_prefix, max_queue=cfg.redis_queue,
                                         target=target)
        self.reader = store.Reader(pools.read, lambda: self.engine.matcher)
        self.lookups = store.SharedLookup(self.hosts, self.reader)
        self.publisher.start()
        event(logging.INFO, "publishing to redis", redis=target, rspamd_prefix=cfg.redis_rspamd_prefix or None,
              queue=cfg.redis_queue)

    def open_compat(self) -> None:
        """The p0f API socket, the p0f-analyzer UDP port and the p0f log, as configured."""
        cfg = self.cfg
        if cfg.log_file:
            self.log = LogFile(cfg.log_file)
        if cfg.p0f_socket:
            owner = None
            if cfg.p0f_socket_owner:
                user, _, group = cfg.p0f_socket_owner.partition(":")
                pw = pwd.getpwnam(user)
                owner = (pw.pw_uid, grp.getgrnam(group).gr_gid if group else pw.pw_gid)
            self.compat.append(P0fSocketServer(cfg.p0f_socket, self.lookups, int(cfg.p0f_socket_mode, 8), owner,
                                               max_connections=cfg.p0f_socket_max_connections,
                                               idle_timeout=cfg.p0f_socket_idle_timeout,
                                               max_pending=cfg.p0f_socket_max_pending))
            event(logging.INFO, "p0f API socket", path=cfg.p0f_socket, mode=cfg.p0f_socket_mode)
        if cfg.analyzer_udp:
            host, port = split_host_port(cfg.analyzer_udp)
            self.compat.append(AnalyzerServer(host, port, self.lookups, cfg.analyzer_allow,
                                              max_inflight=cfg.analyzer_max_inflight, verdict=self.verdict,
                                              feedback=self.reputation.record if self.reputation else None))
            event(logging.INFO, "p0f-analyzer UDP", listen=cfg.analyzer_udp, allow=cfg.analyzer_allow)
        for server in self.compat:
            server.start()

    def open_captures(self) -> None:
        ports = self.cfg.ports

        def bpf(linktype: int) -> str:
            # The kernel runs this filter: no IPv6 extension-header walk (a loop it
            # refuses); and only SYNs, since the service answers about clients.
            return ports_filter(ports, vlan=linktype == 1, ext_headers=False, synack=False)

        for iface in self.cfg.interfaces:
            self.captures.append(open_live(iface, bpf, self.cfg.snaplen, self.cfg.buffer_mb, self.cfg.timeout_ms))
            event(logging.INFO, "capturing", interface=iface, ports=ports, linktype=self.captures[-1].linktype)

    def capture_loop(self) -> None:
        caps = {c.fileno(): c for c in self.captures}
        stop = self._stop
        while not stop.is_set():
            ready, _, _ = select.select(list(caps), [], [], 0.2)
            for fd in ready:
                cap = caps[fd]
                # Drain what is ready, but look at the stop flag between batches: under a
                # flood the ring is never empty, and a stop must not wait for it to be.
                while not stop.is_set():
                    blob, meta = cap.read_raw()
                    if not meta:
                        break
                    self.ingest_blob(blob, meta, cap.linktype)

    def ingest(self, batch: list[tuple[int, int, bytes]], linktype: int) -> None:
        """Captured frames -> the host table, the Watch streams and the log."""
        self.ingest_blob(*join_batch(batch), linktype)

    def ingest_blob(self, blob: bytes, meta: bytes, linktype: int) -> None:
        """A next_batch's frames -> the host table, the action counters, Watch, Redis and the log.

        Per batch, not per SYN, wherever the work allows: the table takes the batch under one lock,
        the actions are counted per distinct stack (the matcher hands out one Fingerprint per stack),
        and the log gets one write.  With the accelerator the whole path up to the table's records
        and the log's bytes runs on C structs (_replay.LiveLoop), and Observations are made only when
        a Watch stream or Redis takes them; the pure path is the reference it must equal."""
        loop = self._loop
        if loop is None:
            self._deliver(self.engine.feed_blob(blob, meta, linktype))
            return
        share = bool(self._watchers) or self.publisher is not None
        syns, observations, text = loop.feed(blob, meta, linktype, self.log is not None, share)
        if not syns:
            return
        self.hosts.add_syns(syns)
        self._count_actions(list(map(_SYN_FP, syns)))
        if observations:
            self._share(observations)
        if text is not None and self.log is not None:
            self.log.write(text, len(syns))

    def _deliver(self, observations: list[Observation]) -> None:
        """The pure path's ingest_blob, from the engine's observations."""
        if not observations:
            return
        self.hosts.add_batch(observations)
        self._count_actions(list(map(_FP, observations)))
        self._share(observations)
        if self.log is not None:
            self.log.write(self._log_lines(observations), len(observations))

    def _count_actions(self, fps: list) -> None:
        """The policy's action for each fingerprinted SYN, looked up once per distinct stack."""
        ids = list(map(id, fps))
        by_id = dict(zip(ids, fps, strict=True))
        action_of = self._syn_action
        actions = self.syn_actions
        for fp_id, n in Counter(ids).items():
            fp = by_id[fp_id]
            if fp is not None:
                action = action_of(fp)
                actions[action] = actions.get(action, 0) + n

    def _share(self, observations: list[Observation]) -> None:
        """Observations to the Watch streams and Redis."""
        if self._watchers:
            self._publish(observations)
        if self.publisher is not None:
            self.publisher.offer([obs for obs in observations if obs.to_server and obs.fp is not None])

    def _publish(self, observations: list[Observation]) -> None:
        with self._watch_lock:
            for q in self._watchers:
                for obs in observations:
                    try:
                        q.put_nowait(obs)
                    except queue.Full:
                        self.watch_drops += 1

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(WATCH_QUEUE)
        with self._watch_lock:
            self._watchers.add(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._watch_lock:
            self._watchers.discard(q)

    # --- control ------------------------------------------------------------

    def _load_files(self) -> tuple[Database, ClassMap, Policy]:
        # The one place the service maps its p0f_bugs option to the mode: every stage takes it from the database.
        return (load(self.db_path, P0fMode.of(self.cfg.p0f_bugs)), load_classes(self.classes_path),
                load_policy(self.policy_path))

    def reload(self) -> bool:
        """Load the signatures, mail classes and policy again; on any error keep all the old ones."""
        try:
            db, classes, policy = self._load_files()
        except (SignatureError, ClassesError, PolicyError, OSError) as exc:
            self.reload_failures += 1
            event(logging.ERROR, "reload failed, keeping the previous signatures, classes and policy",
                  error=str(exc))
            return False
        # One reference swap each: readers see the old or the new, whole.
        # The running implementation's matcher (compiled or pure), in the mode the database was read in.
        self.engine.matcher = type(self.engine.matcher)(db, classes=classes)
        self._syn_action = _action_memo(policy)
        self.policy = policy
        self.reloads += 1
        event(logging.INFO, "reloaded", signatures=self.db_path, signature_count=db.sig_count,
              classes=self.classes_path, policy=self.policy_path, rules=len(policy.rules))
        return True

    def verdict(self, fp, ip: bytes, ctx, host, client: str = "") -> Verdict:
        """The verdict as served, by every path that serves one (gRPC's Lookup, the p0f-analyzer's
        extended query): the current policy (a SIGHUP replaces it), plus what the reputation store
        learned; `client` goes into the header (gRPC's answers carry it)."""
        v = self.policy.verdict(fp, ip, ctx, host)
        rep = self.reputation
        return served_verdict(v, client, rep.adjustment(v.key) if rep is not None and not v.trusted else 0.0)

    def stats(self) -> dict:
        recv = drop = ifdrop = 0
        for cap in self.captures:
            r, d, i = cap.stats()
            recv, drop, ifdrop = recv + r, drop + d, ifdrop + i
        e = self.engine.summary()  # one consistent snapshot: the capture thread may be mid-batch
        sizes = self.hosts.sizes()
        cache = e["cache"]
        return {
            "packets": e["packets"], "fingerprinted": sum(e["fingerprinted"].values()), "skipped": e["skipped"],
            "kernel_received": recv, "kernel_dropped": drop, "interface_dropped": ifdrop,
            "connections": sizes["connections"], "hosts": sizes["hosts"],
            "match_cache_hits": cache["hits"], "match_cache_misses": cache["misses"],
            "lookups": self.hosts.lookups, "lookup_hits": self.hosts.hits,
            "uptime_seconds": time.time() - self.started, "reloads": self.reloads,
            "syn_mail_classes": e["syn_mail_classes"],
        }

    def drop_privileges(self, user: str) -> None:
        pw = pwd.getpwnam(user)
        for addr in self.cfg.listen:
            if addr.startswith("unix:") and os.path.exists(addr[5:]):
                os.chown(addr[5:], pw.pw_uid, pw.pw_gid)
        os.setgroups([g.gr_gid for g in grp.getgrall() if user in g.gr_mem])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
        event(logging.INFO, "dropped privileges", user=user, uid=pw.pw_uid)

    def run(self, signals: Signals | None = None) -> int:
        """Serve until SIGTERM/SIGINT or a fatal error. Returns the exit status (1: a part failed).

        `signals` were installed by the caller before the files loaded (cli.cmd_serve)."""
        signals = signals or Signals()
        tune_gc()
        self.open_store()  # first: a password file that cannot be read stops it before capture starts
        self.open_captures()
        self.open_compat()
        tls = None
        if self.cfg.tls_cert:
            with open(self.cfg.tls_key, "rb") as k, open(self.cfg.tls_cert, "rb") as c:
                tls = (k.read(), c.read())
        cfg = self.cfg
        limits = Limits(waits=cfg.api_waits, waits_per_client=cfg.api_waits_per_client, streams=cfg.api_streams,
                        streams_per_client=cfg.api_streams_per_client, watch_queue=cfg.watch_queue,
                        watch_rate=cfg.watch_rate)
        server, self._health = build_server(self, cfg.listen, cfg.token, tls, limits)
        self.grpc_server = server
        server.start()
        for addr in self.cfg.listen:
            if addr.startswith("unix:"):
                os.chmod(addr[5:], 0o660)
        if self.cfg.metrics:
            from fingerprintd.metrics import MetricsServer

            self.metrics = MetricsServer(self.cfg.metrics, self)
            event(logging.INFO, "metrics", listen=self.cfg.metrics, port=self.metrics.port)
        if self.cfg.user:
            self.drop_privileges(self.cfg.user)
        previous_hook = threading.excepthook
        threading.excepthook = self._thread_died
        event(logging.INFO, "serving", listen=self.cfg.listen, signatures=self.db_path, policy=self.policy_path)
        self._thread = threading.Thread(target=self._capture_guarded, name="capture", daemon=True)
        self._thread.start()
        next_full_gc = time.monotonic() + 3600
        try:
            while not self._stop.wait(0.2):
                got = signals.take()
                if got - {signal.SIGHUP}:
                    break
                if got:
                    self.reload()  # once for any number of SIGHUPs since the last look
                    if self.log is not None:
                        self.log.reopen()  # logrotate renamed it: write to a new file
                self._check_parts()
                if time.monotonic() > next_full_gc:
                    t0 = time.monotonic()
                    found = gc.collect()
                    event(logging.INFO, "full garbage collection", seconds=round(time.monotonic() - t0, 3),
                          collected=found)
                    next_full_gc = time.monotonic() + 3600
        finally:
            threading.excepthook = previous_hook
        self._shutdown(server)
        return 1 if self.failed else 0

    def _shutdown(self, server) -> None:
        event(logging.INFO, "stopping")
        self._health.enter_graceful_shutdown()
        self._stop.set()
        server.stop(grace=1.0).wait(2.0)
        self._thread.join(STOP_JOIN)
        stats = {k: v for k, v in self.stats().items() if k != "skipped"}
        if self._thread.is_alive():
            # Closing a handle it is reading would end it with a traceback ("pcap is closed"):
            # leave the handles to the process exit.
            event(logging.WARNING, "capture thread still busy at exit", seconds=STOP_JOIN)
        else:
            for cap in self.captures:
                cap.close()
        for part in self.compat:
            part.stop()
        if self.publisher is not None:
            self.publisher.stop()
            stats.update({f"redis_{k}": v for k, v in self.publisher.stats().items()})
        if self.metrics is not None:
            self.metrics.stop()
        if self.log is not None:
            self.log.close()
        event(logging.INFO, "stopped", exit_status=1 if self.failed else 0, failed=self.failed or None, **stats)

    # --- faults ---------------------------------------------------------------

    def fatal(self, part: str, exc: BaseException | str) -> None:
        """A part of the service died: say so, stop answering as healthy, and stop (exit status 1)."""
        if self.failed:
            return
        self.failed = part
        fields = {"part": part, "error": str(exc) or type(exc).__name__}
        if isinstance(exc, BaseException) and not isinstance(exc, CaptureError):
            fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
        event(logging.CRITICAL, f"{part} failed; stopping so that the supervisor restarts the service", **fields)
        if self._health is not None:
            from grpc_health.v1 import health_pb2

            for name in ("", SERVICE_NAME):
                self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._stop.set()

    def _thread_died(self, hook: threading.ExceptHookArgs) -> None:
        """Any thread's uncaught exception (a compat server's loop, ...) is fatal to the service."""
        if hook.exc_type is SystemExit:
            return
        name = hook.thread.name if hook.thread is not None else "thread"
        self.fatal(name, hook.exc_value if hook.exc_value is not None else hook.exc_type.__name__)

    def _check_parts(self) -> None:
        """The compat servers' own failure reports (their `failed` and `alive()`), and the publisher's."""
        for part in self.compat:
            name = "p0f-socket" if isinstance(part, P0fSocketServer) else "p0f-analyzer"
            if part.failed:
                self.fatal(name, part.failed)
            if not part.alive() and not self._stop.is_set():
                self.fatal(name, "its thread is gone")
        if self.publisher is not None and not self.publisher.alive() and not self._stop.is_set():
            self.fatal("redis-publisher", "its thread is gone")

    def _capture_guarded(self) -> None:
        try:
            self.capture_loop()
        except BaseException as exc:  # noqa: BLE001 - whatever ended capture, the service must not look healthy
            self.fatal("capture", exc)

    def stop(self) -> None:
        self._stop.set()
