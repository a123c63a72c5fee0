"""How a SYN and an address's history travel between sensors: compact bytes, fingerprinted again on arrival.

Pure (no I/O): store.py writes these records to Redis and reads them back.

A SYN travels as the fields its fingerprint is made of (the packet's
`shape`) plus time, ports and server address, and p0f's host records when it
set any off: 40-odd bytes.  The reader fingerprints it again with its own
database (the matcher's memo makes that a dict look-up), so every host's
answers carry its own signatures and policy.  An address's history is what
the sensor's table keeps (counts, times, OS names, p0f's records) with its
latest SYN; the SYN p0f's API reports, when it is another, travels as its
label only (the table may keep SYNs without their packet fields).
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from fingerprintd.engine import Observation
from fingerprintd.hosts import HostRecord, syn_of
from fingerprintd.matcher import Matcher
from fingerprintd.nat import NatRecord, Uptime
from fingerprintd.packet import Packet
from fingerprintd.signatures import Label

KEY_PREFIX = b"fpd:"  # every key fingerprintd writes, except rspamd's (an ACL can hold a client to it)
MEMO_MAX = 16384

# A SYN's fields: its time and ports, then its stack (memoized by shape), then the server address.
_HEAD = struct.Struct("!dHH")  # ts, sport, dport
_STACK = struct.Struct("!BBBHIBHHBBHHB")  # ver|flags, ttl, tos, ip_opt_len, quirks, tcp_type, win, mss, wscale,
#                                            eol_pad, tot_hdr, linktype, layout length; then the layout bytes
_F_TS1, _F_PAYLOAD, _F_SENDSYN = 0x10, 0x20, 0x40
_UPTIME = struct.Struct("!IHf")  # an uptime record: minutes, modulo days, clock Hz
_HOST = struct.Struct("!ddIhHdBBddIH")  # first, last, count, distance, changes, last OS change, signatures,
#                                         os names; p0f's last ip sharing, last host change, uptime minutes, days
_MATCH_NONE, _MATCH_LATEST, _MATCH_OWN = 0, 1, 2


def _clamp(value: int, low: int, high: int) -> int:
    return low if value < low else high if value > high else value


class Codec:
    """Observations <-> bytes.  Decoding needs a matcher: the SYN is fingerprinted again."""

    def __init__(self) -> None:
        self._stacks: dict[tuple, bytes] = {}
        self._shapes: dict[bytes, tuple] = {}

    def syn(self, obs) -> bytes:
        """One SYN (an Observation or anything that reads like one: .pkt, .fp, .mod, .linktype)."""
        pkt = obs.pkt
        shape = pkt.shape
        sendsyn = obs.mod == "sendsyn probe"
        key = (shape, sendsyn, obs.linktype)
        stack = self._stacks.get(key)
        if stack is None:
            ver, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, ts1, layout, eol_pad, payload, tot_hdr = shape
            flags = ver | (_F_TS1 if ts1 else 0) | (_F_PAYLOAD if payload else 0) | (_F_SENDSYN if sendsyn else 0)
            stack = _STACK.pack(flags, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, eol_pad, tot_hdr,
                                obs.linktype & 0xFFFF, len(layout)) + layout
            if len(self._stacks) >= MEMO_MAX:
                self._stacks.clear()
            self._stacks[key] = stack
        out = _HEAD.pack(pkt.ts, pkt.sport, pkt.dport) + stack + pkt.dst
        nat, up = obs.nat, obs.uptime
        if nat is None and up is None:
            return out
        # p0f's host records that came with this SYN: the API reports them too.
        trailer = bytearray((bool(nat) | bool(up) << 1,))
        if nat is not None:
            for text in (nat.kind, nat.reason):
                raw = text.encode()[:255]
                trailer += bytes((len(raw),)) + raw
            trailer += bytes(min(h, 255) for h in nat.raw_hits)
        if up is not None:
            trailer += _UPTIME.pack(min(up.minutes, 0xFFFFFFFF), min(up.modulo_days, 0xFFFF), up.freq)
        return out + bytes(trailer)

    def host(self, host, obs, syn: bytes = b"") -> bytes:
        """An address's history (a HostRecord, or anything that reads like one) with `obs` as its latest SYN.

        The SYN that p0f's API reports (the latest that matched an OS) travels as
        its label when it is not `obs` itself: the table may keep it in a form
        without the packet's fields."""
        match = host.last_match
        os_names = [n.encode()[:255] for n in host.os_names[:255]]
        head = _HOST.pack(host.first_seen, host.last_seen, min(host.count, 0xFFFFFFFF),
                          _clamp(host.last_distance, -32768, 32767), min(host.changes, 0xFFFF),
                          host.last_change, min(len(host.signatures), 255), len(os_names),
                          host.last_ip_sharing, host.last_host_change, min(host.uptime_minutes, 0xFFFFFFFF),
                          min(host.uptime_modulo_days, 0xFFFF))
        names = b"".join(bytes((len(n),)) + n for n in os_names)
        syn = syn or self.syn(obs)
        if match is None or match.fp.label is None:
            tail = bytes((_MATCH_NONE,))
        elif match is obs or (match.fp is obs.fp and match.pkt.ts == obs.pkt.ts):
            tail = bytes((_MATCH_LATEST,))
        else:
            label = match.fp.label
            parts = [t.encode()[:255] for t in (label.name, label.flavor or "", label.klass)]
            tail = (bytes((_MATCH_OWN, match.fp.fuzzy | match.fp.generic << 1 | label.generic << 2))
                    + b"".join(bytes((len(t),)) + t for t in parts))
        return head + names + bytes((len(syn),)) + syn + tail

    # --- decoding -------------------------------------------------------------------------

    def decode_syn(self, data: bytes, src: bytes, matcher: Matcher) -> Observation:
        ts, sport, dport = _HEAD.unpack_from(data, 0)
        off = _HEAD.size
        n_layout = data[off + _STACK.size - 1]
        stack_end = off + _STACK.size + n_layout
        stack = data[off:stack_end]
        fields = self._shapes.get(stack)
        if fields is None:
            flags, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, eol_pad, tot_hdr, linktype, _ = \
                _STACK.unpack_from(stack, 0)
            layout = bytes(stack[_STACK.size:])
            ver = flags & 0x0F
            shape = (ver, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, bool(flags & _F_TS1), layout,
                     eol_pad, bool(flags & _F_PAYLOAD), tot_hdr)
            fields = (shape, bool(flags & _F_SENDSYN), linktype)
            if len(self._shapes) >= MEMO_MAX:
                self._shapes.clear()
            self._shapes[stack] = fields
        shape, sendsyn, linktype = fields
        ver, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, ts1, layout, eol_pad, payload, tot_hdr = shape
        dst = bytes(data[stack_end:stack_end + (4 if ver == 4 else 16)])
        if len(dst) != (4 if ver == 4 else 16):
            raise ValueError("truncated record")
        nat = up = None
        off = stack_end + len(dst)
        if off < len(data):
            present = data[off]
            off += 1
            if present & 1:
                texts = []
                for _ in range(2):
                    size = data[off]
                    texts.append(bytes(data[off + 1:off + 1 + size]).decode("utf-8", "replace"))
                    off += 1 + size
                hits = tuple(data[off:off + 4])
                if len(hits) != 4:
                    raise ValueError("truncated record")
                nat = NatRecord(texts[0], texts[1], hits)
                off += 4
            if present & 2:
                up = Uptime(*_UPTIME.unpack_from(data, off))
        pkt = Packet(ts=ts, ip_ver=ver, src=src, dst=dst, sport=sport, dport=dport, ttl=ttl, tos=tos,
                     ip_opt_len=olen, tcp_type=tcp_type, seq=0, win=win, mss=mss, wscale=wscale,
                     ts1=1 if ts1 else 0, opt_layout=layout, opt_eol_pad=eol_pad, pay_len=1 if payload else 0,
                     tot_hdr=tot_hdr, quirks=quirks, payload=b"", shape=shape)
        fp = matcher.fingerprint(pkt, True, 0, sendsyn)
        return Observation("sendsyn probe" if sendsyn else "syn", pkt, fp, linktype, True, nat, up)

    def decode_host(self, data: bytes, src: bytes, matcher: Matcher) -> RemoteHost:
        first, last, count, dist, changes, last_change, n_sigs, n_names, sharing, host_change, up_min, up_days = \
            _HOST.unpack_from(data, 0)
        off = _HOST.size
        names = []
        for _ in range(n_names):
            size = data[off]
            names.append(bytes(data[off + 1:off + 1 + size]).decode("utf-8", "replace"))
            off += 1 + size
        size = data[off]
        latest = self.decode_syn(data[off + 1:off + 1 + size], src, matcher)
        off += 1 + size
        kind = data[off]
        match = None
        if kind == _MATCH_LATEST:
            match = latest
        elif kind == _MATCH_OWN:
            bits = data[off + 1]
            off += 2
            texts = []
            for _ in range(3):
                size = data[off]
                texts.append(bytes(data[off + 1:off + 1 + size]).decode("utf-8", "replace"))
                off += 1 + size
            label = Label(bool(bits & 4), texts[2], texts[0], texts[1] or None, 0, 0)
            match = _Match(_MatchFp(label, bool(bits & 1), bool(bits & 2)))
        host = RemoteHost(first, last, count, dist, changes, last_change, n_sigs, names, latest, match)
        host.last_ip_sharing, host.last_host_change = sharing, host_change
        host.uptime_minutes, host.uptime_modulo_days = up_min, up_days
        return host


class _MatchFp(NamedTuple):
    """What p0f's API answer reads of the SYN it reports: its label and match quality."""

    label: Label
    fuzzy: bool
    generic: bool


class _Match(NamedTuple):
    fp: _MatchFp


class RemoteHost:
    """An address's history as the sensor that saw its latest SYN published it.

    Reads like a HostRecord for the API and the p0f socket; only the number of
    distinct signatures travels, so `signatures` holds the latest one and
    placeholders."""

    __slots__ = ("first_seen", "last_seen", "count", "last_distance", "changes", "last_change", "signatures",
                 "os_names", "latest", "last_match", "last_ip_sharing", "last_host_change", "uptime_minutes",
                 "uptime_modulo_days")

    def __init__(self, first_seen: float, last_seen: float, count: int, last_distance: int, changes: int,
                 last_change: float, n_signatures: int, os_names: list[str], latest: Observation,
                 last_match: Observation | None) -> None:
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.count = count
        self.last_distance = last_distance
        self.changes = changes
        self.last_change = last_change
        self.signatures = [""] * max(0, n_signatures - 1) + [latest.fp.raw_sig]
        self.os_names = os_names
        self.latest = latest
        self.last_match = last_match
        # p0f's host records as the sensor's table keeps them (when, not what: the API reports when).
        self.last_ip_sharing = self.last_host_change = 0.0
        self.uptime_minutes = self.uptime_modulo_days = 0

    @property
    def host_changed(self) -> bool:
        return self.changes > 0


def one_syn_host(obs: Observation) -> HostRecord:
    """The history of an address seen once (the table no longer holds it: evicted meanwhile).

    HostRecord's own, of the table's own record of the SYN, so that it names the OS as a record the table
    kept would."""
    return HostRecord(syn_of(obs))


def conn_key(ip: bytes, port: int, prefix: bytes = KEY_PREFIX) -> bytes:
    return prefix + b"c:" + ip + port.to_bytes(2, "big")


def host_key(ip: bytes, prefix: bytes = KEY_PREFIX) -> bytes:
    return prefix + b"h:" + ip


def rspamd_key(ip: bytes, prefix: str) -> bytes:
    """rspamd's p0f module's key: its prefix, then the address as rspamd prints it (inet_ntop's form)."""
    return (prefix + socket.inet_ntop(socket.AF_INET if len(ip) == 4 else socket.AF_INET6, ip)).encode()
