"""Child process for benchmarks/test_memory.py: a spoofed SYN flood through the service's own path.

    python -m benchmarks.flood PCAP [--floor] [--old-hosts FILE]

Frames come from the capture file in batches (as libpcap hands them to the
service) and go through `Service.ingest`: the service's engine (its flow
books, the bundled database and classes) and its host table at the default
bounds.  A second thread keeps looking up sources already added, as mail
filters would, and times each lookup.  Prints one JSON line: peak RSS, RSS
before the flood, table sizes, lookup percentiles during and after.

`--floor` measures the structure alone: an OrderedDict holding as many int
keys as the table holds connections and hosts, each mapped to one shared
object; what no per-entry representation can go below.  `--old-hosts` swaps
in another hosts.py (e.g. `git show REV:fingerprintd/hosts.py`), for a
before/after figure.
"""

from __future__ import annotations

import importlib.util
import json
import random
import resource
import sys
import threading
import time
from collections import OrderedDict


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def floor(entries: int) -> dict:
    before = _rss_mb()
    shared = object()
    conns: OrderedDict = OrderedDict()
    hosts: OrderedDict = OrderedDict()
    for i in range(entries):
        conns[(i << 16) | 25] = shared
        hosts[i + (1 << 40)] = shared
    return {"floor": True, "entries": entries, "rss_before_mb": round(before, 1), "peak_rss_mb": round(_peak_mb(), 1),
            "bytes_per_source": round((_rss_mb() - before) * 2**20 / entries)}


def flood(pcap: str, old_hosts: str | None) -> dict:
    from fingerprintd import service as service_mod
    from fingerprintd.capture import open_offline
    from fingerprintd.config import Config

    if old_hosts:
        spec = importlib.util.spec_from_file_location("old_hosts", old_hosts)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        service_mod.host_table = mod.HostTable  # type: ignore[attr-defined]  # (one with add_batch)
    svc = service_mod.Service(Config())
    service_mod.tune_gc()
    hosts = svc.hosts
    added: list[tuple[bytes, int]] = []  # a sample of what went in, for the lookups
    during: list[float] = []
    stop = threading.Event()

    def looker() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            if not added:
                time.sleep(0.001)
                continue
            ip, port = added[rng.randrange(len(added))]
            t = time.perf_counter()
            hosts.lookup(ip, port)
            during.append(time.perf_counter() - t)
            time.sleep(0.0005)  # a busy MX: ~2,000 lookups/s

    thread = threading.Thread(target=looker, daemon=True)
    before = _rss_mb()
    thread.start()
    cap = open_offline(pcap, None)
    frames = 0
    t0 = time.perf_counter()
    for batch in cap.batches():
        svc.ingest(batch, cap.linktype)
        frames += len(batch)
        if frames % 10_000 < len(batch):
            obs, _ = hosts.lookup(_src(batch[-1][2]), 0)
            if obs is not None:
                added.append((obs.pkt.src, obs.pkt.sport))
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    after = []
    rng = random.Random(2)
    recent = added[-len(added) // 4:]  # the oldest were evicted by the bound
    for _ in range(20_000):
        ip, port = recent[rng.randrange(len(recent))]
        t = time.perf_counter()
        found, _ = hosts.lookup(ip, port)
        after.append(time.perf_counter() - t)
    sizes = hosts.sizes()
    stats = svc.stats()
    rss = _rss_mb()
    return {
        "frames": frames, "seconds": round(seconds, 1), "syn_per_s": round(frames / seconds),
        "rss_before_mb": round(before, 1), "rss_after_mb": round(rss, 1), "peak_rss_mb": round(_peak_mb(), 1),
        "connections": sizes["connections"], "hosts": sizes["hosts"],
        "bytes_per_source": round((rss - before) * 2**20 / max(1, sizes["connections"])),
        "lookups_during": len(during),
        "lookup_during_p50_ms": round(_pct(during, 0.5) * 1e3, 3),
        "lookup_during_p99_ms": round(_pct(during, 0.99) * 1e3, 3),
        "lookup_during_max_ms": round(max(during, default=0) * 1e3, 3),
        "lookup_after_p50_ms": round(_pct(after, 0.5) * 1e3, 3),
        "lookup_after_p99_ms": round(_pct(after, 0.99) * 1e3, 3),
        "found_after": found is not None,
        "packets": stats["packets"], "fingerprinted": stats["fingerprinted"], "skipped": stats["skipped"],
    }


def _src(frame: bytes) -> bytes:
    """The source address of an Ethernet frame (IPv4 or IPv6)."""
    return frame[26:30] if frame[12:14] == b"\x08\x00" else frame[22:38]


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--floor":
        print(json.dumps(floor(int(args[1]))))
    else:
        old = args[args.index("--old-hosts") + 1] if "--old-hosts" in args else None
        print(json.dumps(flood(args[0], old)))
