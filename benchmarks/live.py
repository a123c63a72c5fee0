"""Helpers for the service benchmarks: SYN injection on a veth, and API servers.

`python -m benchmarks.live api SOCK N [hostile]` serves a Service whose table
holds N synthetic SYNs; `python -m benchmarks.live empty SOCK` serves grpcio with an
empty unary handler (grpcio's own floor, for comparison).
"""

from __future__ import annotations

import sys
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


if __name__ == "__main__":
    if sys.argv[1] == "api":
        serve_api(sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["hostile"])
    else:
        serve_empty(sys.argv[2])
