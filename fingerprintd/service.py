"""`fingerprintd serve`: live capture -> engine -> host table -> gRPC answers.

Capture runs in its own thread (a slow query never stalls it); the gRPC
server answers from the host table in a thread pool; the main thread waits
for signals: SIGHUP reloads the signatures, the mail classes and the policy
(a bad file is reported with file:line and the old ones stay in force),
SIGTERM and SIGINT stop cleanly.  Logs are JSON lines on stderr.
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

from fingerprintd.capture import CaptureError, Live, open_live, ports_filter
from fingerprintd.classes import ClassesError, ClassMap, load_classes
from fingerprintd.compat import AnalyzerServer, P0fSocketServer
from fingerprintd.config import Config
from fingerprintd.data import default_classes, default_policy, default_signatures
from fingerprintd.engine import Engine, Observation
from fingerprintd.flows import RecentSyns
from fingerprintd.hosts import HostTable
from fingerprintd.matcher import Matcher
from fingerprintd.policy import Policy, PolicyError, load_policy
from fingerprintd.report import p0f_log_formatter
from fingerprintd.server import build_server
from fingerprintd.signatures import Database, SignatureError, load

log = logging.getLogger("fingerprintd")
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


class Service:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.db_path = cfg.signatures or default_signatures()
        self.policy_path = cfg.policy or default_policy()
        self.classes_path = cfg.classes or default_classes()
        db, classes, self.policy = self._load_files()  # errors propagate: startup fails with file:line
        self.engine = Engine(Matcher(db, p0f_bugs=cfg.p0f_bugs, classes=classes), ports=cfg.ports,
                             p0f_bugs=cfg.p0f_bugs, flows=RecentSyns())
        self.hosts = HostTable(cfg.max_connections, cfg.max_hosts, cfg.ttl_seconds)
        self.max_batch = cfg.max_batch
        self.max_wait_ms = cfg.max_wait_ms
        self.captures: list[Live] = []
        self.started = time.time()
        self.reloads = 0
        self.watch_drops = 0
        self._watchers: set[queue.Queue] = set()
        self._watch_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False
        self._log = None
        self._log_format = p0f_log_formatter()
        self._compat: list = []

    # --- capture ----------------------------------------------------------

    def open_compat(self) -> None:
        """The p0f API socket, the p0f-analyzer UDP port and the p0f log, as configured."""
        cfg = self.cfg
        if cfg.log_file:
            self._log = open(cfg.log_file, "a", encoding="utf-8")
        if cfg.p0f_socket:
            owner = None
            if cfg.p0f_socket_owner:
                user, _, group = cfg.p0f_socket_owner.partition(":")
                pw = pwd.getpwnam(user)
                owner = (pw.pw_uid, grp.getgrnam(group).gr_gid if group else pw.pw_gid)
            self._compat.append(P0fSocketServer(cfg.p0f_socket, self.hosts, int(cfg.p0f_socket_mode, 8), owner))
            event(logging.INFO, "p0f API socket", path=cfg.p0f_socket, mode=cfg.p0f_socket_mode)
        if cfg.analyzer_udp:
            host, _, port = cfg.analyzer_udp.rpartition(":")
            self._compat.append(AnalyzerServer(host.strip("[]"), int(port), self.hosts, cfg.analyzer_allow))
            event(logging.INFO, "p0f-analyzer UDP", listen=cfg.analyzer_udp, allow=cfg.analyzer_allow)
        for server in self._compat:
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
        while not self._stop.is_set():
            ready, _, _ = select.select(list(caps), [], [], 0.2)
            for fd in ready:
                cap = caps[fd]
                while True:
                    batch = cap.read_batch()
                    if not batch:
                        break
                    self.ingest(batch, cap.linktype)

    def ingest(self, batch: list[tuple[int, int, bytes]], linktype: int) -> None:
        """Captured frames -> the host table, the Watch streams and the log."""
        observations = self.engine.feed_batch(batch, linktype)
        for obs in observations:
            self.hosts.add(obs)
            self._publish(obs)
        if self._log is not None and observations:
            self._log.write("".join(self._log_format(obs) for obs in observations))
            self._log.flush()

    def _publish(self, obs: Observation) -> None:
        if not self._watchers:
            return
        with self._watch_lock:
            for q in self._watchers:
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
        return (load(self.db_path, p0f_bugs=self.cfg.p0f_bugs), load_classes(self.classes_path),
                load_policy(self.policy_path))

    def reload(self) -> bool:
        """Load the signatures, mail classes and policy again; on any error keep all the old ones."""
        try:
            db, classes, policy = self._load_files()
        except (SignatureError, ClassesError, PolicyError, OSError) as exc:
            event(logging.ERROR, "reload failed, keeping the previous signatures, classes and policy",
                  error=str(exc))
            return False
        # One reference swap each: readers see the old or the new, whole.
        self.engine.matcher = Matcher(db, p0f_bugs=self.cfg.p0f_bugs, classes=classes)
        self.policy = policy
        self.reloads += 1
        event(logging.INFO, "reloaded", signatures=self.db_path, signature_count=db.sig_count,
              classes=self.classes_path, policy=self.policy_path, rules=len(policy.rules))
        return True

    def stats(self) -> dict:
        recv = drop = ifdrop = 0
        for cap in self.captures:
            r, d, i = cap.stats()
            recv, drop, ifdrop = recv + r, drop + d, ifdrop + i
        e = self.engine
        sizes = self.hosts.sizes()
        cache = e.matcher.cache_stats()
        return {
            "packets": e.packets, "fingerprinted": sum(e.fingerprinted.values()), "skipped": dict(e.skipped),
            "kernel_received": recv, "kernel_dropped": drop, "interface_dropped": ifdrop,
            "connections": sizes["connections"], "hosts": sizes["hosts"],
            "match_cache_hits": cache["hits"], "match_cache_misses": cache["misses"],
            "lookups": self.hosts.lookups, "lookup_hits": self.hosts.hits,
            "uptime_seconds": time.time() - self.started, "reloads": self.reloads,
            "syn_mail_classes": dict(e.syn_classes),
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

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT. Returns the exit status."""
        tune_gc()
        self.open_captures()
        self.open_compat()
        tls = None
        if self.cfg.tls_cert:
            with open(self.cfg.tls_key, "rb") as k, open(self.cfg.tls_cert, "rb") as c:
                tls = (k.read(), c.read())
        server, health = build_server(self, self.cfg.listen, self.cfg.token, tls)
        server.start()
        for addr in self.cfg.listen:
            if addr.startswith("unix:"):
                os.chmod(addr[5:], 0o660)
        if self.cfg.user:
            self.drop_privileges(self.cfg.user)
        # The handlers only queue the signal: Event.set() there could deadlock on the
        # lock the interrupted main thread already holds inside Event.wait() (seen: a
        # SIGTERM that never stopped the service). Installed before "serving" is
        # logged, so whoever waits for that line may signal at once.
        pending: list[int] = []
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, _frame: pending.append(signum))
        event(logging.INFO, "serving", listen=self.cfg.listen, signatures=self.db_path, policy=self.policy_path)
        self._thread = threading.Thread(target=self._capture_guarded, name="capture", daemon=True)
        self._thread.start()
        next_full_gc = time.monotonic() + 3600
        while not self._stop.wait(0.2):
            got = set()
            while pending:
                got.add(pending.pop())
            if got - {signal.SIGHUP}:
                break
            if got:
                self.reload()  # once for any number of SIGHUPs since the last look
            if time.monotonic() > next_full_gc:
                t0 = time.monotonic()
                found = gc.collect()
                event(logging.INFO, "full garbage collection", seconds=round(time.monotonic() - t0, 3),
                      collected=found)
                next_full_gc = time.monotonic() + 3600
        event(logging.INFO, "stopping")
        health.enter_graceful_shutdown()
        server.stop(grace=1.0).wait(2.0)
        self._thread.join(2.0)
        event(logging.INFO, "stopped", **{k: v for k, v in self.stats().items() if k != "skipped"})
        for cap in self.captures:
            cap.close()
        for server in self._compat:
            server.stop()
        if self._log is not None:
            self._log.close()
        return 1 if self._failed else 0

    def _capture_guarded(self) -> None:
        try:
            self.capture_loop()
        except CaptureError as exc:
            event(logging.ERROR, "capture failed", error=str(exc))
            self._failed = True
            self._stop.set()

    def stop(self) -> None:
        self._stop.set()
