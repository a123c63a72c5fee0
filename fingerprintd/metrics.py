"""Prometheus metrics for `serve --metrics HOST:PORT`.

One collector reads every component's own counters at scrape time (nothing
is counted twice, and nothing costs the capture thread more than the plain
integer it already keeps).  It lives in a registry of its own, so several
services in one process (the tests) do not clash in the default registry.
Parts that may be absent (the p0f socket, the analyzer, the gRPC server's
latency histogram) are collected when present.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

P = "fingerprintd_"


def _counter(name: str, doc: str, labels: list[str] | None = None, value: float | None = None):
    return CounterMetricFamily(P + name, doc, labels=labels, value=value)


def _gauge(name: str, doc: str, labels: list[str] | None = None, value: float | None = None):
    return GaugeMetricFamily(P + name, doc, labels=labels, value=value)


def _labelled(metric, values: dict) -> object:
    for key, n in sorted(values.items()):
        metric.add_metric([str(key)], n)
    return metric


class ServiceCollector(Collector):
    """Everything a running Service counts, read when Prometheus scrapes."""

    def __init__(self, service) -> None:
        self.s = service

    def collect(self) -> Iterator[Metric]:
        s = self.s
        e = s.engine.summary()  # one snapshot between two batches: the counters add up
        yield _counter("packets", "Frames the capture handed to the engine", value=e["packets"])
        yield _labelled(_counter("observations", "Fingerprinted packets by kind (syn, syn+ack, ...)", ["kind"]),
                        e["fingerprinted"])
        yield _labelled(_counter("skipped", "Frames not fingerprinted, by reason", ["reason"]), e["skipped"])
        yield _labelled(_counter("syns", "Fingerprinted SYNs by the sender's mail class", ["mail_class"]),
                        e["syn_mail_classes"])
        yield _labelled(_counter("syn_verdicts", "Fingerprinted SYNs by the action the policy gives their stack "
                                 "(trusted networks aside)", ["action"]), s.syn_actions)
        recv = _counter("kernel_received", "Packets the kernel filter passed, per interface", ["interface"])
        drop = _counter("kernel_dropped", "Packets the kernel dropped (ring full), per interface", ["interface"])
        ifdrop = _counter("interface_dropped", "Packets the interface dropped, per interface", ["interface"])
        for cap in s.captures:
            r, d, i = cap.stats()
            recv.add_metric([cap.interface], r)
            drop.add_metric([cap.interface], d)
            ifdrop.add_metric([cap.interface], i)
        yield from (recv, drop, ifdrop)
        sizes = s.hosts.sizes()
        yield _labelled(_gauge("table_entries", "Entries in the host table", ["table"]), sizes)
        yield _labelled(_gauge("table_capacity", "Bound of each host table", ["table"]),
                        {"connections": s.cfg.max_connections, "hosts": s.cfg.max_hosts})
        cache = e["cache"]
        yield _counter("match_cache_hits", "Fingerprints answered from the per-stack memo", value=cache["hits"])
        yield _counter("match_cache_misses", "Fingerprints matched against the database", value=cache["misses"])
        yield _gauge("match_cache_entries", "Stacks in the memo", value=cache["size"])
        # The table counts only lookups: the service's own reads (the Redis publisher's) go through hosts.host.
        yield _counter("lookups", "Host-table lookups (gRPC, p0f socket, analyzer)", value=s.hosts.lookups)
        yield _counter("lookup_hits", "Lookups that found a SYN or host", value=s.hosts.hits)
        yield _counter("watch_drops", "Observations a slow Watch stream did not get", value=s.watch_drops)
        yield _counter("reloads", "Successful SIGHUP reloads", value=s.reloads)
        yield _counter("reload_failures", "SIGHUP reloads refused (a bad file; the old ones stay)",
                       value=s.reload_failures)
        yield _gauge("start_time_seconds", "When the service started (Unix time)", value=s.started)
        yield _gauge("up", "1 while serving, 0 once a fatal error was seen", value=0 if s.failed else 1)
        if s.log is not None:
            yield _counter("log_write_errors", "Failed writes to the --log file (lines lost, capture goes on)",
                           value=s.log.errors)
            yield _counter("log_lines_lost", "Observations not written to the --log file", value=s.log.lines_lost)
            yield _counter("log_reopens", "Reopens of the --log file (SIGHUP)", value=s.log.reopens)
        yield from self._compat()
        yield from self._redis()
        yield from self._server_metrics()

    def _redis(self) -> Iterator[Metric]:
        """The Redis publisher's and reader's counters (--redis)."""
        pub = getattr(self.s, "publisher", None)
        if pub is not None:
            st = pub.stats()
            yield _counter("redis_published", "Observations written to Redis", value=st["published"])
            yield _counter("redis_dropped", "Observations dropped: the Redis queue was full", value=st["dropped"])
            yield _counter("redis_rejected", "Writes Redis refused (ACL, maxmemory)", value=st["rejected"])
            yield _counter("redis_errors", "Batch writes that failed (Redis down or slow; retried)", value=st["errors"])
            yield _counter("redis_outages", "Episodes of Redis being unreachable or slow", value=st["outages"])
            yield _counter("redis_batches", "Pipelined batch writes to Redis", value=st["batches"])
            yield _gauge("redis_queued", "Observations waiting for Redis", value=st["queued"])
            yield _gauge("redis_up", "1 while the last write to Redis worked", value=st["up"])
        reader = getattr(self.s, "reader", None)
        if reader is not None:
            st = reader.stats()
            yield _counter("redis_lookups", "Lookups that went to Redis after a local miss", value=st["lookups"])
            yield _counter("redis_lookup_hits", "Redis lookups that found the SYN", value=st["hits"])
            yield _counter("redis_lookup_errors", "Redis lookups that failed or timed out", value=st["errors"])
            yield _counter("redis_lookup_skipped", "Lookups that skipped Redis after a recent failure",
                           value=st["skipped"])
            yield _counter("redis_bad_records", "Records in Redis that could not be decoded", value=st["bad_records"])

    def _compat(self) -> Iterator[Metric]:
        """The p0f socket's and the analyzer's counters (their stats())."""
        for server in self.s.compat:
            part = "p0f_socket" if type(server).__name__.startswith("P0f") else "analyzer"
            for key, value in sorted(server.stats().items()):
                if key == "connections":
                    yield _gauge(f"{part}_connections", f"Open {part} connections", value=value)
                elif isinstance(value, int | float):
                    yield _counter(f"{part}_{key}", f"{part}: {key.replace('_', ' ')}", value=value)

    def _server_metrics(self) -> Iterator[Metric]:
        """Metrics the API server keeps itself (its Lookup latency histogram, made with registry=None, and its
        refusal and Watch-drop counts)."""
        seen = set()
        for owner in (self.s.grpc_server, getattr(self.s.grpc_server, "servicer", None)):
            for value in vars(owner).values() if owner is not None and hasattr(owner, "__dict__") else ():
                if isinstance(value, MetricWrapperBase) and id(value) not in seen:
                    seen.add(id(value))
                    yield from value.collect()
        servicer = getattr(self.s.grpc_server, "servicer", None)
        if hasattr(servicer, "stats"):  # its own counters, kept once (Servicer.counters)
            st = servicer.stats()
            yield _labelled(_counter("grpc_refused", "Waits and Watch streams refused (RESOURCE_EXHAUSTED), by the "
                                     "limit they were over", ["limit"]),
                            {k.removeprefix("refused_"): v for k, v in st.items() if k.startswith("refused_")})
            yield _counter("watch_stream_drops", "Observations a Watch stream lost: its reader did not keep up",
                           value=st["watch_drops"])


class MetricsServer:
    """The /metrics HTTP endpoint in its own thread."""

    def __init__(self, address: str, service) -> None:
        from fingerprintd.config import split_host_port

        host, port = split_host_port(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(service))
        self.httpd, self.thread = start_http_server(port, host, registry=self.registry)
        self.port = self.httpd.server_address[1]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(2)
