"""What the benchmarks share: timing concurrent callers, and handing a run's numbers to pytest-benchmark."""

from __future__ import annotations

import random
import threading
import time


def measure(call, clients: int, seconds: float = 3.0) -> dict:
    """Calls/s and p50/p99 latency of `call(rng)` from `clients` threads, each calling in a loop for `seconds`."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine = []
        while time.perf_counter() < stop:
            t = time.perf_counter()
            call(rng)
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    call(random.Random(0))  # warm the channel
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"calls_per_s": round(len(lat) / wall), "p50_ms": round(lat[len(lat) // 2] * 1e3, 3),
            "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 3)}


def publish(benchmark, results: dict) -> None:
    """Record `results` in the benchmark's extra_info and print them, one `key: value` a line.

    The benchmark times its own work inside; pytest-benchmark is given one round of nothing.
    """
    benchmark.extra_info.update(results)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for key, value in results.items():
        print(f"\n{key}: {value}", end="")
    print()
