# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""`fingerprintd replay` with no Python object per packet (see fingerprintd/accel.py).

The compiled loop of _speedups.pyx still hands every SYN to Python objects:
a Packet, a Flow and Host of flows.py, a Sig of nat.py, an Observation, and
then formats them.  Here the whole path of `fingerprintd replay` runs on C
structs: parse_c's packet, p0f's flow and host books (flows.FlowTable), the
host records (nat.py: host change, ip sharing, uptime), a match cache keyed
by the packet's shape, the counters and the lines of each output format
(p0f-log, jsonl, text).  Python runs only for a stack not yet cached: the
packet is then made a Packet and given to the Matcher, and the stack's part
of the line (report._REPLAY_TAILS) is kept with the cache entry.

It is a second implementation of flows.FlowTable and nat.on_syn/on_other,
written from them line for line (the names below are theirs), and
tests/test_accel.py requires its bytes and counters to equal the pure path's
(Engine.feed_blob and report's formatters) on every capture and random
batch it feeds both.  The engine it is built from lends it its matcher, its
mode and its counters; the books are its own, so an engine replays through
one path only.

`LiveLoop`, at the end, is the service's capture path on the same structs:
flows.RecentSyns' books instead of p0f's, and out come the host table's
records (hosts.Syn) and the p0f log's lines (tests/test_live_loop.py holds
it to the service's pure path).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_READ
from cpython.long cimport PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Free
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset, strlen
from libc.time cimport time_t, tm, strftime

from fingerprintd._speedups cimport CPkt, _Buf, add_counts, packet_of, parse_c, w_addr, w_bytes, w_hex, w_uint

import json

from fingerprintd import flows as _flows
from fingerprintd import nat as _nat
from fingerprintd import packet as _pk
from fingerprintd._speedups import reasons as _reasons

__source_sha256__ = SOURCE_SHA256  # set by setup.py: accel.py refuses a build older than this file


cdef extern from "<time.h>" nogil:
    tm* localtime_r(const time_t* timer, tm* result)


cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)


cdef extern from *:
    void __builtin_prefetch(const void* addr) nogil


cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype) except NULL
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow_exception) except? -1.0
    int Py_DTSF_ADD_DOT_0


# ---------------------------------------------------------------------------
# Constants, from the modules this mirrors (checked where C needs them fixed).

DEF RING = 32  # nat.NAT_SCORES
if _nat.NAT_SCORES != RING:
    raise ImportError("nat.NAT_SCORES changed: _replay.pyx's rings are sized for 32")

cdef enum:
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    ACK = 0x10

cdef int EXPIRE_INTERVAL = _flows.EXPIRE_INTERVAL
cdef unsigned int SENDSYN_WIN = _pk.SENDSYN_WIN
cdef unsigned int SENDSYN_MSS = _pk.SENDSYN_MSS
cdef unsigned long IGNORED_QUIRKS = _pk.Q_ECN | _pk.Q_DF | _pk.Q_NZ_ID | _pk.Q_ZERO_ID  # nat._IGNORED_QUIRKS
cdef long NAT_APP_SIG = _nat.NAT_APP_SIG
cdef long NAT_OS_SIG = _nat.NAT_OS_SIG
cdef long NAT_UNK_DIFF = _nat.NAT_UNK_DIFF
cdef long NAT_TO_UNK = _nat.NAT_TO_UNK
cdef long NAT_TS = _nat.NAT_TS
cdef long NAT_PORT = _nat.NAT_PORT
cdef long NAT_TTL = _nat.NAT_TTL
cdef long NAT_MSS = _nat.NAT_MSS
cdef long NAT_FUZZY = _nat.NAT_FUZZY
cdef double MIN_TSCALE = _nat.MIN_TSCALE
cdef long MAX_TSCALE = _nat.MAX_TSCALE
cdef int64_t MIN_TWAIT = _nat.MIN_TWAIT
cdef int64_t MAX_TWAIT = _nat.MAX_TWAIT
cdef int64_t TSTAMP_GRACE = _nat.TSTAMP_GRACE
cdef int64_t MAX_NAT_TS = _nat.MAX_NAT_TS
cdef long MIN_PORT_DROP = _nat.MIN_PORT_DROP
cdef long SMALL_TTL_CHG = _nat.SMALL_TTL_CHG
cdef long LOCAL_TTL_LIMIT = _nat.LOCAL_TTL_LIMIT
cdef long NEAR_TTL_LIMIT = _nat.NEAR_TTL_LIMIT
# p0f's reason words by bit, in its order (nat.REASON_NAMES), as C strings (kept alive by _REASON_BYTES).
DEF N_REASONS = 9
if len(_nat.REASON_NAMES) != N_REASONS:
    raise ImportError("nat.REASON_NAMES changed: _replay.pyx has room for 9")
cdef long REASON_BIT[N_REASONS]
cdef const char* REASON_WORD[N_REASONS]
cdef list _REASON_BYTES = [name.encode() for _, name in _nat.REASON_NAMES]
for _i, (_bit, _) in enumerate(_nat.REASON_NAMES):
    REASON_BIT[_i] = _bit
    REASON_WORD[_i] = <bytes>_REASON_BYTES[_i]
cdef const char* MOD_NAME[4]  # by MOD_*
MOD_NAME[:] = [b"syn", b"syn+ack", b"sendsyn probe", b"sendsyn response"]
cdef Py_ssize_t MOD_LEN[4]
MOD_LEN[:] = [3, 7, 13, 16]
cdef const char* KIND_NAME[3]  # by Record.kind
KIND_NAME[:] = [b"", b"host change", b"ip sharing"]
cdef const char* KIND_WORD[3]  # the text format's: kind.replace(" ", "_")
KIND_WORD[:] = [b"", b"host_change", b"ip_sharing"]
cdef object _json_str = json.JSONEncoder(ensure_ascii=False).encode
cdef object _ip_text = None  # report.ip_text, for IPv4-mapped addresses (bound on first use)
# A line's fixed parts at most: head (30), mod (16), who (110), a host-record or uptime tail (~150).
DEF LINE_ROOM = 320

# The skip reasons by parse_c's code (the engine's own counter names: _speedups.add_counts).
cdef tuple REASONS = _reasons


# ---------------------------------------------------------------------------
# A table of fixed-size records: open addressing on a 40-byte key (linear probing, deletion by backward
# shift, so no tombstones), and a doubly linked order (flows by creation, hosts by last touch) - what the
# OrderedDicts of flows.FlowTable give.

DEF KEY = 40

cdef struct Head:
    uint64_t hash
    uint8_t key[KEY]


cdef struct Table:
    char* base
    size_t stride
    int32_t cap, count, free, first, last
    # The order, beside the records rather than in them: moving a record to the end touches its
    # neighbours' links, and these arrays stay in cache where the records would not.
    int32_t* prev
    int32_t* next  # also chains the free records
    int32_t* slots  # record index, -1 empty
    uint64_t mask


cdef inline uint64_t fmix(uint64_t h) noexcept nogil:
    """MurmurHash3's 64-bit finalizer: every input bit reaches the low bits the index uses."""
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef inline uint64_t key_hash(const uint8_t* k) noexcept nogil:
    # Each word times its own odd constant, summed: the multiplies are independent (they overlap in the
    # pipeline), and fmix spreads the sum.
    cdef uint64_t w0, w1, w2, w3, w4
    memcpy(&w0, k, 8)
    memcpy(&w1, k + 8, 8)
    memcpy(&w2, k + 16, 8)
    memcpy(&w3, k + 24, 8)
    memcpy(&w4, k + 32, 8)
    return fmix(w0 * 0x9E3779B97F4A7C15ULL + w1 * 0xC2B2AE3D27D4EB4FULL + w2 * 0x165667B19E3779F9ULL
                + w3 * 0xD6E8FEB86659FD93ULL + w4 * 0xFF51AFD7ED558CCDULL)


cdef inline Head* at(Table* t, int32_t i) noexcept nogil:
    return <Head*>(t.base + <size_t>i * t.stride)


cdef int tb_init(Table* t, size_t stride, int32_t cap) except -1:
    t.stride = (stride + 63) & ~(<size_t>63)
    t.cap = 0
    t.count = 0
    t.free = -1
    t.first = t.last = -1
    t.base = NULL
    t.prev = t.next = t.slots = NULL
    tb_grow(t, cap)
    return 0


cdef void tb_free(Table* t) noexcept:
    free(t.base)
    free(t.prev)
    free(t.next)
    free(t.slots)
    t.base = NULL
    t.prev = t.next = t.slots = NULL


cdef int tb_grow(Table* t, int32_t cap) except -1:
    """Room for `cap` records; the index is rebuilt at twice that or more."""
    # Records on cache-line boundaries (tb_init rounds the stride up to 64 bytes).
    cdef void* mem = NULL
    if posix_memalign(&mem, 64, <size_t>cap * t.stride):
        raise MemoryError()
    if t.base != NULL:
        memcpy(mem, t.base, <size_t>t.cap * t.stride)
        free(t.base)
    t.base = <char*>mem
    cdef int32_t* links = <int32_t*>realloc(t.prev, <size_t>cap * sizeof(int32_t))
    if links == NULL:
        raise MemoryError()
    t.prev = links
    links = <int32_t*>realloc(t.next, <size_t>cap * sizeof(int32_t))
    if links == NULL:
        raise MemoryError()
    t.next = links
    cdef int32_t i
    for i in range(cap - 1, t.cap - 1, -1):  # the new records go on the free chain, lowest first
        t.next[i] = t.free
        t.free = i
    t.cap = cap
    cdef uint64_t size = 16
    while size < <uint64_t>cap * 2:
        size <<= 1
    free(t.slots)
    t.slots = <int32_t*>malloc(size * sizeof(int32_t))
    if t.slots == NULL:
        raise MemoryError()
    memset(t.slots, 0xFF, size * sizeof(int32_t))
    t.mask = size - 1
    i = t.first
    while i >= 0:
        slot_put(t, i)
        i = t.next[i]
    return 0


cdef inline void slot_put(Table* t, int32_t i) noexcept nogil:
    cdef uint64_t s = at(t, i).hash & t.mask
    while t.slots[s] >= 0:
        s = (s + 1) & t.mask
    t.slots[s] = i


cdef inline int32_t tb_find(Table* t, const uint8_t* key, uint64_t h) noexcept nogil:
    cdef uint64_t s = h & t.mask
    cdef int32_t i
    cdef Head* r
    while True:
        i = t.slots[s]
        if i < 0:
            return -1
        r = at(t, i)
        if r.hash == h and memcmp(r.key, key, KEY) == 0:
            return i
        s = (s + 1) & t.mask


cdef int32_t tb_add(Table* t, const uint8_t* key, uint64_t h) except -1:
    """A new record for a key not in the table, last in the order, zeroed past its head.  May move the
    records: pointers taken before it are stale."""
    if t.free < 0:
        tb_grow(t, t.cap * 2)
    cdef int32_t i = t.free
    cdef Head* r = at(t, i)
    t.free = t.next[i]
    memset(r, 0, t.stride)
    r.hash = h
    memcpy(r.key, key, KEY)
    t.next[i] = -1
    t.prev[i] = t.last
    if t.last >= 0:
        t.next[t.last] = i
    else:
        t.first = i
    t.last = i
    t.count += 1
    slot_put(t, i)
    return i


cdef inline void unlink(Table* t, int32_t i) noexcept nogil:
    cdef int32_t prev = t.prev[i], nxt = t.next[i]
    if prev >= 0:
        t.next[prev] = nxt
    else:
        t.first = nxt
    if nxt >= 0:
        t.prev[nxt] = prev
    else:
        t.last = prev


cdef void tb_del(Table* t, int32_t i) noexcept nogil:
    cdef uint64_t s = at(t, i).hash & t.mask, j, home
    cdef int32_t k
    while t.slots[s] != i:
        s = (s + 1) & t.mask
    # Backward shift: pull later members of the probe run into the hole when their home allows it.
    j = s
    while True:
        j = (j + 1) & t.mask
        k = t.slots[j]
        if k < 0:
            break
        home = at(t, k).hash & t.mask
        if (j > s and (home <= s or home > j)) or (j < s and home <= s and home > j):
            t.slots[s] = k
            s = j
    t.slots[s] = -1
    unlink(t, i)
    t.next[i] = t.free
    t.free = i
    t.count -= 1


cdef void tb_touch(Table* t, int32_t i) noexcept nogil:
    """Move a record to the end of the order."""
    if t.last == i:
        return
    unlink(t, i)
    t.prev[i] = t.last
    t.next[i] = -1
    t.next[t.last] = i
    t.last = i


# ---------------------------------------------------------------------------
# The books' records.

cdef struct Sig:  # nat.Sig, in 64 bytes
    int32_t label  # into the label table; -1 unknown
    int32_t line, dist
    uint32_t quirks, ts1
    uint16_t mss
    uint8_t ttl, nk, fuzzy, bad_ttl
    int64_t recv_ms
    uint8_t layout[24]


cdef struct Host:  # flows.Host, with nat.HostState inside (has_nat: it exists)
    # Laid out for the cache: the lookup reads the first 64 bytes, a client's SYN the next 128.
    Head head
    int64_t last_seen, total_conn
    int32_t use_cnt, last_class, last_name  # interned strings; -1 None
    int32_t last_port
    uint8_t has_nat, has_syn, has_synack
    long nat_reasons
    uint8_t cli_scores[RING]
    Sig last_syn
    uint8_t srv_scores[RING]
    int64_t first_seen, last_nat, last_chg
    Sig last_synack


cdef struct Flow:  # flows.Flow
    Head head  # key: client and server address and port
    int32_t client, server
    int64_t created
    uint32_t next_cli_seq, next_srv_seq
    unsigned int syn_mss, req_n
    bint sendsyn, acked
    int http
    long cli_tps, srv_tps
    uint8_t request[16]


cdef struct Label:  # what nat.py reads of a signatures.Label
    int32_t name, klass, label_id
    bint generic, is_app


cdef struct Record:  # nat.NatRecord, and nat.Uptime
    int kind  # 0 none, 1 host change, 2 ip sharing
    long reason
    int hits[4]
    bint up
    int64_t minutes, modulo_days
    double freq


# The match cache's key: Matcher.fingerprint's (pkt.shape, to_server, syn_mss, sendsyn), as bytes.
cdef struct CKey:
    uint32_t quirks, ip_opt_len, tot_hdr
    uint16_t win, mss, syn_mss
    uint8_t ver, ttl, tos, tcp_type, wscale, has_ts, eol_pad, has_pay, nk, to_server, sendsyn
    uint8_t kinds[24]


cdef struct Verdict:  # one cache entry: what the loop needs of a Fingerprint, and its log text
    uint64_t hash
    CKey key
    int32_t label, line, dist, klass
    bint fuzzy, random_ttl, app
    const char* tail
    Py_ssize_t tail_n
    const char* mtu  # NULL: no mtu line
    Py_ssize_t mtu_n


cdef inline uint64_t ckey_hash(const CKey* k) noexcept nogil:
    cdef const uint8_t* b = <const uint8_t*>k
    cdef uint64_t h = 0, w
    cdef size_t i
    for i in range(0, sizeof(CKey) - sizeof(CKey) % 8, 8):
        memcpy(&w, b + i, 8)
        h = (h + w) * 0x9E3779B97F4A7C15ULL
    for i in range(sizeof(CKey) - sizeof(CKey) % 8, sizeof(CKey)):
        h = (h + b[i]) * 0x100000001B3ULL
    return fmix(h)


cdef inline void flow_key(uint8_t* k, const CPkt* p, bint forward) noexcept nogil:
    """(client, client port, server, server port): the packet's source first when `forward`."""
    memset(k, 0, KEY)
    k[0] = p.alen
    cdef unsigned int cport = p.sport if forward else p.dport
    cdef unsigned int sport = p.dport if forward else p.sport
    k[2] = cport >> 8
    k[3] = cport & 0xFF
    k[4] = sport >> 8
    k[5] = sport & 0xFF
    if forward:
        memcpy(k + 8, p.src, p.alen)
        memcpy(k + 24, p.dst, p.alen)
    else:
        memcpy(k + 8, p.dst, p.alen)
        memcpy(k + 24, p.src, p.alen)


cdef inline void host_key(uint8_t* k, const uint8_t* addr, unsigned int alen) noexcept nogil:
    memset(k, 0, KEY)
    k[0] = alen
    memcpy(k + 8, addr, alen)


cdef char* w_reasons(char* o, long reason, char sep, bint quoted) noexcept:
    """p0f's reason words for the bits set, separated by `sep` (JSON strings when `quoted`); `???` when none
    (JSON: nothing, for an empty list)."""
    cdef bint first = True
    cdef int i
    cdef const char* word
    for i in range(N_REASONS):
        if reason & REASON_BIT[i]:
            if not first:
                o[0] = sep
                o += 1
            word = REASON_WORD[i]
            if quoted:
                o[0] = 34
                o = w_bytes(o + 1, word, strlen(word))
                o[0] = 34
                o += 1
            else:
                o = w_bytes(o, word, strlen(word))
            first = False
    if first and not quoted:
        o = w_bytes(o, b"???", 3)
    return o


cdef char* w_ip_text(char* o, const uint8_t* a, unsigned int alen) except NULL:
    """report.ip_text: a dotted quad, or IPv6 as Python's ipaddress writes it (the longest run of two or more
    zero groups, the first of equals, as ::)."""
    global _ip_text
    cdef int g[8]
    cdef int i, best = -1, best_len = 0, run = -1, run_len = 0
    cdef Py_ssize_t n
    if alen == 4:
        return w_addr(o, a, 4)
    if memcmp(a, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0:
        # IPv4-mapped: Python's own form (it changed between versions)
        if _ip_text is None:
            from fingerprintd.report import ip_text
            _ip_text = ip_text
        s = (<str>_ip_text(PyBytes_FromStringAndSize(<const char*>a, 16))).encode()
        n = PyBytes_GET_SIZE(s)
        return w_bytes(o, PyBytes_AS_STRING(s), n)
    for i in range(8):
        g[i] = (a[2 * i] << 8) | a[2 * i + 1]
        if g[i] == 0:
            if run < 0:
                run = i
            run_len += 1
            if run_len > best_len:
                best, best_len = run, run_len
        else:
            run, run_len = -1, 0
    if best_len < 2:
        best, best_len = -1, 0
    i = 0
    while i < 8:
        if i == best:
            o = w_bytes(o, b"::", 2)
            i += best_len
            continue
        if i and i != best + best_len:  # no colon after the ::
            o[0] = 58  # :
            o += 1
        o = w_hex(o, g[i])
        i += 1
    return o


cdef char* w_endpoint(char* o, const uint8_t* a, unsigned int alen, unsigned int port) except NULL:
    """report.endpoint: ip:port, IPv6 in brackets."""
    if alen == 16:
        o[0] = 91  # [
        o = w_ip_text(o + 1, a, alen)
        o[0] = 93  # ]
        o += 1
    else:
        o = w_ip_text(o, a, alen)
    o[0] = 58
    return w_uint(o + 1, port)


cdef char* w_json_round(char* o, double x, int digits) except NULL:
    """json of round(x, digits): round() keeps the double nearest the correctly rounded decimal, which is
    what reading back '%.{digits}f' gives; json writes float's repr."""
    cdef char* s = PyOS_double_to_string(x, b"f", digits, 0, NULL)
    cdef double y = PyOS_string_to_double(s, NULL, NULL)
    PyMem_Free(s)
    s = PyOS_double_to_string(y, b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
    o = w_bytes(o, s, strlen(s))
    PyMem_Free(s)
    return o


cdef enum:
    FMT_P0F = 0  # report's formats
    FMT_JSONL = 1
    FMT_TEXT = 2
    MOD_SYN = 0  # the observation's mod
    MOD_SYNACK = 1
    MOD_PROBE = 2
    MOD_RESPONSE = 3


cdef class Replay:
    """`fingerprintd replay --format FMT` for one engine: call it with next_batch's (buffer, metadata) and
    the link type; it returns the batch's lines (UTF-8) and adds to the engine's counters."""

    cdef object engine, matcher, tails, keep, label_of, names, classes
    cdef int fmt, link_for
    cdef bytes link_json  # jsonl: `"capture_link":"..."` for link_for
    cdef Table flows, hosts
    cdef Verdict* cache
    cdef int32_t* cache_slots
    cdef uint64_t cache_mask
    cdef int32_t cache_size, cache_count
    cdef Label* labels
    cdef int32_t n_labels, cap_labels
    cdef list label_sys  # per label: its `sys` as (is class, interned name) pairs, for tools
    cdef list class_names
    cdef long* class_counts
    cdef int32_t cap_classes
    cdef bint bugs, exact, host_records, all_ports
    cdef uint8_t ports[8192]  # a bit per port
    cdef int64_t max_conn, max_hosts, conn_max_age, host_idle, last_expire, packets
    cdef long skip_counts[16]
    cdef long n_not_syn, n_other_port, n_retransmit, n_stray, n_syn, n_synack, n_probe, n_response, hits
    cdef long n_uptime, n_change, n_sharing
    cdef int64_t head_sec
    cdef char head[48]
    cdef Py_ssize_t head_n
    cdef _Buf buf
    cdef char who[128]  # see put_who: at most 110 bytes
    cdef Py_ssize_t who_n
    cdef Flow scratch  # a destroyed flow's last state, for the host records that still read it

    def __cinit__(self):
        self.cache = NULL
        self.cache_slots = NULL
        self.labels = NULL
        self.class_counts = NULL
        self.flows.base = self.hosts.base = NULL
        self.flows.prev = self.flows.next = self.flows.slots = NULL
        self.hosts.prev = self.hosts.next = self.hosts.slots = NULL

    def __init__(self, engine, str fmt, tails):
        """`tails(fp, pkt)`: a stack's part of the line in `fmt` (report._REPLAY_TAILS), and p0f's mtu line."""
        self.fmt = {"p0f-log": FMT_P0F, "jsonl": FMT_JSONL, "text": FMT_TEXT}[fmt]
        self.link_for = -1
        self.engine = engine
        self.matcher = engine.matcher
        self.tails = tails
        self.bugs = engine.p0f_bugs
        self.exact = engine.nat_exact
        self.host_records = engine.host_records
        self.all_ports = engine.ports is None
        memset(self.ports, 0, sizeof(self.ports))
        if not self.all_ports:
            for port in engine.ports:
                if 0 <= port < 65536:
                    self.ports[port >> 3] |= 1 << (port & 7)
        limits = getattr(engine.flows, "limits", None) or _flows.FlowLimits()
        self.max_conn = limits.max_conn
        self.max_hosts = limits.max_hosts
        self.conn_max_age = limits.conn_max_age
        self.host_idle = limits.host_idle
        tb_init(&self.flows, sizeof(Flow), 1024)
        tb_init(&self.hosts, sizeof(Host), 1024)
        self.keep = []  # per cache entry: (Fingerprint, tail bytes, mtu bytes), which its pointers read
        self.new_cache()
        self.label_of = {}  # id(Label) -> index; the Label is kept in label_sys's list entry
        self.names = {}  # interned strings (OS names, classes)
        self.label_sys = []
        self.class_names = []
        self.classes = {}
        self.head_sec = -1
        self.buf = _Buf()

    def __dealloc__(self):
        tb_free(&self.flows)
        tb_free(&self.hosts)
        free(self.cache)
        free(self.cache_slots)
        free(self.labels)
        free(self.class_counts)

    cdef int new_cache(self) except -1:
        """An empty match cache with the matcher's bound (at start, and for a new matcher)."""
        free(self.cache)
        free(self.cache_slots)
        self.cache_size = max(1, self.matcher.cache_size)
        self.cache = <Verdict*>malloc(self.cache_size * sizeof(Verdict))
        cdef uint64_t size = 16
        while size < <uint64_t>self.cache_size * 2:
            size <<= 1
        self.cache_slots = <int32_t*>malloc(size * sizeof(int32_t))
        if self.cache == NULL or self.cache_slots == NULL:
            raise MemoryError()
        self.cache_mask = size - 1
        memset(self.cache_slots, 0xFF, size * sizeof(int32_t))
        self.cache_count = 0
        del self.keep[:]
        return 0

    # -- interning --------------------------------------------------------

    cdef int32_t intern(self, str s) except -2:
        got = self.names.get(s)
        if got is None:
            got = self.names[s] = len(self.names)
        return got

    cdef int32_t label_index(self, label) except -2:
        if label is None:
            return -1
        got = self.label_of.get(id(label))
        if got is not None:
            return got
        cdef int32_t i = self.n_labels
        if i == self.cap_labels:
            self.cap_labels = self.cap_labels * 2 if self.cap_labels else 64
            p = <Label*>realloc(self.labels, self.cap_labels * sizeof(Label))
            if p == NULL:
                raise MemoryError()
            self.labels = p
        self.labels[i].name = self.intern(label.name)
        self.labels[i].klass = self.intern(label.klass)
        self.labels[i].label_id = label.label_id
        self.labels[i].generic = label.generic
        self.labels[i].is_app = label.is_app
        sys = [(True, self.intern(e[1:])) if e.startswith("@") else (False, self.intern(e)) for e in label.sys]
        self.label_sys.append((label, sys))
        self.label_of[id(label)] = i
        self.n_labels += 1
        return i

    cdef int32_t class_index(self, str name) except -2:
        got = self.classes.get(name)
        if got is not None:
            return got
        cdef int32_t i = len(self.class_names)
        if i == self.cap_classes:
            self.cap_classes = self.cap_classes * 2 if self.cap_classes else 16
            p = <long*>realloc(self.class_counts, self.cap_classes * sizeof(long))
            if p == NULL:
                raise MemoryError()
            self.class_counts = p
        self.class_counts[i] = 0
        self.class_names.append(name)
        self.classes[name] = i
        return i

    # -- the match cache (Matcher.fingerprint's, mirrored) -------------------

    cdef const Verdict* verdict(self, const CPkt* p, double ts, bint to_server, unsigned int syn_mss,
                                bint sendsyn) except NULL:
        cdef CKey k
        memset(&k, 0, sizeof(CKey))
        k.quirks = p.quirks
        k.ip_opt_len = p.ip_opt_len
        k.tot_hdr = p.tot_hdr
        k.win = p.win
        k.mss = p.mss
        k.syn_mss = syn_mss
        k.ver = p.ver
        k.ttl = p.ttl
        k.tos = p.tos
        k.tcp_type = p.tcp_type
        k.wscale = p.wscale
        k.has_ts = p.ts1 != 0
        k.eol_pad = p.eol_pad
        k.has_pay = p.pay_len != 0
        k.nk = p.nk
        k.to_server = to_server
        k.sendsyn = sendsyn
        memcpy(k.kinds, p.kinds, p.nk)
        cdef uint64_t h = ckey_hash(&k)
        cdef uint64_t s = h & self.cache_mask
        cdef int32_t i
        while True:
            i = self.cache_slots[s]
            if i < 0:
                break
            if self.cache[i].hash == h and memcmp(&self.cache[i].key, &k, sizeof(CKey)) == 0:
                self.hits += 1
                return &self.cache[i]
            s = (s + 1) & self.cache_mask
        # A stack not cached: the matcher decides (and counts the miss), as on the pure path.
        pkt = packet_of(p, ts)
        fp = self.matcher.fingerprint(pkt, to_server, syn_mss, sendsyn)
        if self.cache_count >= self.cache_size:  # the matcher's own bound, kept in step with its dict
            self.cache_count = 0
            memset(self.cache_slots, 0xFF, (self.cache_mask + 1) * sizeof(int32_t))
            del self.keep[:]
            s = h & self.cache_mask
        i = self.cache_count
        self.cache_count += 1
        cdef Verdict* v = &self.cache[i]
        tail, mtu = self.tails(fp, pkt)
        tail_b = tail.encode()
        mtu_b = mtu.encode() if mtu is not None else None
        self.keep.append((fp, tail_b, mtu_b))
        v.hash = h
        v.key = k
        v.label = self.label_index(fp.label)
        v.line = fp.line
        v.dist = fp.dist
        v.klass = self.class_index(fp.mail_class)
        v.fuzzy = fp.fuzzy
        v.random_ttl = fp.random_ttl
        v.app = fp.app
        v.tail = PyBytes_AS_STRING(tail_b)
        v.tail_n = PyBytes_GET_SIZE(tail_b)
        if mtu_b is None:
            v.mtu = NULL
            v.mtu_n = 0
        else:
            v.mtu = PyBytes_AS_STRING(mtu_b)
            v.mtu_n = PyBytes_GET_SIZE(mtu_b)
        while self.cache_slots[s] >= 0:
            s = (s + 1) & self.cache_mask
        self.cache_slots[s] = i
        return v

    # -- p0f's flow and host books (flows.FlowTable) -------------------------

    cdef inline Flow* flow(self, int32_t i) noexcept:
        return <Flow*>at(&self.flows, i)

    cdef inline Host* host(self, int32_t i) noexcept:
        return <Host*>at(&self.hosts, i)

    cdef int tick(self, int64_t sec) except -1:
        self.packets += 1
        if self.packets % EXPIRE_INTERVAL == 0 and sec != self.last_expire:
            self.last_expire = sec
            self.expire(sec)
        return 0

    cdef int expire(self, int64_t now) except -1:
        cdef int32_t i = self.flows.first, nxt
        while i >= 0:
            if <uint32_t>(now - self.flow(i).created) <= self.conn_max_age:
                break
            nxt = self.flows.next[i]
            self.destroy(i)
            i = nxt
        i = self.hosts.first
        while i >= 0:
            if <uint32_t>(now - self.host(i).last_seen) <= self.host_idle:
                break
            nxt = self.hosts.next[i]
            if not self.host(i).use_cnt:
                tb_del(&self.hosts, i)
            i = nxt
        return 0

    cdef void destroy(self, int32_t i) noexcept:
        cdef Flow* f = self.flow(i)
        self.host(f.client).use_cnt -= 1
        self.host(f.server).use_cnt -= 1
        tb_del(&self.flows, i)

    cdef void nuke_flows(self) noexcept:
        cdef int32_t n = self.flows.count, k
        n = n if n < 1 + n * 10 // 100 else 1 + n * 10 // 100
        for k in range(n):
            self.destroy(self.flows.first)

    cdef int32_t host_of(self, const uint8_t* addr, unsigned int alen, int64_t now) except -1:
        cdef uint8_t k[KEY]
        host_key(k, addr, alen)
        cdef uint64_t h = key_hash(k)
        cdef int32_t i = tb_find(&self.hosts, k, h), oldest
        cdef Host* r
        if i < 0:
            if self.hosts.count > self.max_hosts:
                # p0f prunes flows, then frees the oldest host if idle: one at most.
                self.nuke_flows()
                oldest = self.hosts.first
                if oldest >= 0 and not self.host(oldest).use_cnt:
                    tb_del(&self.hosts, oldest)
            i = tb_add(&self.hosts, k, h)
            r = self.host(i)
            r.first_seen = r.last_seen = now
            r.last_class = r.last_name = -1
        else:
            self.host(i).last_seen = now
            tb_touch(&self.hosts, i)
        return i

    cdef int32_t lookup(self, const CPkt* p, bint* to_srv) noexcept:
        cdef uint8_t k[KEY]
        flow_key(k, p, True)
        cdef int32_t i = tb_find(&self.flows, k, key_hash(k))
        if i >= 0:
            to_srv[0] = True
            return i
        to_srv[0] = False
        flow_key(k, p, False)
        return tb_find(&self.flows, k, key_hash(k))

    cdef int32_t syn(self, const CPkt* p, int64_t now) except -2:
        """A SYN: the new flow, or -1 for a duplicate."""
        cdef uint8_t k[KEY]
        cdef uint8_t rk[KEY]
        flow_key(k, p, True)
        cdef uint64_t h = key_hash(k)
        cdef int32_t i = tb_find(&self.flows, k, h)
        if i >= 0:
            if <uint32_t>(self.flow(i).next_cli_seq - 1) == p.seq:
                return -1
            self.destroy(i)
        else:
            flow_key(rk, p, False)
            i = tb_find(&self.flows, rk, key_hash(rk))
            if i >= 0:  # the other side opened the same pair
                self.destroy(i)
        if self.flows.count > self.max_conn:
            self.nuke_flows()
        cdef int32_t client = self.host_of(p.src, p.alen, now)
        cdef int32_t server = self.host_of(p.dst, p.alen, now)
        cdef Host* c = self.host(client)
        c.use_cnt += 1
        c.total_conn += 1
        c = self.host(server)
        c.use_cnt += 1
        c.total_conn += 1
        i = tb_add(&self.flows, k, h)
        cdef Flow* f = self.flow(i)
        f.client = client
        f.server = server
        f.created = now
        f.next_cli_seq = p.seq + 1
        f.sendsyn = p.win == SENDSYN_WIN and p.mss == SENDSYN_MSS
        return i

    cdef int32_t synack(self, const CPkt* p) noexcept:
        """A SYN+ACK: its tracked flow if it should be fingerprinted, else -1."""
        cdef bint to_srv
        cdef int32_t i = self.lookup(p, &to_srv)
        if i < 0:
            return -1
        cdef Flow* f = self.flow(i)
        if f.sendsyn:
            return i
        if to_srv or f.acked:
            return -1
        f.acked = True
        return i

    cdef Flow* gone(self, int32_t i) noexcept:
        """Destroy a flow; its last state, for what still reads it (FlowTable hands out the object)."""
        self.scratch = self.flow(i)[0]
        self.destroy(i)
        return &self.scratch

    cdef Flow* other(self, const CPkt* p, bint* to_srv) noexcept:
        """ACK, FIN or RST (FlowTable.other): the flow when p0f reads the packet's timestamp, else NULL."""
        cdef int32_t i = self.lookup(p, to_srv)
        if i < 0:
            return NULL
        cdef Flow* f = self.flow(i)
        if p.tcp_type & (FIN | RST):
            return self.gone(i)
        if f.sendsyn or not f.acked:
            self.destroy(i)
            return NULL
        if to_srv[0]:
            if f.next_cli_seq != p.seq:
                return NULL
            f.next_cli_seq = f.next_cli_seq + <uint32_t>p.pay_len
        else:
            if f.next_srv_seq != p.seq:
                return NULL
            f.next_srv_seq = f.next_srv_seq + <uint32_t>p.pay_len
        if p.pay_len and not self.http_needs_more(f, p, to_srv[0]):
            return self.gone(i)
        return f

    cdef bint http_needs_more(self, Flow* f, const CPkt* p, bint to_srv) noexcept:
        if not to_srv or f.http < 0:
            return False
        cdef unsigned int have, take
        if f.http == 0:
            if f.req_n < 16:
                have = p.pay_len if p.pay_len < 16 else 16
                take = 16 - f.req_n
                take = have if have < take else take
                memcpy(f.request + f.req_n, p.payload, take)
                f.req_n += take
            if f.req_n < 15:
                return True
            f.http = 1 if (memcmp(f.request, b"GET /", 5) == 0 or memcmp(f.request, b"HEAD /", 6) == 0) else -1
        return f.http > 0

    # -- p0f's host records (nat.py) -----------------------------------------

    cdef int add_score(self, bint to_srv, Host* hd, long reason, long score, int64_t now,
                       Record* out) except -1:
        cdef uint8_t* ring = &hd.cli_scores[0] if to_srv else &hd.srv_scores[0]
        cdef int i
        cdef bint empty = True
        hd.nat_reasons |= reason
        for i in range(RING):
            if ring[i]:
                empty = False
                break
        if not score and empty:
            return 0
        for i in range(RING - 1):
            ring[i] = ring[i + 1]
        ring[RING - 1] = <uint8_t>score
        if not score:
            return 0
        cdef int over_5 = 0, over_2 = 0, over_1 = 0, over_0 = 0, s
        for i in range(RING):
            s = ring[i]
            if s >= 1:
                over_0 += 1
                if s >= 2:
                    over_1 += 1
                    if s >= 3:
                        over_2 += 1
                        if s >= 6:
                            over_5 += 1
        if over_5 > 2 or over_2 > 4 or over_1 > 6 or over_0 > 8:
            reason = hd.nat_reasons
            hd.last_nat = now
            memset(ring, 0, RING)
            hd.nat_reasons = 0
            out.kind = 2
        else:
            if score == 1:
                return 0
            hd.last_chg = now
            out.kind = 1
        out.reason = reason
        out.hits[0] = over_5
        out.hits[1] = over_2
        out.hits[2] = over_1
        out.hits[3] = over_0
        return 0

    cdef int compare(self, bint to_srv, const Sig* sig, const Sig* ref, Host* hd, long cli_port,
                     long* score_out, long* reason_out) except -1:
        cdef long score = 0, reason = 0, ttl_diff, last_port
        cdef bint diff_already = False
        cdef const Label* label = &self.labels[sig.label] if sig.label >= 0 else NULL
        cdef const Label* rlabel = &self.labels[ref.label] if ref.label >= 0 else NULL
        cdef uint64_t ms_diff, max_ts
        cdef uint32_t ts_diff
        if label == NULL or rlabel == NULL:
            if (sig.quirks ^ ref.quirks) & ~IGNORED_QUIRKS:
                reason |= NAT_UNK_DIFF
                score += 2
            elif to_srv and (sig.nk != ref.nk or memcmp(sig.layout, ref.layout, sig.nk) != 0):
                reason |= NAT_UNK_DIFF
                score += 1
            if to_srv and (label == NULL) != (rlabel == NULL):
                score += 1
                reason |= NAT_TO_UNK
        elif rlabel.name != label.name:
            score += 8
            reason |= NAT_OS_SIG
            diff_already = True
        elif to_srv:
            if rlabel.label_id != label.label_id:
                score += 2
                reason |= NAT_OS_SIG
            elif ref.line != sig.line:
                score += 1
                reason |= NAT_OS_SIG
            elif sig.fuzzy != ref.fuzzy:
                score += 1
                reason |= NAT_FUZZY

        if not diff_already and label != NULL and hd.last_class >= 0 and hd.last_name != label.name:
            score += 8
            reason |= NAT_OS_SIG
            diff_already = True

        ttl_diff = sig.ttl - ref.ttl
        if (not diff_already and ttl_diff and not sig.bad_ttl and not ref.bad_ttl
                and (sig.dist <= NEAR_TTL_LIMIT or ttl_diff > 1)):
            score += 1 if sig.dist > LOCAL_TTL_LIMIT and abs(ttl_diff) <= SMALL_TTL_CHG else 4
            reason |= NAT_TTL

        last_port = hd.last_port
        if self.exact and to_srv and last_port and cli_port < last_port and last_port - cli_port >= MIN_PORT_DROP:
            score += 1
            reason |= NAT_PORT

        if sig.mss != ref.mss:
            score += 1
            reason |= NAT_MSS

        if score and sig.ts1 and ref.ts1:
            ms_diff = <uint64_t>(sig.recv_ms - ref.recv_ms)
            if ms_diff < <uint64_t>MAX_NAT_TS:
                max_ts = (ms_diff if ms_diff > <uint64_t>TSTAMP_GRACE else <uint64_t>TSTAMP_GRACE) * MAX_TSCALE // 1000
                ts_diff = sig.ts1 - ref.ts1
                if ts_diff > max_ts and (ms_diff >= <uint64_t>TSTAMP_GRACE or <uint32_t>(~ts_diff) > max_ts):
                    if self.exact:
                        score += 4
                        reason |= NAT_TS
                else:
                    score //= 2
        score_out[0] = score
        reason_out[0] = reason
        return 0

    cdef int score_sig(self, bint to_srv, const Sig* sig, Host* hd, long cli_port, int64_t now,
                       Record* out) except -1:
        cdef const Sig* ref = (&hd.last_syn if hd.has_syn else NULL) if to_srv else (
            &hd.last_synack if hd.has_synack else NULL)
        cdef long score = 0, reason = 0
        cdef const Label* label = &self.labels[sig.label] if sig.label >= 0 else NULL
        if ref == NULL:
            if label != NULL and hd.last_class >= 0 and hd.last_name != label.name:
                reason |= NAT_OS_SIG
                score += 8
        else:
            self.compare(to_srv, sig, ref, hd, cli_port, &score, &reason)
        self.add_score(to_srv, hd, reason, score, now, out)
        if label != NULL:
            hd.last_class = label.klass
            hd.last_name = label.name
        hd.last_port = cli_port
        return 0

    cdef int verify_tool(self, bint to_srv, Host* hd, int32_t label, int64_t now, Record* out) except -1:
        if hd.last_class < 0:
            return 0
        for is_class, name in self.label_sys[label][1]:
            if (hd.last_class if is_class else hd.last_name) == name:
                return self.add_score(to_srv, hd, 0, 0, now, out)
        return self.add_score(to_srv, hd, NAT_APP_SIG, 4, now, out)

    cdef int check_uptime(self, bint to_srv, bint is_syn, uint32_t ts1, int64_t now_ms, const Sig* ref,
                          Host* hd, Flow* flow, Record* out) except -1:
        if not ts1:
            return 0
        if (flow.cli_tps if to_srv else flow.srv_tps) or ref == NULL or not ref.ts1:
            return 0
        cdef uint64_t ms_diff = <uint64_t>(now_ms - ref.recv_ms)
        cdef uint32_t ts_diff = ts1 - ref.ts1
        if ms_diff < <uint64_t>MIN_TWAIT or ms_diff > <uint64_t>MAX_TWAIT:
            return 0
        cdef uint32_t inv = ~ts_diff
        if ts_diff < 5 or (ms_diff < <uint64_t>TSTAMP_GRACE and inv // 1000 < MAX_TSCALE // TSTAMP_GRACE):
            return 0
        cdef double ffreq = (inv * -1000.0 / <double>ms_diff) if ts_diff > inv else (ts_diff * 1000.0 / <double>ms_diff)
        if ffreq < MIN_TSCALE or ffreq > MAX_TSCALE:
            if not is_syn:
                if to_srv:
                    flow.cli_tps = -1
                else:
                    flow.srv_tps = -1
            return 0
        cdef long freq = <long>ffreq
        if freq == 0:
            freq = 1
        elif freq <= 10:
            pass
        elif freq <= 50:
            freq = (freq + 3) // 5 * 5
        elif freq <= 100:
            freq = (freq + 7) // 10 * 10
        elif freq <= 500:
            freq = (freq + 33) // 50 * 50
        else:
            freq = (freq + 67) // 100 * 100
        if to_srv:
            flow.cli_tps = freq
        else:
            flow.srv_tps = freq
        out.up = True
        out.minutes = ts1 // freq // 60
        out.modulo_days = <uint32_t>0xFFFFFFFF // (freq * 60 * 60 * 24)
        out.freq = ffreq
        return 0

    cdef int on_syn(self, bint to_srv, Flow* flow, const CPkt* p, const Verdict* v, int64_t now, int64_t now_ms,
                    Record* out) except -1:
        cdef Host* hd = self.host(flow.client if to_srv else flow.server)
        if not hd.has_nat:
            hd.has_nat = True
        if v.label >= 0 and self.labels[v.label].is_app:
            return self.verify_tool(to_srv, hd, v.label, now, out)
        if flow.sendsyn:
            return 0
        cdef Sig sig
        sig.label = v.label
        sig.line = v.line
        sig.fuzzy = v.fuzzy
        sig.bad_ttl = v.random_ttl
        sig.dist = v.dist
        sig.ttl = p.ttl
        sig.quirks = p.quirks
        sig.nk = p.nk
        memcpy(sig.layout, p.kinds, p.nk)
        sig.mss = p.mss
        sig.ts1 = p.ts1
        sig.recv_ms = now_ms
        self.score_sig(to_srv, &sig, hd, p.sport if to_srv else p.dport, now, out)
        if to_srv:
            self.check_uptime(True, True, p.ts1, now_ms, &hd.last_syn if hd.has_syn else NULL, hd, flow, out)
            hd.last_syn = sig
            hd.has_syn = True
        else:
            self.check_uptime(False, False, p.ts1, now_ms, &hd.last_synack if hd.has_synack else NULL, hd, flow,
                              out)
            hd.last_synack = sig
            hd.has_synack = True
        return 0

    cdef int on_other(self, Flow* flow, bint to_srv, const CPkt* p, int64_t now_ms, Record* out) except -1:
        if flow.sendsyn:
            return 0
        cdef Host* hd = self.host(flow.client if to_srv else flow.server)
        if not hd.has_nat:
            return 0
        if to_srv:
            return self.check_uptime(True, False, p.ts1, now_ms, &hd.last_syn if hd.has_syn else NULL, hd, flow,
                                     out)
        return self.check_uptime(False, False, p.ts1, now_ms, &hd.last_synack if hd.has_synack else NULL, hd,
                                 flow, out)

    # -- the log (report.p0f_log_formatter) ----------------------------------

    cdef int set_head(self, int64_t sec) except -1:
        """The line's start for this second: p0f's `[%Y/%m/%d %H:%M:%S] mod=`, or text's `%Y-%m-%d %H:%M:%S `."""
        cdef time_t t = sec
        cdef tm parts
        cdef size_t n
        if sec == self.head_sec:
            return 0
        self.head_sec = sec
        if localtime_r(&t, &parts) == NULL:
            raise OverflowError("timestamp out of range for localtime")
        if self.fmt == FMT_P0F:
            self.head[0] = b"["
            n = strftime(self.head + 1, sizeof(self.head) - 8, b"%Y/%m/%d %H:%M:%S", &parts)
            memcpy(self.head + 1 + n, b"] mod=", 6)
            self.head_n = 1 + n + 6
        else:
            n = strftime(self.head, sizeof(self.head) - 8, b"%Y-%m-%d %H:%M:%S", &parts)
            self.head[n] = b" "
            self.head_n = n + 1
        return 0

    cdef void put_who(self, const CPkt* p, bint to_srv) noexcept:
        """The |cli=...|srv=...|subj=...| part every line of the packet carries."""
        cdef char* o = self.who
        o = w_bytes(o, b"|cli=", 5)
        if to_srv:
            o = w_addr(o, p.src, p.alen)
            o[0] = 47  # /
            o = w_uint(o + 1, p.sport)
            o = w_bytes(o, b"|srv=", 5)
            o = w_addr(o, p.dst, p.alen)
            o[0] = 47
            o = w_uint(o + 1, p.dport)
            o = w_bytes(o, b"|subj=cli|", 10)
        else:
            o = w_addr(o, p.dst, p.alen)
            o[0] = 47
            o = w_uint(o + 1, p.dport)
            o = w_bytes(o, b"|srv=", 5)
            o = w_addr(o, p.src, p.alen)
            o[0] = 47
            o = w_uint(o + 1, p.sport)
            o = w_bytes(o, b"|subj=srv|", 10)
        self.who_n = o - self.who

    cdef inline char* line_start(self, char* o, const char* mod, Py_ssize_t n) noexcept:
        o = w_bytes(o, self.head, self.head_n)
        o = w_bytes(o, mod, n)
        return w_bytes(o, self.who, self.who_n)

    cdef char* put_uptime(self, char* o, const Record* r) noexcept:
        cdef int64_t m = r.minutes
        o = self.line_start(o, b"uptime", 6)
        o += snprintf(o, 160, b"uptime=%lld days %lld hrs %lld min (modulo %lld days)|raw_freq=%.2f Hz\n",
                      <long long>(m // 60 // 24), <long long>(m // 60 % 24), <long long>(m % 60),
                      <long long>r.modulo_days, r.freq)
        return o

    cdef char* p0f_lines(self, char* o, const CPkt* p, bint to_srv, int64_t sec, int mod, const Verdict* v,
                         const Record* r) except NULL:
        """A fingerprinted packet's p0f log lines: the observation, its host record, mtu and uptime."""
        self.set_head(sec)
        self.put_who(p, to_srv)
        o = self.line_start(o, MOD_NAME[mod], MOD_LEN[mod])
        o = w_bytes(o, v.tail, v.tail_n)
        if r.kind:
            o = self.put_nat(o, r)
        if v.mtu != NULL:
            o = self.line_start(o, b"mtu", 3)
            o = w_bytes(o, v.mtu, v.mtu_n)
        if r.up:
            o = self.put_uptime(o, r)
        return o

    cdef char* put_nat(self, char* o, const Record* r) noexcept:
        cdef bint first = True
        cdef int i
        cdef const char* word
        o = self.line_start(o, KIND_NAME[r.kind], strlen(KIND_NAME[r.kind]))
        o = w_bytes(o, b"reason=", 7)
        o = w_reasons(o, r.reason, 32, False)
        o = w_bytes(o, b"|raw_hits=", 10)
        for i in range(4):
            if i:
                o[0] = 44  # ,
                o += 1
            o = w_uint(o, r.hits[i])
        o[0] = 10
        return o + 1

    # -- JSON lines and text (report.jsonl_formatter, report.text_formatter) ----------------------

    cdef char* json_ends(self, char* o, const CPkt* p, bint to_srv) except NULL:
        """"client":{"ip":...,"port":...},"server":{...}"""
        o = w_bytes(o, b'"client":{"ip":"', 16)
        o = w_ip_text(o, &p.src[0] if to_srv else &p.dst[0], p.alen)
        o = w_bytes(o, b'","port":', 9)
        o = w_uint(o, p.sport if to_srv else p.dport)
        o = w_bytes(o, b'},"server":{"ip":"', 18)
        o = w_ip_text(o, &p.dst[0] if to_srv else &p.src[0], p.alen)
        o = w_bytes(o, b'","port":', 9)
        o = w_uint(o, p.dport if to_srv else p.sport)
        o[0] = 125  # }
        return o + 1

    cdef char* json_records(self, char* o, const Record* r) except NULL:
        """"nat":...,"uptime":...}\n"""
        cdef int i
        if r.kind:
            o = w_bytes(o, b',"nat":{"kind":"', 16)
            o = w_bytes(o, KIND_NAME[r.kind], strlen(KIND_NAME[r.kind]))
            o = w_bytes(o, b'","reason":[', 12)
            o = w_reasons(o, r.reason, 44, True)
            o = w_bytes(o, b'],"raw_hits":[', 14)
            for i in range(4):
                if i:
                    o[0] = 44
                    o += 1
                o = w_uint(o, r.hits[i])
            o = w_bytes(o, b"]}", 2)
        else:
            o = w_bytes(o, b',"nat":null', 11)
        if r.up:
            o = w_bytes(o, b',"uptime":{"minutes":', 21)
            o = w_uint(o, r.minutes)
            o = w_bytes(o, b',"modulo_days":', 15)
            o = w_uint(o, r.modulo_days)
            o = w_bytes(o, b',"freq_hz":', 11)
            o = w_json_round(o, r.freq, 2)
            o = w_bytes(o, b"}}\n", 3)
        else:
            o = w_bytes(o, b',"uptime":null}\n', 16)
        return o

    cdef char* json_ts(self, char* o, uint32_t sec, uint32_t usec) except NULL:
        """json of round(sec + usec * 1e-6, 6).  From 1 s to 2**33 s that is the decimal sec.usec itself,
        trailing zeros dropped: doubles there are under 1e-6 apart, so round() lands on the double nearest
        that decimal and repr gives the decimal back.  Elsewhere, the general route."""
        cdef uint64_t micros = <uint64_t>sec * 1000000 + usec
        cdef uint64_t whole = micros // 1000000
        cdef uint32_t frac = micros % 1000000
        cdef int digits = 6
        if whole < 1 or whole >= (<uint64_t>1 << 33):
            return w_json_round(o, sec + usec * 1e-6, 6)  # the frame's ts, as one() and packet_of have it
        o = w_uint(o, whole)
        o[0] = 46  # .
        o += 1
        if not frac:
            o[0] = 48
            return o + 1
        while frac % 10 == 0:
            frac //= 10
            digits -= 1
        o += digits
        cdef char* d = o
        while digits:
            d -= 1
            d[0] = <char>(48 + frac % 10)
            frac //= 10
            digits -= 1
        return o

    cdef char* json_line(self, char* o, const CPkt* p, bint to_srv, uint32_t sec, uint32_t usec, int mod,
                         const Verdict* v,
                         const Record* r) except NULL:
        o = w_bytes(o, b'{"ts":', 6)
        o = self.json_ts(o, sec, usec)
        if to_srv:
            o = w_bytes(o, b',"mod":"syn"', 12)
        else:
            o = w_bytes(o, b',"mod":"syn+ack"', 16)
        if mod == MOD_PROBE or mod == MOD_RESPONSE:
            o = w_bytes(o, b',"sendsyn":true,', 16)
        else:
            o = w_bytes(o, b',"sendsyn":false,', 17)
        o = self.json_ends(o, p, to_srv)
        o[0] = 44
        o = w_bytes(o + 1, v.tail, v.tail_n)
        o = w_bytes(o, PyBytes_AS_STRING(self.link_json), PyBytes_GET_SIZE(self.link_json))
        return self.json_records(o, r)

    cdef char* json_uptime(self, char* o, const CPkt* p, bint to_srv, uint32_t sec, uint32_t usec,
                           const Record* r) except NULL:
        o = w_bytes(o, b'{"ts":', 6)
        o = self.json_ts(o, sec, usec)
        if to_srv:
            o = w_bytes(o, b',"mod":"uptime","subject":"client",', 35)
        else:
            o = w_bytes(o, b',"mod":"uptime","subject":"server",', 35)
        o = self.json_ends(o, p, to_srv)
        return self.json_records(o, r)

    cdef char* text_where(self, char* o, const CPkt* p, bint to_srv) except NULL:
        """client -> server, or client <- server for a SYN+ACK."""
        o = w_endpoint(o, &p.src[0] if to_srv else &p.dst[0], p.alen, p.sport if to_srv else p.dport)
        o = w_bytes(o, b" -> " if to_srv else b" <- ", 4)
        return w_endpoint(o, &p.dst[0] if to_srv else &p.src[0], p.alen, p.dport if to_srv else p.sport)

    cdef char* text_records(self, char* o, const Record* r) noexcept:
        cdef const char* kind
        if r.kind:
            o[0] = 32
            kind = KIND_WORD[r.kind]
            o = w_bytes(o + 1, kind, strlen(kind))
            o[0] = 61  # =
            o = w_reasons(o + 1, r.reason, 44, False)
        if r.up:
            o += snprintf(o, 64, b" uptime=%lldmin/%.2fHz", <long long>r.minutes, r.freq)
        o[0] = 10
        return o + 1

    cdef char* text_line(self, char* o, const CPkt* p, bint to_srv, int mod, const Verdict* v,
                         const Record* r) except NULL:
        cdef Py_ssize_t n = MOD_LEN[mod]
        o = w_bytes(o, self.head, self.head_n)
        o = w_bytes(o, MOD_NAME[mod], n)
        while n < 7:  # {mod:<7}
            o[0] = 32
            o += 1
            n += 1
        o[0] = 32
        o = self.text_where(o + 1, p, to_srv)
        o = w_bytes(o, v.tail, v.tail_n)
        return self.text_records(o, r)

    cdef char* text_uptime(self, char* o, const CPkt* p, bint to_srv, const Record* r) except NULL:
        o = w_bytes(o, self.head, self.head_n)
        o = w_bytes(o, b"uptime  ", 8)
        o = self.text_where(o, p, to_srv)
        o[0] = 32
        return self.text_records(o + 1, r)

    # -- the loop (engine.Engine._feed_batch) ---------------------------------

    cdef inline int count_syn(self, bint sendsyn, const Verdict* v) noexcept:
        """A fingerprinted SYN's counts; its mod."""
        self.class_counts[v.klass] += 1
        if sendsyn:
            self.n_probe += 1
            return MOD_PROBE
        self.n_syn += 1
        return MOD_SYN

    cdef inline void count_records(self, const Record* r) noexcept:
        """The host records a fingerprinted packet set off."""
        if r.kind == 1:
            self.n_change += 1
        elif r.kind == 2:
            self.n_sharing += 1
        if r.up:
            self.n_uptime += 1

    cdef int one(self, CPkt* pp, int code, uint32_t sec, uint32_t usec) except -1:
        """One frame, parsed by parse_c into *pp (`code`: its skip reason, or 0)."""
        cdef const CPkt* p = pp
        cdef Record rec
        cdef bint to_srv
        cdef Flow* f
        cdef int32_t i
        cdef const Verdict* v
        cdef int mod
        cdef char* o
        cdef double ts = sec + usec * 1e-6
        cdef int64_t now_ms = <int64_t>sec * 1000 + usec // 1000
        self.tick(sec)
        if code:
            self.skip_counts[code] += 1
            return 0
        memset(&rec, 0, sizeof(Record))
        if p.tcp_type != SYN and p.tcp_type != (SYN | ACK):
            f = self.other(p, &to_srv)
            self.n_not_syn += 1
            if f != NULL and self.host_records:
                self.on_other(f, to_srv, p, now_ms, &rec)
                if rec.up:
                    self.n_uptime += 1
                    o = self.buf.reserve(2 * LINE_ROOM)
                    if self.fmt == FMT_P0F:
                        self.set_head(<int64_t>ts)
                        self.put_who(p, to_srv)
                        o = self.put_uptime(o, &rec)
                    elif self.fmt == FMT_JSONL:
                        o = self.json_uptime(o, p, to_srv, sec, usec, &rec)
                    else:
                        self.set_head(<int64_t>ts)
                        o = self.text_uptime(o, p, to_srv, &rec)
                    self.buf.size = o - self.buf.data
            return 0
        if not self.all_ports and not (self.ports[p.dport >> 3] & (1 << (p.dport & 7))) and not (
                self.ports[p.sport >> 3] & (1 << (p.sport & 7))):
            self.n_other_port += 1
            return 0
        if p.tcp_type == SYN:
            i = self.syn(p, <int64_t>ts)
            if i < 0:
                self.n_retransmit += 1
                return 0
            f = self.flow(i)
            v = self.verdict(p, ts, True, 0, f.sendsyn)
            f = self.flow(i)  # the matcher ran Python: nothing moved the books, but read them again
            f.syn_mss = p.mss
            if v.app and not f.sendsyn:
                f = self.gone(i)
            mod = self.count_syn(f.sendsyn, v)
            to_srv = True
        else:
            i = self.synack(p)
            if i < 0:
                self.n_stray += 1
                return 0
            f = self.flow(i)
            v = self.verdict(p, ts, False, f.syn_mss, f.sendsyn)
            f = self.flow(i)
            if f.sendsyn or v.app:
                f = self.gone(i)
            else:
                f.next_srv_seq = p.seq + 1
            if f.sendsyn:
                mod = MOD_RESPONSE
                self.n_response += 1
            else:
                mod = MOD_SYNACK
                self.n_synack += 1
            to_srv = False
        self.on_syn(to_srv, f, p, v, sec, now_ms, &rec)
        self.count_records(&rec)
        # Room for the four lines a packet can make: the fixed parts, and the verdict's two tails.
        o = self.buf.reserve(4 * LINE_ROOM + v.tail_n + v.mtu_n)
        if self.fmt == FMT_P0F:
            o = self.p0f_lines(o, p, to_srv, <int64_t>ts, mod, v, &rec)
        elif self.fmt == FMT_JSONL:
            o = self.json_line(o, p, to_srv, sec, usec, mod, v, &rec)
        else:
            self.set_head(<int64_t>ts)
            o = self.text_line(o, p, to_srv, mod, v, &rec)
        self.buf.size = o - self.buf.data
        return 0

    def into(self, blob, meta, int linktype, write):
        """Process pcapy next_batch's frames (`blob`, and (sec, usec, offset, caplen) records in `meta`),
        handing their lines to `write` as a memoryview of this loop's buffer, valid only during the call: a
        file's write takes them with no copy (and no fresh megabyte of memory per batch)."""
        with self.engine._lock:
            self.run(blob, meta, linktype)
            if self.buf.size:
                view = PyMemoryView_FromMemory(self.buf.data, self.buf.size, PyBUF_READ)
                try:
                    write(view)
                finally:
                    view.release()
            self.buf.size = 0

    cdef int run(self, blob, meta, int linktype) except -1:
        cdef const uint8_t[::1] b = blob
        cdef const uint8_t[::1] m = meta
        cdef Py_ssize_t count = m.shape[0] // 16, i, j, s
        cdef const uint8_t* base = &b[0] if b.shape[0] else <const uint8_t*>b""
        cdef const uint32_t* recs = <const uint32_t*>&m[0] if count else NULL
        cdef uint32_t r[4]
        # A three-stage pipeline over the batch, for the host table's memory latency: frame j is parsed
        # and its client's index slot fetched, frame j-1's host record is fetched, frame j-2 is processed
        # (parse_c is pure, so parsing ahead changes nothing; a prefetch is only a hint).
        cdef CPkt pk[3]
        cdef int code[3]
        cdef uint64_t slot[3]  # the client's index slot + 1; 0 when not a SYN
        cdef uint8_t k[KEY]
        cdef int32_t at_i
        cdef char* rec_at
        for i in range(count):
            memcpy(r, recs + 4 * i, 16)
            if <Py_ssize_t>r[2] + r[3] > b.shape[0]:
                raise ValueError("next_batch metadata points past its buffer")
        if self.fmt == FMT_JSONL and linktype != self.link_for:
            self.link_json = (',"capture_link":' + _json_str(_pk.link_name(linktype))).encode()
            self.link_for = linktype
        self.buf.size = 0
        try:
            for j in range(count + 2):
                if j < count:
                    s = j % 3
                    memcpy(r, recs + 4 * j, 16)
                    code[s] = parse_c(base + r[2], r[3], linktype, self.bugs, &pk[s])
                    slot[s] = 0
                    if not code[s] and pk[s].tcp_type == SYN:
                        host_key(k, pk[s].src, pk[s].alen)
                        slot[s] = (key_hash(k) & self.hosts.mask) + 1
                        __builtin_prefetch(&self.hosts.slots[slot[s] - 1])
                if 1 <= j <= count:
                    s = (j - 1) % 3
                    if slot[s]:
                        at_i = self.hosts.slots[slot[s] - 1]
                        if at_i >= 0:
                            rec_at = <char*>at(&self.hosts, at_i)
                            __builtin_prefetch(rec_at)
                            __builtin_prefetch(rec_at + 64)
                            __builtin_prefetch(rec_at + 128)
                if j >= 2:
                    s = (j - 2) % 3
                    memcpy(r, recs + 4 * (j - 2), 16)
                    self.one(&pk[s], code[s], r[0], r[1])
        finally:
            self.finish(count)
        return 0

    cdef int finish(self, Py_ssize_t count) except -1:
        eng = self.engine
        skipped = eng.skipped
        cdef int c
        for c in range(1, len(REASONS)):
            if self.skip_counts[c]:
                skipped[REASONS[c]] += self.skip_counts[c]
                self.skip_counts[c] = 0
        if self.n_change:
            eng.records["host change"] += self.n_change
        if self.n_sharing:
            eng.records["ip sharing"] += self.n_sharing
        classes = eng.syn_classes
        for c in range(len(self.class_names)):
            if self.class_counts[c]:
                classes[self.class_names[c]] += self.class_counts[c]
                self.class_counts[c] = 0
        add_counts(eng, self.matcher, self.n_not_syn, self.n_other_port, self.n_retransmit, self.n_stray,
                   self.n_syn, self.n_synack, self.n_probe, self.n_response, self.n_uptime, self.hits, count)
        self.n_not_syn = self.n_other_port = self.n_retransmit = self.n_stray = 0
        self.n_syn = self.n_synack = self.n_probe = self.n_response = self.hits = 0
        self.n_change = self.n_sharing = self.n_uptime = 0
        return 0


# ---------------------------------------------------------------------------
# The live service's capture path: engine.Engine._feed_batch on flows.RecentSyns, then what
# service.Service._deliver does with the observations (hosts.HostTable.add_batch's records, the p0f log),
# on the same C structs.

from fingerprintd._chosts cimport Syn, SynWithRecords

from fingerprintd import hosts as _hosts

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(object op)

cdef tuple MOD_STR = ("syn", "syn+ack", "sendsyn probe", "sendsyn response")  # by MOD_*
cdef tuple KIND_STR = (None, "host change", "ip sharing")  # by Record.kind
cdef object conn_key = _hosts.conn_key
cdef object shared_where = _hosts.shared_where
cdef object reason_words = _nat.reason_words
cdef object _new_tuple = tuple.__new__


cdef inline uint32_t u32be(const uint8_t* a) noexcept nogil:
    return (<uint32_t>a[0] << 24) | (<uint32_t>a[1] << 16) | (<uint32_t>a[2] << 8) | a[3]


cdef class LiveLoop(Replay):
    """`fingerprintd serve`'s capture thread for one engine on the live books (flows.RecentSyns) and one
    compiled host table: `feed` takes next_batch's buffers and gives back the batch's table records
    (hosts.Syn, for HostTable.add_syns), its Observations only when asked (Watch streams, Redis) and its
    p0f log lines only when asked.

    RecentSyns is kept here as two of the tables replay uses: `flows` holds the 4-tuples of the last
    `size` SYNs with their ISN (next_cli_seq), `hosts` the last `max_hosts` clients with their host
    records' state (nat.py), both in least-recently-written order.  A SIGHUP's new matcher is picked up
    at the next batch, with an empty match cache (the Matcher's own starts empty too)."""

    cdef int64_t size, live_hosts
    cdef int linktype
    cdef bint want_obs
    cdef list syns, observations
    cdef dict servers  # the host table's interned (server, port, mod, linktype)
    cdef object where  # the last SYN's, for the next one to the same server
    cdef uint8_t where_dst[16]
    cdef unsigned int where_alen, where_port
    cdef int where_mod, where_link
    cdef object observation  # engine.Observation

    def __init__(self, engine, tails, table):
        """`tails`: report.p0f_tails; `table`: the compiled HostTable whose `_servers` interns `where`."""
        Replay.__init__(self, engine, "p0f-log", tails)
        from fingerprintd.engine import Observation

        books = engine.flows
        self.size = books.size
        self.live_hosts = books.max_hosts
        self.servers = table._servers
        self.observation = Observation
        self.where = None

    def feed(self, blob, meta, int linktype, bint log, bint observations):
        """One next_batch: (its Syns, its Observations or None, its log lines as bytes or None)."""
        with self.engine._lock:
            if self.engine.matcher is not self.matcher:  # reloaded
                self.matcher = self.engine.matcher
                self.new_cache()
            self.linktype = linktype
            self.want_obs = observations
            self.syns = []
            self.observations = [] if observations else None
            self.buf.size = 0
            self.fmt = FMT_P0F if log else -1
            self.run(blob, meta, linktype)
            text = PyBytes_FromStringAndSize(self.buf.data, self.buf.size) if self.buf.size else None
            self.buf.size = 0
        return self.syns, self.observations, text

    cdef int32_t live_host(self, const CPkt* p, int64_t now) except -1:
        """RecentSyns.syn's host entry for the client: found and moved last, or made (the least recently
        seen one leaving when the books are full)."""
        cdef uint8_t k[KEY]
        host_key(k, p.src, p.alen)
        cdef uint64_t h = key_hash(k)
        cdef int32_t i = tb_find(&self.hosts, k, h)
        cdef Host* r
        if i >= 0:
            self.host(i).last_seen = now
            tb_touch(&self.hosts, i)
            return i
        if self.hosts.count >= self.live_hosts and self.hosts.first >= 0:
            tb_del(&self.hosts, self.hosts.first)
        i = tb_add(&self.hosts, k, h)
        r = self.host(i)
        r.first_seen = r.last_seen = now
        r.last_class = r.last_name = -1
        return i

    cdef object where_of(self, const CPkt* p, int mod):
        """(server, port, mod, linktype), interned as HostTable.add_batch does it."""
        cdef bint same = self.where is not None and self.where_alen == p.alen and self.where_port == p.dport
        same = same and self.where_mod == mod and self.where_link == self.linktype
        if same and memcmp(self.where_dst, p.dst, p.alen) == 0:
            return self.where
        cdef object dst = PyBytes_FromStringAndSize(<const char*>p.dst, p.alen)
        cdef object shared = shared_where(self.servers, (dst, p.dport, MOD_STR[mod], self.linktype))
        self.where = shared
        memcpy(self.where_dst, p.dst, p.alen)
        self.where_alen = p.alen
        self.where_port = p.dport
        self.where_mod = mod
        self.where_link = self.linktype
        return shared

    cdef int one(self, CPkt* pp, int code, uint32_t sec, uint32_t usec) except -1:
        cdef const CPkt* p = pp
        cdef Record rec
        cdef uint8_t k[KEY]
        cdef uint64_t h
        cdef int32_t i
        cdef const Verdict* v
        cdef int mod
        cdef char* o
        cdef bint sendsyn
        cdef Syn syn
        cdef SynWithRecords with_records
        cdef double ts = sec + usec * 1e-6
        cdef int64_t now_ms = <int64_t>sec * 1000 + usec // 1000
        if code:
            self.skip_counts[code] += 1
            return 0
        if p.tcp_type != SYN and p.tcp_type != (SYN | ACK):
            self.n_not_syn += 1  # RecentSyns.other: nothing is tracked
            return 0
        if not self.all_ports and not (self.ports[p.dport >> 3] & (1 << (p.dport & 7))) and not (
                self.ports[p.sport >> 3] & (1 << (p.sport & 7))):
            self.n_other_port += 1
            return 0
        if p.tcp_type != SYN:
            self.n_stray += 1  # RecentSyns.synack: SYN+ACKs are not tracked
            return 0
        # RecentSyns.syn: a retransmission when this 4-tuple came with this ISN among the last `size` SYNs.
        flow_key(k, p, True)
        h = key_hash(k)
        i = tb_find(&self.flows, k, h)
        if i >= 0:
            if self.flow(i).next_cli_seq == p.seq:
                self.n_retransmit += 1
                return 0
            tb_touch(&self.flows, i)
        else:
            if self.flows.count >= self.size and self.flows.first >= 0:
                tb_del(&self.flows, self.flows.first)
            i = tb_add(&self.flows, k, h)
        self.flow(i).next_cli_seq = p.seq
        memset(&self.scratch, 0, sizeof(Flow))  # RecentSyns' stand-in flow: the client's host, no state
        self.scratch.client = self.live_host(p, <int64_t>ts)
        sendsyn = self.scratch.sendsyn = p.win == SENDSYN_WIN and p.mss == SENDSYN_MSS
        v = self.verdict(p, ts, True, 0, sendsyn)
        mod = self.count_syn(sendsyn, v)
        memset(&rec, 0, sizeof(Record))
        self.on_syn(True, &self.scratch, p, v, sec, now_ms, &rec)
        self.count_records(&rec)
        if self.fmt == FMT_P0F:
            o = self.buf.reserve(4 * LINE_ROOM + v.tail_n + v.mtu_n)
            o = self.p0f_lines(o, p, True, <int64_t>ts, mod, v, &rec)
            self.buf.size = o - self.buf.data
        fp = (<tuple>self.keep[v - self.cache])[0]
        if p.alen == 4:
            key = PyLong_FromUnsignedLongLong((<uint64_t>u32be(p.src) << 16) | p.sport)
        else:
            key = conn_key(PyBytes_FromStringAndSize(<const char*>p.src, 16), p.sport)
        nat = uptime = None
        if rec.kind or rec.up:
            if rec.kind:
                nat = _nat.NatRecord(KIND_STR[rec.kind], reason_words(rec.reason),
                                     (rec.hits[0], rec.hits[1], rec.hits[2], rec.hits[3]))
            if rec.up:
                uptime = _nat.Uptime(rec.minutes, rec.modulo_days, rec.freq)
            with_records = SynWithRecords.__new__(SynWithRecords)
            with_records.nat = nat
            with_records.uptime = uptime
            syn = with_records
        else:
            syn = Syn.__new__(Syn)
        syn.ts = ts
        syn.key = key
        syn.ttl = p.ttl
        syn.where = self.where_of(p, mod)
        syn.fp = fp
        # Out of the garbage collector's sight: a full table is millions of these, and the collector's
        # middle generation rescanning them paused this thread for over 100 ms (a 1.2 million source
        # flood), longer than p0f's 2 MiB kernel ring holds at 280k SYN/s.  A Syn cannot be part of a
        # cycle: it holds an int, an interned tuple, a shared Fingerprint and NamedTuple records.
        PyObject_GC_UnTrack(syn)
        self.syns.append(syn)
        if self.want_obs:
            self.observations.append(_new_tuple(self.observation, (
                MOD_STR[mod], packet_of(p, ts), fp, self.linktype, True, nat, uptime)))
        return 0
