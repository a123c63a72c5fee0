"""Helpers for the service benchmarks: SYN injection on a veth, and API servers.

`python -m benchmarks.live api SOCK N [hostile]` serves a Service whose table
holds N synthetic SYNs; `python -m benchmarks.live empty SOCK` serves grpcio with an
empty unary handler (grpcio's own floor, for comparison).

`python -m benchmarks.live profile PCAP|veth` prints the live ingest's CPU microseconds per SYN,
in-process: next_batch buffers (from a capture file, or `veth`: what the capture benchmark sends,
65,536 sources four times over with new ISNs) through a Service's own capture path
(Service.ingest_blob), and through the object path's stages (Engine.feed_blob, Service._deliver).
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import threading
import time

from tests.helpers import raw_syns

SENDER = r"""
import socket, struct, sys, time
frames = [bytearray.fromhex(l) for l in open(sys.argv[2]).read().split()]
rate, seconds = float(sys.argv[3]), float(sys.argv[4])
epoch = int(sys.argv[5]) if len(sys.argv) > 5 else 0  # runs with another epoch send other ISNs
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
s.bind((sys.argv[1], 0))
total = int(rate * seconds)
t0 = time.perf_counter()
sent = 0
send = s.send
n = len(frames)
pack = struct.Struct("!I").pack_into
while sent < total:
    due = int((time.perf_counter() - t0) * rate) + 64
    while sent < min(due, total):
        frame = frames[sent % n]
        if sent >= n or epoch:  # a new ISN on every pass and run: never a retransmission of an earlier SYN
            pack(frame, 38, ((epoch << 6) + sent // n) << 24 & 0xFFFFFFFF | sent % n)
        send(frame)
        sent += 1
    if sent < due - 64:
        continue
    time.sleep(0.0005)
print(sent, time.perf_counter() - t0)
"""


def syn_frames(n: int, dst_ip: str) -> list[bytes]:
    """n Linux-shaped SYNs to dst_ip:25 from n distinct sources (other-host MAC: the IP stack ignores them)."""
    out = raw_syns(n, dst_ip, src_base=0x0C000000, dst_mac=b"\x02\x00\x00\x00\x00\x09")
    return out


def serve_api(sock: str, count: int, hostile: bool = False) -> None:
    """With `hostile`: limits wide enough for one client to hold 1,000 Watch streams and
    1,000 waits (the worst the default global caps allow), and 500 new SYNs/s to fill them."""
    from fingerprintd.config import Config
    from fingerprintd.server import Limits, build_server
    from fingerprintd.service import Service, tune_gc

    service = Service(Config(listen=[sock], max_wait_ms=600_000 if hostile else 5000))
    frames = syn_frames(count + (60_000 if hostile else 0), "192.0.2.25")
    now = int(time.time())
    for i in range(0, count, 512):
        service.ingest([(now, 0, f) for f in frames[i : i + 512]], 1)
    tune_gc()  # as `fingerprintd serve` does
    server, _ = build_server(service, [sock], limits=Limits(streams_per_client=1024) if hostile else None)
    server.start()
    if hostile:
        def feed() -> None:
            for i in range(count, len(frames), 50):
                service.ingest([(int(time.time()), 0, f) for f in frames[i : i + 50]], 1)
                time.sleep(0.1)

        threading.Thread(target=feed, daemon=True).start()
    print("ready", flush=True)
    server.wait_for_termination()


def serve_empty(sock: str) -> None:
    from concurrent import futures

    import grpc

    def handler(request, context):
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    generic = grpc.method_handlers_generic_handler(
        "bench.Empty", {"Call": grpc.unary_unary_rpc_method_handler(handler, lambda b: b, lambda b: b)})
    server.add_generic_rpc_handlers((generic,))
    server.add_insecure_port(sock)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def _profile_batches(source: str) -> tuple[list[tuple[bytes, bytes]], int]:
    """next_batch-like (buffer, metadata) pairs of 512 frames, and their link type."""
    from fingerprintd.engine import join_batch

    if source != "veth":
        from fingerprintd.capture import open_offline

        capture = open_offline(source, None)
        return list(capture.raw_batches()), capture.linktype
    frames = [bytearray(f) for f in syn_frames(65_536, "192.0.2.25")]
    now = int(time.time())
    out = []
    for epoch in range(1, 5):
        for i in range(0, len(frames), 512):
            batch = []
            for k, frame in enumerate(frames[i : i + 512]):
                struct.pack_into("!I", frame, 38, epoch << 24 | (i + k))  # a new ISN: not a retransmission
                batch.append((now, k, bytes(frame)))
            out.append(join_batch(batch))
    return out, 1


def profile(source: str, rounds: int = 5) -> None:
    """CPU microseconds per SYN of the live ingest (the best of `rounds`, each on a fresh Service: its table
    fills as in a live run): the capture thread's whole work (Service.ingest_blob: with the accelerator, the
    C-struct loop _replay.LiveLoop) without and with --log and a Watch stream, and the object path's stages
    (Engine.feed_blob's Observations, then Service._deliver: the pure path's, and what the compiled one was)."""
    from fingerprintd import accel
    from fingerprintd.config import Config
    from fingerprintd.service import LogFile, Service, tune_gc

    batches, linktype = _profile_batches(source)
    count = sum(len(meta) // 16 for _, meta in batches)
    log_path = os.path.join(tempfile.mkdtemp(prefix="fpd-profile-"), "p0f.log")

    def best(stage) -> float:
        times = []
        for _ in range(rounds):
            service = Service(Config(ttl_seconds=5))
            fed = stage in ("engine", "full") or stage.startswith("ingest")  # else given the observations
            observed = [] if fed else [service.engine.feed_blob(b, m, linktype) for b, m in batches]
            if stage in ("log", "full", "ingest+log", "ingest+log+watch"):
                service.log = LogFile(log_path)
            watch = service.subscribe() if stage == "ingest+log+watch" else None
            tune_gc()  # as `serve` does
            t0 = time.process_time()
            if stage.startswith("ingest"):
                for blob, meta in batches:
                    service.ingest_blob(blob, meta, linktype)
                    if watch is not None:
                        watch.queue.clear()  # a client that keeps up
            elif stage == "engine":
                for blob, meta in batches:
                    service.engine.feed_blob(blob, meta, linktype)
            elif stage == "full":
                for blob, meta in batches:
                    service._deliver(service.engine.feed_blob(blob, meta, linktype))
            elif stage == "table":
                for obs in observed:
                    service.hosts.add_batch(obs)
            else:
                for obs in observed:
                    service._deliver(obs)
            times.append(time.process_time() - t0)
            if service.log is not None:
                service.log.close()
                os.truncate(log_path, 0)
        return min(times) / count * 1e6

    print(f"{accel.name()}; {count} frames in {len(batches)} batches from {source}")
    for stage, what in (("ingest", "Service.ingest_blob without --log (the capture thread's work)"),
                        ("ingest+log", "Service.ingest_blob with --log"),
                        ("ingest+log+watch", "Service.ingest_blob with --log and a Watch stream"),
                        ("engine", "object path: Engine.feed_blob (parse, books, match, counters)"),
                        ("table", "object path: HostTable.add_batch"),
                        ("deliver", "object path: Service._deliver without --log"),
                        ("log", "object path: Service._deliver with --log"),
                        ("full", "object path: feed_blob + _deliver with --log")):
        print(f"{what:64s} {best(stage):6.2f} us/SYN", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "api":
        serve_api(sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["hostile"])
    elif sys.argv[1] == "profile":
        profile(sys.argv[2])
    else:
        serve_empty(sys.argv[2])
