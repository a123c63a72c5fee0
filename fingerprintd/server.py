"""The gRPC API (fingerprintd.v1.Fingerprint), plus health and reflection.

A thin edge: requests are validated here (INVALID_ARGUMENT with a message),
answers come from the host table and the policy.
"""

from __future__ import annotations

import queue
import re
import socket
import time
from concurrent import futures
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fingerprintd.classes import MAIL_CLASSES
from fingerprintd.engine import Observation
from fingerprintd.hosts import AddressError, HostRecord, HostTable, normalize_ip
from fingerprintd.matcher import Fingerprint, PerFingerprint
from fingerprintd.policy import Policy
from fingerprintd.unixsock import remove_stale_socket
from fingerprintd.v1 import fingerprintd_pb2 as pb
from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Fingerprint"].full_name


class Backend(Protocol):
    """What the API needs from the running service."""

    hosts: HostTable
    policy: Policy
    max_batch: int
    max_wait_ms: int

    def subscribe(self) -> queue.Queue: ...

    def unsubscribe(self, q: queue.Queue) -> None: ...

    def stats(self) -> dict: ...


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
MAIL_CLASS_PB = {name: pb.MailClass.Value(f"MAIL_CLASS_{name.upper()}") for name in MAIL_CLASSES}


def _ip(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def observation_pb(obs: Observation) -> pb.Observation:
    pkt = obs.pkt
    msg = pb.Observation(client_ip=_ip(pkt.src), client_port=pkt.sport, server_ip=_ip(pkt.dst),
                         server_port=pkt.dport, time=pkt.ts, ip_version=pkt.ip_ver, ttl=pkt.ttl)
    msg.MergeFrom(_fp_part(obs.fp))
    return msg


def host_pb(host: HostRecord) -> pb.Host:
    return pb.Host(
        first_seen=host.first_seen, last_seen=host.last_seen, seen_count=host.count,
        host_changed=host.host_changed, last_change=host.last_change,
        distinct_signatures=len(host.signatures), last_distance=host.last_distance, os_names=host.os_names,
    )


class Servicer(pb_grpc.FingerprintServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    def _query(self, req: pb.LookupRequest, context) -> tuple[bytes, int, float]:
        try:
            ip = normalize_ip(req.ip)
        except AddressError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if req.port > 65535:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"port out of range 0..65535: {req.port}")
        if req.wait_ms > self.b.max_wait_ms:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"wait_ms {req.wait_ms} is over the limit of {self.b.max_wait_ms}")
        return ip, req.port, req.wait_ms / 1000

    def _answer(self, ip: bytes, obs: Observation | None, host: HostRecord | None) -> pb.LookupResponse:
        if obs is None:
            return pb.LookupResponse(found=False, host=host_pb(host) if host else None)
        v = self.b.policy.verdict(obs.fp, ip)
        return pb.LookupResponse(
            found=True, observation=observation_pb(obs), host=host_pb(host) if host else None,
            verdict=pb.Verdict(score=v.score, action=v.action, rules=v.rules, header=v.header, trusted=v.trusted,
                               mail_class=MAIL_CLASS_PB[obs.fp.mail_class], reply=v.reply),
        )

    def Lookup(self, request, context):  # noqa: N802 (gRPC method names)
        ip, port, wait = self._query(request, context)
        obs, host = self.b.hosts.lookup(ip, port, wait)
        return self._answer(ip, obs, host)

    def LookupBatch(self, request, context):  # noqa: N802
        if len(request.queries) > self.b.max_batch:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"batch of {len(request.queries)} is over the limit of {self.b.max_batch}")
        queries = [self._query(q, context) for q in request.queries]
        found = [self.b.hosts.lookup(ip, port, 0.0) for ip, port, _ in queries]
        # Then wait, together, for the ones not captured yet.
        wait = max((w for _, _, w in queries), default=0.0)
        if wait and any(obs is None for obs, _ in found):
            deadline = time.monotonic() + wait
            for i, ((ip, port, w), (obs, _)) in enumerate(zip(queries, found, strict=True)):
                if obs is None and w:
                    found[i] = self.b.hosts.lookup(ip, port, max(0.0, min(w, deadline - time.monotonic())))
        return pb.LookupBatchResponse(
            results=[self._answer(ip, obs, host) for (ip, _, _), (obs, host) in zip(queries, found, strict=True)]
        )

    def Watch(self, request, context):  # noqa: N802
        try:
            name_rx = re.compile(request.os_name_regex) if request.os_name_regex else None
        except re.error as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad os_name_regex: {exc}")
        ports = set(request.ports)
        wanted = set(request.mail_classes)
        if bad := wanted - set(MAIL_CLASS_PB.values()):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"mail_classes: not a mail class: {', '.join(map(str, sorted(bad)))}")
        q = self.b.subscribe()
        try:
            while context.is_active():
                try:
                    obs = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                label = obs.fp.label
                if request.unknown_only and label is not None:
                    continue
                if name_rx and not (label and name_rx.search(label.name)):
                    continue
                if ports and obs.server[1] not in ports:
                    continue
                if wanted and MAIL_CLASS_PB[obs.fp.mail_class] not in wanted:
                    continue
                yield observation_pb(obs)
        finally:
            self.b.unsubscribe(q)

    def Stats(self, request, context):  # noqa: N802
        return pb.StatsResponse(**self.b.stats())


class TokenCheck(grpc.ServerInterceptor):
    """A shared secret for remote filters: `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

        self.deny = grpc.unary_unary_rpc_method_handler(deny)
        self.deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return continuation(details)  # health and reflection stay open
        if dict(details.invocation_metadata).get("authorization") == self.expected:
            return continuation(details)
        return self.deny_stream if details.method.endswith("/Watch") else self.deny


def build_server(backend: Backend, listen: list[str], token: str = "", tls: tuple[bytes, bytes] | None = None,
                 workers: int = 16) -> tuple[grpc.Server, health.HealthServicer]:
    """A started-ready server bound to `listen` (HOST:PORT or unix:PATH)."""
    interceptors = [TokenCheck(token)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=interceptors,
                         options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_FingerprintServicer_to_server(Servicer(backend), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    creds = grpc.ssl_server_credentials([(tls[0], tls[1])]) if tls else None
    for addr in listen:
        if addr.startswith("unix:"):
            remove_stale_socket(addr[5:])
        try:
            bound = server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
        except RuntimeError:  # grpcio raises this when bind() fails
            bound = 0
        if not bound and not addr.startswith("unix:"):
            raise OSError(f"cannot listen on {addr} (address in use, or not a local address)")
    return server, health_servicer
