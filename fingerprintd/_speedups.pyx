# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled accelerator for the packet path (see fingerprintd/accel.py).

Everything here mirrors a pure-Python reference step for step and must
give the same objects, counters and bytes (tests/test_accel.py feeds both
the same random and mutated batches):

* `parse` is packet.parse (with packet._walk_options inlined: in C the walk
  costs less than the memo lookup it replaces);
* `feed_batch` / `feed_blob` are engine.Engine.feed_batch, the second taking
  pcapy's next_batch buffers as they come (no bytes object per frame);
* `P0fLog` is report.p0f_log_formatter.

p0f's flow books and host records stay the Python classes of flows.py and
nat.py, compiled by Cython from the same source (_cflows.pyx, _cnat.pyx).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF, PyObject, PyTypeObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

import struct
import time

from fingerprintd import packet as _pk
# The compiled books and host records (the same build): called as C functions when the engine runs them.
from fingerprintd._cflows cimport Flow, FlowTable
from fingerprintd._cnat cimport on_other as c_on_other, on_syn as c_on_syn
from fingerprintd import _cnat

__source_sha256__ = SOURCE_SHA256  # set by setup.py: accel.py refuses a build older than this file

cdef object Packet = _pk.Packet
if Packet._fields != ("ts", "ip_ver", "src", "dst", "sport", "dport", "ttl", "tos", "ip_opt_len", "tcp_type",
                      "seq", "win", "mss", "wscale", "ts1", "opt_layout", "opt_eol_pad", "pay_len", "tot_hdr",
                      "quirks", "payload", "shape"):
    raise ImportError("packet.Packet changed: the accelerator's _parse fills the fields it knew")
# Where the loop and the formatter find a Packet's fields (the tuple is read by index here).
cdef Py_ssize_t P_TS = Packet._fields.index("ts")
cdef Py_ssize_t P_SRC = Packet._fields.index("src")
cdef Py_ssize_t P_DST = Packet._fields.index("dst")
cdef Py_ssize_t P_SPORT = Packet._fields.index("sport")
cdef Py_ssize_t P_DPORT = Packet._fields.index("dport")
cdef Py_ssize_t P_TCP_TYPE = Packet._fields.index("tcp_type")
cdef Py_ssize_t P_SHAPE = Packet._fields.index("shape")
cdef object _new = tuple.__new__

# The skip reasons by parse_c's codes (_speedups.pxd).
cdef tuple REASONS = (None, _pk.R_TRUNCATED, _pk.R_NOT_IP, _pk.R_NOT_TCP, _pk.R_FRAGMENT, _pk.R_BAD_IP,
                      _pk.R_BAD_TCP, _pk.R_BAD_FLAGS, _pk.R_LINK, _pk.R_IPV6_EXT, _pk.R_VLAN)
reasons = REASONS  # for the replay loop

DEF SNAPLEN = 65535

DEF FIN = 0x01
DEF SYN = 0x02
DEF RST = 0x04
DEF PSH = 0x08
DEF ACK = 0x10
DEF URG = 0x20
DEF ECE = 0x40
DEF CWR = 0x80

DEF Q_ECN = 0x00000001
DEF Q_DF = 0x00000002
DEF Q_NZ_ID = 0x00000004
DEF Q_ZERO_ID = 0x00000008
DEF Q_NZ_MBZ = 0x00000010
DEF Q_FLOW = 0x00000020
DEF Q_ZERO_SEQ = 0x00001000
DEF Q_NZ_ACK = 0x00002000
DEF Q_ZERO_ACK = 0x00004000
DEF Q_NZ_URG = 0x00008000
DEF Q_URG = 0x00010000
DEF Q_PUSH = 0x00020000
DEF Q_OPT_ZERO_TS1 = 0x01000000
DEF Q_OPT_NZ_TS2 = 0x02000000
DEF Q_OPT_EOL_NZ = 0x04000000
DEF Q_OPT_EXWS = 0x08000000
DEF Q_OPT_BAD = 0x10000000

cdef extern from "Python.h":
    object PyType_GenericAlloc(type t, Py_ssize_t nitems)


cdef inline void _put(object t, Py_ssize_t i, object item):
    Py_INCREF(item)  # PyTuple_SET_ITEM steals a reference
    PyTuple_SET_ITEM(t, i, item)


cdef object _observation(mod, pkt, fp, linktype, to_server, nat, uptime):
    """Observation(...) without an intermediate tuple: allocated and filled as CPython's tuple_subtype_new
    does it for tuple.__new__(Observation, items)."""
    obs = PyType_GenericAlloc(<type>Observation, 7)
    _put(obs, 0, mod)
    _put(obs, 1, pkt)
    _put(obs, 2, fp)
    _put(obs, 3, linktype)
    _put(obs, 4, to_server)
    _put(obs, 5, nat)
    _put(obs, 6, uptime)
    return obs


# Small ints and the empty bytes, shared (the pure path's are shared too: CPython caches them).
cdef object _EMPTY = b""


cdef inline uint16_t u16(const uint8_t* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline uint32_t u32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline bint is_vlan(unsigned int etype) noexcept nogil:
    return etype == 0x8100 or etype == 0x88A8 or etype == 0x9100


cdef inline bint is_v6_ext(unsigned int nxt) noexcept nogil:
    return nxt == 0 or nxt == 43 or nxt == 60 or nxt == 135 or nxt == 139 or nxt == 140


# Layout bytes objects by content: a stack's few layouts are built once.
cdef dict _layouts = {}


cdef object _layout(const uint8_t* kinds, int n):
    cdef bytes b = PyBytes_FromStringAndSize(<const char*>kinds, n)
    got = _layouts.get(b)
    if got is not None:
        return got
    if len(_layouts) >= 8192:
        _layouts.clear()
    _layouts[b] = b
    return b


cdef int parse_c(const uint8_t* d, Py_ssize_t n, int linktype, bint bugs, CPkt* p) noexcept nogil:
    """packet.parse over n bytes at d, into *p: 0, or the skip reason's code (REASONS[code])."""
    cdef Py_ssize_t off, type_at, packet_len, tot_len, hdr_len, tcp_off, ext_len, end, step, doff
    cdef unsigned int etype, ver, first, proto, flags_off, ip_id, tos_ecn, ttl, nxt, ver_tos
    cdef unsigned int sport, dport, flags, win, urg, doff_rsvd, tos, tcp_type
    cdef uint32_t seq, ack, ts1, ts2
    cdef unsigned long quirks = 0
    cdef Py_ssize_t ip_opt_len, tot_hdr, pay_len
    cdef const uint8_t* ip
    cdef const uint8_t* tcp
    cdef const uint8_t* o
    cdef Py_ssize_t oend, pos, ts_at, i, k
    cdef unsigned int kind, mss, wscale, olen, lo, hi
    cdef Py_ssize_t eol_pad
    cdef uint8_t* kinds = p.kinds
    cdef int nk
    cdef bint bad

    # The link walk (packet.ip_offset).
    if linktype == 1 and n >= 14 and d[12] == 0x08 and d[13] == 0x00:
        off = 14
    else:
        if linktype == 1:
            type_at, off = 12, 14
        elif linktype == 113:
            type_at, off = 14, 16
        elif linktype == 276:
            type_at, off = 0, 20
        elif linktype == 101 or linktype == 12 or linktype == 14 or linktype == 228 or linktype == 229:
            type_at, off = -1, 0
        elif linktype == 0 or linktype == 108:
            type_at, off = -1, 4
        else:
            return C_LINK
        if type_at >= 0:
            if n < off:
                return C_TRUNCATED
            etype = u16(d + type_at)
            if is_vlan(etype) and bugs:
                return C_VLAN
            while is_vlan(etype):
                if n < off + 4:
                    return C_TRUNCATED
                etype = u16(d + off + 2)
                off += 4
            if etype != 0x0800 and etype != 0x86DD:
                return C_NOT_IP
    packet_len = (n if n < SNAPLEN else SNAPLEN) - off
    if packet_len < 40:
        return C_TRUNCATED
    ip = d + off
    first = ip[0]
    ver = first >> 4
    if ver == 4:
        hdr_len = (first & 0x0F) * 4
        tos_ecn = ip[1]
        tot_len = u16(ip + 2)
        ip_id = u16(ip + 4)
        flags_off = u16(ip + 6)
        ttl = ip[8]
        proto = ip[9]
        if packet_len > tot_len:
            packet_len = tot_len
        if packet_len < 40:
            return C_TRUNCATED
        if hdr_len < 20:
            return C_BAD_IP
        if tot_len > packet_len or hdr_len + 20 > packet_len:
            return C_TRUNCATED
        if proto != 6:
            return C_NOT_TCP
        if flags_off & 0x3FFF:
            return C_FRAGMENT
        if tos_ecn & 0x03:
            quirks = Q_ECN
        if flags_off & 0x8000:
            quirks |= Q_NZ_MBZ
        if flags_off & 0x4000:
            quirks |= (Q_DF | Q_NZ_ID) if ip_id else Q_DF
        elif not ip_id:
            quirks |= Q_ZERO_ID
        tcp_off = off + hdr_len
        packet_len -= hdr_len
        tot_hdr = hdr_len
        ip_opt_len = hdr_len - 20
        tos = tos_ecn >> 2
        p.alen = 4
        memcpy(p.src, ip + 12, 4)
        memcpy(p.dst, ip + 16, 4)
    elif ver == 6:
        ver_tos = u32(ip)
        tot_len = u16(ip + 4) + 40
        nxt = ip[6]
        ttl = ip[7]
        if packet_len > tot_len:
            packet_len = tot_len
        if packet_len < 60 or tot_len > packet_len:
            return C_TRUNCATED
        tcp_off = off + 40
        ext_len = 0
        if nxt != 6:
            if bugs and (is_v6_ext(nxt) or nxt == 44):
                return C_IPV6_EXT
            end = off + packet_len
            while nxt != 6:
                if tcp_off + 8 > end:
                    return C_TRUNCATED
                if nxt == 44:
                    if u16(d + tcp_off + 2) & 0xFFF9:
                        return C_FRAGMENT
                    step = 8
                elif is_v6_ext(nxt):
                    step = (d[tcp_off + 1] + 1) * 8
                else:
                    return C_NOT_TCP
                nxt = d[tcp_off]
                tcp_off += step
                ext_len += step
            if tcp_off + 20 > end:
                return C_TRUNCATED
        if ver_tos & 0xFFFFF:
            quirks = Q_FLOW
        if (ver_tos >> 20) & 0x03:
            quirks |= Q_ECN
        tos = (ver_tos >> 22) & 0x3F
        ip_opt_len = ext_len
        tot_hdr = 40 + ext_len
        packet_len -= tot_hdr
        p.alen = 16
        memcpy(p.src, ip + 8, 16)
        memcpy(p.dst, ip + 24, 16)
    else:
        return C_NOT_IP

    tcp = d + tcp_off
    sport = u16(tcp)
    dport = u16(tcp + 2)
    seq = u32(tcp + 4)
    ack = u32(tcp + 8)
    doff_rsvd = tcp[12]
    flags = tcp[13]
    win = u16(tcp + 14)
    urg = u16(tcp + 18)
    doff = (doff_rsvd >> 4) * 4
    if doff < 20:
        return C_BAD_TCP
    if doff > packet_len:
        return C_TRUNCATED
    tot_hdr += doff
    tcp_type = flags & 0x17
    if ((flags & SYN) and (flags & (FIN | RST))) or ((flags & FIN) and (flags & RST)) or not tcp_type:
        return C_BAD_FLAGS
    if flags & (ECE | CWR) or doff_rsvd & 0x01:
        quirks |= Q_ECN
    if not seq:
        quirks |= Q_ZERO_SEQ
    if flags & ACK:
        if not ack:
            quirks |= Q_ZERO_ACK
    elif not flags & RST:
        if ((ack & 0x01000000) if bugs else ack):
            quirks |= Q_NZ_ACK
    if flags & URG:
        quirks |= Q_URG
    elif urg:
        quirks |= Q_NZ_URG
    if flags & PSH:
        quirks |= Q_PUSH
    pay_len = packet_len - doff

    mss = wscale = 0
    eol_pad = 0
    ts1 = ts2 = 0
    nk = 0
    if doff > 20:
        # packet._walk_options, byte for byte.
        o = tcp + 20
        oend = doff - 20
        pos = 0
        ts_at = -1
        bad = False
        while pos < oend and nk < MAX_TCP_OPT:
            kind = o[pos]
            kinds[nk] = kind
            nk += 1
            pos += 1
            if kind == 1:
                continue
            if kind == 0:
                eol_pad = oend - pos
                k = -1
                for i in range(pos, oend):
                    if o[i]:
                        k = i
                        break
                if k >= 0 and (not bugs or k != oend - 1):
                    quirks |= Q_OPT_EOL_NZ
                pos = oend
                break
            if kind == 2 or kind == 3 or kind == 4 or kind == 8:
                if kind == 2:
                    step, olen = 3, 4
                elif kind == 3:
                    step, olen = 2, 3
                elif kind == 4:
                    step, olen = 1, 2
                else:
                    step, olen = 9, 10
                if pos + step > oend:
                    bad = True
                    break
                if o[pos] != olen:
                    quirks |= Q_OPT_BAD
                if kind == 2:
                    mss = u16(o + pos + 1)
                elif kind == 3:
                    wscale = o[pos + 1]
                    if wscale > 14:
                        quirks |= Q_OPT_EXWS
                elif kind == 8:
                    ts_at = pos + 1
                pos += step
            else:
                if pos == oend:
                    bad = True
                    break
                olen = o[pos]
                if kind == 5:
                    lo, hi = 10, 34
                else:
                    lo, hi = 2, 40
                if olen < lo or olen > hi or pos - 1 + olen > oend:
                    bad = True
                    break
                pos += olen - 1
        if bad or pos != oend:
            quirks |= Q_OPT_BAD
        if ts_at >= 0:
            ts1 = u32(o + ts_at)
            ts2 = u32(o + ts_at + 4)
            if not ts1:
                quirks |= Q_OPT_ZERO_TS1
            if ts2 and tcp_type == SYN:
                quirks |= Q_OPT_NZ_TS2
    p.ver = ver
    p.sport = sport
    p.dport = dport
    p.ttl = ttl
    p.tos = tos
    p.ip_opt_len = ip_opt_len
    p.tcp_type = tcp_type
    p.seq = seq
    p.win = win
    p.mss = mss
    p.wscale = wscale
    p.ts1 = ts1
    p.nk = nk
    p.eol_pad = eol_pad
    p.pay_len = pay_len
    p.tot_hdr = tot_hdr
    p.quirks = quirks
    p.payload = tcp + doff
    return 0


cdef object packet_of(const CPkt* p, object ts):
    """The Packet parse_c's fields make (packet.parse's result)."""
    cdef Py_ssize_t k
    src = PyBytes_FromStringAndSize(<const char*>p.src, p.alen)
    dst = PyBytes_FromStringAndSize(<const char*>p.dst, p.alen)
    layout = _layout(p.kinds, p.nk) if p.nk else _EMPTY
    if p.pay_len > 0:
        k = p.pay_len if p.pay_len < 16 else 16
        payload = PyBytes_FromStringAndSize(<const char*>p.payload, k)
    else:
        payload = _EMPTY
    ver, ttl, tos, ip_opt_len, tcp_type, win = p.ver, p.ttl, p.tos, p.ip_opt_len, p.tcp_type, p.win
    mss, wscale, ts1, eol_pad, pay_len, tot_hdr = p.mss, p.wscale, p.ts1, p.eol_pad, p.pay_len, p.tot_hdr
    q = <long>p.quirks
    shape = (ver, ttl, tos, ip_opt_len, q, tcp_type, win, mss, wscale, p.ts1 != 0, layout, eol_pad,
             p.pay_len != 0, tot_hdr)
    # Packet(...) filled in place (see _observation), in Packet._fields order (checked at import).
    pkt = PyType_GenericAlloc(<type>Packet, 22)
    _put(pkt, 0, ts)
    _put(pkt, 1, ver)
    _put(pkt, 2, src)
    _put(pkt, 3, dst)
    _put(pkt, 4, p.sport)
    _put(pkt, 5, p.dport)
    _put(pkt, 6, ttl)
    _put(pkt, 7, tos)
    _put(pkt, 8, ip_opt_len)
    _put(pkt, 9, tcp_type)
    _put(pkt, 10, p.seq)
    _put(pkt, 11, win)
    _put(pkt, 12, mss)
    _put(pkt, 13, wscale)
    _put(pkt, 14, ts1)
    _put(pkt, 15, layout)
    _put(pkt, 16, eol_pad)
    _put(pkt, 17, pay_len)
    _put(pkt, 18, tot_hdr)
    _put(pkt, 19, q)
    _put(pkt, 20, payload)
    _put(pkt, 21, shape)
    return pkt


cdef object _parse(const uint8_t* d, Py_ssize_t n, int linktype, object ts, bint bugs):
    """packet.parse over n bytes at d: a Packet, or the skip reason."""
    cdef CPkt p
    cdef int code = parse_c(d, n, linktype, bugs, &p)
    if code:
        return REASONS[code]
    return packet_of(&p, ts)


def parse(data, int linktype=1, ts=0.0, mode=_pk.FIXED):
    """packet.parse, compiled: a Packet, or a skip-reason string (`mode`: a fingerprintd.mode.P0fMode)."""
    cdef bint p0f_bugs = mode.p0f_bugs
    if type(data) is bytes:
        return _parse(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), linktype, ts, p0f_bugs)
    cdef const uint8_t[::1] view = data
    if view.shape[0] == 0:
        return _parse(<const uint8_t*>"", 0, linktype, ts, p0f_bugs)
    return _parse(&view[0], view.shape[0], linktype, ts, p0f_bugs)


# ---------------------------------------------------------------------------
# The engine loop (engine.Engine.feed_batch).

# From engine.py, which imports this module (through accel.py): bound on first use.
cdef object Observation = None
cdef object R_NOT_SYN, R_RETRANSMIT, R_STRAY_SYNACK, R_OTHER_PORT


cdef _bind_engine():
    global Observation, R_NOT_SYN, R_RETRANSMIT, R_STRAY_SYNACK, R_OTHER_PORT
    from fingerprintd import engine
    R_NOT_SYN = engine.R_NOT_SYN
    R_RETRANSMIT = engine.R_RETRANSMIT
    R_STRAY_SYNACK = engine.R_STRAY_SYNACK
    R_OTHER_PORT = engine.R_OTHER_PORT
    Observation = engine.Observation

cdef struct Meta:
    uint32_t sec
    uint32_t usec
    uint32_t off
    uint32_t caplen


cdef class _Loop:
    """One batch's view of an engine: its parts as locals, its counters as C ints until the end."""

    cdef object engine, flows, matcher, cache, fingerprint, ports, skipped, classes, records, on_syn, on_other
    cdef object out
    cdef FlowTable books  # flows, when they are the compiled p0f books; else None
    cdef bint c_nat  # nat is the compiled nat module
    cdef bint bugs, exact, host_records, all_ports
    cdef int linktype
    cdef long n_not_syn, n_other_port, n_retransmit, n_stray, n_syn, n_synack, n_probe, n_response, hits
    cdef long n_uptime

    def __init__(self, engine, int linktype, nat):
        if Observation is None:
            _bind_engine()
        self.engine = engine
        self.flows = engine.flows
        self.matcher = engine.matcher
        self.cache = self.matcher.cache
        self.fingerprint = self.matcher.fingerprint
        self.ports = engine.ports
        self.all_ports = engine.ports is None
        self.skipped = engine.skipped
        self.classes = engine.syn_classes
        self.records = engine.records
        self.bugs = engine.p0f_bugs
        self.exact = engine.nat_exact
        self.host_records = engine.host_records
        self.on_syn = nat.on_syn
        self.on_other = nat.on_other
        self.books = self.flows if type(self.flows) is FlowTable else None
        self.c_nat = nat is _cnat
        self.linktype = linktype
        self.out = []

    cdef inline object fp_of(self, pkt, bint to_server, syn_mss, bint sendsyn):
        # The matcher's cache, looked up here; only a miss calls into the matcher (which counts it).
        fp = self.cache.get((pkt[P_SHAPE], to_server, syn_mss, sendsyn))
        if fp is not None:
            self.hits += 1
            return fp
        return self.fingerprint(pkt, to_server, syn_mss, sendsyn)

    cdef int one(self, const uint8_t* d, Py_ssize_t n, unsigned long sec, unsigned long usec, frame) except -1:
        cdef unsigned int tcp_type
        cdef bint to_srv, sendsyn
        cdef FlowTable books = self.books
        flows = self.flows
        if books is not None:
            books.tick(sec)
        else:
            flows.tick(sec)
        pkt = _parse(d, n, self.linktype, sec + usec * 1e-6, self.bugs)
        if type(pkt) is str:
            self.skipped[pkt] += 1
            return 0
        tcp_type = pkt[P_TCP_TYPE]
        if tcp_type != SYN and tcp_type != (SYN | ACK):
            due = flows.other(pkt)
            self.n_not_syn += 1
            if due is not None and self.host_records:
                if self.c_nat:
                    up = c_on_other(due[0], due[1], pkt, sec * 1000 + usec // 1000)
                else:
                    up = self.on_other(due[0], due[1], pkt, sec * 1000 + usec // 1000)
                if up is not None:
                    self.n_uptime += 1
                    self.out.append(_observation("uptime", pkt, None, self.linktype, due[1], None, up))
            return 0
        if not self.all_ports and pkt[P_DPORT] not in self.ports and pkt[P_SPORT] not in self.ports:
            self.n_other_port += 1
            return 0
        if tcp_type == SYN:
            if books is not None:
                flow = books.syn(pkt)
            else:
                flow = flows.syn(pkt)
            if flow is None:
                self.n_retransmit += 1
                return 0
            sendsyn = (<Flow>flow).sendsyn if books is not None else flow.sendsyn
            fp = self.fp_of(pkt, True, 0, sendsyn)
            if books is not None:
                books.syn_done(flow, pkt, fp.app)
            else:
                flows.syn_done(flow, pkt, fp.app)
            if sendsyn:
                mod = "sendsyn probe"
                self.n_probe += 1
            else:
                mod = "syn"
                self.n_syn += 1
            self.classes[fp.mail_class] += 1
            to_srv = True
        else:
            if books is not None:
                flow = books.synack(pkt)
            else:
                flow = flows.synack(pkt)
            if flow is None:
                self.n_stray += 1
                return 0
            sendsyn = flow.sendsyn
            fp = self.fp_of(pkt, False, flow.syn_mss, sendsyn)
            if books is not None:
                books.synack_done(flow, pkt, fp.app)
            else:
                flows.synack_done(flow, pkt, fp.app)
            if sendsyn:
                mod = "sendsyn response"
                self.n_response += 1
            else:
                mod = "syn+ack"
                self.n_synack += 1
            to_srv = False
        if self.c_nat:
            rec, up = c_on_syn(to_srv, flow, pkt, fp, sec, sec * 1000 + usec // 1000, self.exact)
        else:
            rec, up = self.on_syn(to_srv, flow, pkt, fp, sec, sec * 1000 + usec // 1000, self.exact)
        if rec is not None:
            self.records[rec.kind] += 1
        if up is not None:
            self.n_uptime += 1
        self.out.append(_observation(mod, pkt, fp, self.linktype, to_srv, rec, up))
        return 0

    cdef finish(self, Py_ssize_t count):
        add_counts(self.engine, self.matcher, self.n_not_syn, self.n_other_port, self.n_retransmit, self.n_stray,
                   self.n_syn, self.n_synack, self.n_probe, self.n_response, self.n_uptime, self.hits, count)
        return self.out


cdef int add_counts(engine, matcher, long not_syn, long other_port, long retransmit, long stray, long syn,
                    long synack, long probe, long response, long uptime, long hits, Py_ssize_t packets) except -1:
    """A batch's counts into the engine's Counters (the engine's loop and the replay loop alike): a key
    appears only once counted, as in the pure loop."""
    if R_NOT_SYN is None:
        _bind_engine()
    skipped = engine.skipped
    if not_syn:
        skipped[R_NOT_SYN] += not_syn
    if other_port:
        skipped[R_OTHER_PORT] += other_port
    if retransmit:
        skipped[R_RETRANSMIT] += retransmit
    if stray:
        skipped[R_STRAY_SYNACK] += stray
    done = engine.fingerprinted
    if syn:
        done["syn"] += syn
    if synack:
        done["syn+ack"] += synack
    if probe:
        done["sendsyn probe"] += probe
    if response:
        done["sendsyn response"] += response
    if uptime:
        engine.records["uptime"] += uptime
    if hits:
        matcher.hits += hits
    engine.packets += packets
    return 0


def feed_batch(engine, list batch, int linktype, nat):
    """Engine.feed_batch over (sec, usec, frame) tuples."""
    cdef _Loop loop = _Loop(engine, linktype, nat)
    cdef const uint8_t[::1] view
    for item in batch:
        sec, usec, frame = item
        if type(frame) is bytes:
            loop.one(<const uint8_t*>PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame), sec, usec, frame)
        else:
            view = frame
            loop.one(&view[0] if view.shape[0] else <const uint8_t*>"", view.shape[0], sec, usec, frame)
    return loop.finish(len(batch))


def feed_blob(engine, blob, meta, int linktype, nat):
    """Engine.feed_batch over pcapy's next_batch buffers: frames in `blob`, (sec, usec, offset, caplen) in `meta`."""
    cdef _Loop loop = _Loop(engine, linktype, nat)
    cdef const uint8_t[::1] b = blob
    cdef const uint8_t[::1] m = meta
    cdef Py_ssize_t count = m.shape[0] // sizeof(Meta), i
    cdef const Meta* rec
    cdef const uint8_t* base = &b[0] if b.shape[0] else <const uint8_t*>""
    for i in range(count):
        rec = (<const Meta*>&m[0]) + i
        if <Py_ssize_t>rec.off + rec.caplen > b.shape[0]:
            raise ValueError("next_batch metadata points past its buffer")
        loop.one(base + rec.off, rec.caplen, rec.sec, rec.usec, None)
    return loop.finish(count)


# ---------------------------------------------------------------------------
# p0f's log format (report.p0f_log_formatter), written into one buffer per batch.

from libc.stdlib cimport free, realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8

cdef object _strftime = time.strftime
cdef object _localtime = time.localtime


cdef class _Buf:
    """A growing byte buffer (attributes in _speedups.pxd)."""

    def __dealloc__(self):
        free(self.data)

    cdef int grow(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap = self.cap * 2 if self.cap else 1 << 16
        while cap < self.size + need:
            cap *= 2
        cdef char* p = <char*>realloc(self.data, cap)
        if p == NULL:
            raise MemoryError()
        self.data = p
        self.cap = cap
        return 0

    cdef char* reserve(self, Py_ssize_t n) except NULL:
        """Room for n more bytes: where they go (the writer sets `size` past what it wrote)."""
        if self.size + n > self.cap:
            self.grow(n)
        return self.data + self.size

    cdef int put(self, const char* s, Py_ssize_t n) except -1:
        self.size = w_bytes(self.reserve(n), s, n) - self.data
        return 0

    cdef int put_str(self, str s) except -1:
        cdef Py_ssize_t n
        cdef const char* p = PyUnicode_AsUTF8AndSize(s, &n)
        return self.put(p, n)

    cdef int put_uint(self, unsigned long v) except -1:
        self.size = w_uint(self.reserve(24), v) - self.data
        return 0

    cdef int put_addr(self, bytes a) except -1:
        self.size = w_addr(self.reserve(40), <const uint8_t*>PyBytes_AS_STRING(a), PyBytes_GET_SIZE(a)) - self.data
        return 0

    cdef str take(self):
        out = PyUnicode_DecodeUTF8(self.data, self.size, NULL)
        self.size = 0
        return out


cdef class P0fLog:
    """Lines byte-compatible with `p0f -o`, as report.p0f_log_formatter makes them."""

    cdef long sec
    cdef str head
    cdef dict tails
    cdef object uptime_tail
    cdef _Buf buf
    cdef _Buf who

    def __init__(self, uptime_tail):
        self.sec = -1
        self.head = ""
        self.tails = {}
        self.uptime_tail = uptime_tail
        self.buf = _Buf()
        self.who = _Buf()

    cdef tuple tail_of(self, fp):
        hit = self.tails.get(id(fp))
        if hit is not None and (<tuple>hit)[0] is fp:
            return <tuple>(<tuple>hit)[1]
        key = "app" if fp.app and fp.label else "os"
        value = (
            f"{key}={fp.os_text}|dist={fp.dist_text}|params={fp.params}|raw_sig={fp.raw_sig}\n",
            f"link={fp.link or '???'}|raw_mtu={fp.raw_mtu}\n" if fp.mtu_reported else None,
        )
        if len(self.tails) >= 16384:
            self.tails.clear()
        self.tails[id(fp)] = (fp, value)
        return value

    cdef int head_of(self, pkt) except -1:
        cdef long sec = int((<tuple>pkt)[P_TS])
        if sec != self.sec:
            self.sec = sec
            self.head = "[" + _strftime("%Y/%m/%d %H:%M:%S", _localtime(sec)) + "] mod="
        return 0

    cdef int line(self, object observation) except -1:
        cdef _Buf buf = self.buf
        cdef _Buf who = self.who
        cdef tuple obs = <tuple>observation
        cdef tuple pkt = <tuple>obs[1]
        fp = obs[2]
        who.size = 0
        if obs[4]:
            who.put("|cli=", 5)
            who.put_addr(pkt[P_SRC])
            who.put("/", 1)
            who.put_uint(pkt[P_SPORT])
            who.put("|srv=", 5)
            who.put_addr(pkt[P_DST])
            who.put("/", 1)
            who.put_uint(pkt[P_DPORT])
            who.put("|subj=cli|", 10)
        else:
            who.put("|cli=", 5)
            who.put_addr(pkt[P_DST])
            who.put("/", 1)
            who.put_uint(pkt[P_DPORT])
            who.put("|srv=", 5)
            who.put_addr(pkt[P_SRC])
            who.put("/", 1)
            who.put_uint(pkt[P_SPORT])
            who.put("|subj=srv|", 10)
        self.head_of(pkt)
        head = self.head
        uptime = obs[6]
        if fp is None:
            buf.put_str(head)
            buf.put("uptime", 6)
            buf.put(who.data, who.size)
            buf.put_str(self.uptime_tail(uptime))
            return 0
        tail = self.tail_of(fp)
        nat = obs[5]
        buf.put_str(head)
        buf.put_str(obs[0])
        buf.put(who.data, who.size)
        buf.put_str(tail[0])
        if nat is not None:
            buf.put_str(head)
            buf.put_str(nat.kind)
            buf.put(who.data, who.size)
            buf.put_str(f"reason={nat.reason or '???'}|raw_hits={','.join(map(str, nat.raw_hits))}\n")
        if tail[1] is not None:
            buf.put_str(head)
            buf.put("mtu", 3)
            buf.put(who.data, who.size)
            buf.put_str(tail[1])
        if uptime is not None:
            buf.put_str(head)
            buf.put("uptime", 6)
            buf.put(who.data, who.size)
            buf.put_str(self.uptime_tail(uptime))
        return 0

    def __call__(self, obs):
        self.buf.size = 0
        self.line(obs)
        return self.buf.take()

    def join(self, list observations):
        """All their lines, as one string."""
        self.buf.size = 0
        for obs in observations:
            self.line(obs)
        return self.buf.take()
