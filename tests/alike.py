"""What the differential tests (compiled against pure) feed both implementations, and how they read the
results: capture batches, crafted host series, random and mutated frames, and the host table's answers as
comparable tuples."""

from __future__ import annotations

import random
import struct
from dataclasses import replace
from pathlib import Path

from hypothesis import strategies as st
from scapy.all import TCP  # type: ignore[attr-defined]

from fingerprintd import capture
from fingerprintd.signatures import load
from tests.craft import Shape, frame, shape_from_sig


def read_batches(path: Path) -> tuple[list, int]:
    cap = capture.open_offline(str(path), None)
    return list(cap.batches()), cap.linktype


def host_series(db_path: Path, seed: int) -> list:
    """Per-host SYN series that set off host change, ip sharing and uptime records: each client switches
    between a few of the database's stacks, shifts its TTL and MSS, and stamps its SYNs from one clock
    (sometimes from no clock at all), with whole connections (SYN+ACK, ACKs with timestamps) now and then."""
    db = load(db_path)
    rng = random.Random(seed)
    sigs = [sig for sig in db.request if not sig.label.is_app and sig.mss is not None and sig.ver in (None, 4)]
    packets, t = [], 1_700_000_000.0
    for n in range(80):
        client = f"10.9.{n >> 8}.{n & 255}"
        base = [shape_from_sig(sig, rng, ver=4) for sig in rng.sample(sigs, 3)]
        hz = rng.choice((1000, 250, 100))
        port = rng.randrange(20000, 60000)
        for _ in range(rng.randrange(4, 16)):
            shape = base[0] if rng.random() < 0.6 else rng.choice(base)
            if rng.random() < 0.2:
                shape = replace(shape, ttl=max(1, shape.ttl - rng.choice((1, 2, 9))), mss=rng.choice((1460, 1380)))
            t += rng.choice((0.005, 0.05, 1.0, 30.0, 700.0))
            ts1 = int(t * hz) & 0xFFFFFFFF if rng.random() < 0.8 else rng.randrange(1 << 32)
            shape = replace(shape, ts1=ts1)
            port = min(max(port + rng.randrange(-50, 40), 1025), 65535)
            seq = rng.randrange(1, 1 << 32)
            syn = frame(shape, client, "192.0.2.25", port, 25, rng, seq=seq)
            syn.time = t
            packets.append(syn)
            if rng.random() < 0.3:  # the connection: SYN+ACK, then the client's ACK with a later timestamp
                synack = frame(replace(shape, synack=True, ts1=rng.randrange(1 << 32)), "192.0.2.25", client, 25,
                               port, rng, seq=rng.randrange(1, 1 << 32), ack=seq + 1)
                synack.time = t + 0.001
                ack = frame(replace(shape, ts1=(ts1 + hz) & 0xFFFFFFFF), client, "192.0.2.25", port, 25, rng,
                            seq=seq + 1, ack=synack[TCP].seq + 1)
                ack[TCP].flags = "A"
                ack.time = t + 1.0
                packets += [synack, ack]
    packets.sort(key=lambda p: p.time)
    return packets


# --- random and mutated batches --------------------------------------------------------------------------

_RNG = random.Random(14)
_SHAPES = [Shape(), Shape(ver=6, quirks=frozenset()), Shape(ttl=117, mss=1440, win=64240, wscale=8,
           layout=("mss", "nop", "ws", "nop", "nop", "sok"), ts1=0), Shape(synack=True),
           Shape(extra={"vlans": (7,)}), Shape(payload=b"GET / HTTP/1.0\r\n")]
_CLIENTS = ["10.1.0.1", "10.1.0.2", "2001:db8::7"]


def _seed_frames() -> list[bytes]:
    out = []
    for shape in _SHAPES:
        for client in _CLIENTS:
            if (":" in client) != (shape.ver == 6):
                continue
            server = "192.0.2.25" if shape.ver == 4 else "2001:db8::25"
            kw = {"vlans": shape.extra["vlans"]} if "vlans" in shape.extra else {}
            out.append(bytes(frame(shape, client, server, 40000, 25, _RNG, seq=1000, **kw)))
    # The same connections' ACK, FIN and RST (flow books, uptime from any packet of a tracked flow).
    for i, flags in enumerate((0x10, 0x11, 0x04, 0x18)):
        data = bytearray(out[i % 2])
        tcp = 14 + (data[14] & 0x0F) * 4 if data[12:14] == b"\x08\x00" else 54
        data[tcp + 13] = flags
        struct.pack_into("!I", data, tcp + 4, 1001)
        out.append(bytes(data))
    return out


SEEDS = _seed_frames()


@st.composite
def frames(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "grow", "seq", "port"]))
        if op == "flip":
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif op == "set":
            # Option kinds and lengths, the window scale's limit, flag bytes, IP version nibbles.
            data[draw(st.integers(0, len(data) - 1))] = draw(st.sampled_from(
                [0, 1, 2, 3, 4, 5, 8, 10, 14, 15, 0x12, 0x40, 0x45, 0x60, 0xFF]))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "grow":
            data += draw(st.binary(max_size=32))
        elif op in ("seq", "port") and len(data) > 60:
            tcp = 34 if data[12:14] == b"\x08\x00" and data[14] == 0x45 else 54
            at = tcp + 4 if op == "seq" else tcp
            struct.pack_into("!H", data, at, draw(st.integers(0, 3)))
        if not data:
            break
    return bytes(data)


@st.composite
def batches(draw):
    # Capture times from the epoch (JSON writes times under 1 s in exponent form) to near pcap's 32-bit end,
    # microseconds of every size the metadata can carry.
    t = draw(st.sampled_from([0, 1_700_000_000, 4_290_000_000]))
    usecs = st.one_of(st.integers(0, 999_999), st.sampled_from([0, 12, 1_000_000, 4_294_967_295]))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for data in draw(st.lists(st.one_of(frames(), st.binary(max_size=120)), max_size=40)):
            t += draw(st.sampled_from([0, 0, 0, 1, 31, 7300]))
            batch.append((t, draw(usecs), data))
        out.append(batch)
    return out


def syn_fields(o) -> tuple | None:
    if o is None:
        return None
    return (o.ts, o.pkt.src, o.sport, o.dst, o.dport, o.ttl, o.ip_ver, o.mod, o.linktype, o.fp, o.nat, o.uptime,
            o.client, o.server, o.to_server)


def host_fields(h) -> tuple | None:
    if h is None:
        return None
    return (h.first_seen, h.last_seen, h.count, h.last_distance, list(h.signatures), list(h.os_names),
            h.last_change, h.changes, h.host_changed, syn_fields(h.latest), syn_fields(h.last_match), h.last_ip_sharing,
            h.last_host_change, h.uptime_minutes, h.uptime_modulo_days)
