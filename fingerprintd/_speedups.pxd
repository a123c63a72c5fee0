# What the compiled replay loop (_replay.pyx) takes from _speedups.pyx: the parser's C form and the buffer.
cimport cython
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy


cdef enum:
    MAX_TCP_OPT = 24
    # parse_c's skip codes: _speedups.REASONS names them.
    C_TRUNCATED = 1
    C_NOT_IP = 2
    C_NOT_TCP = 3
    C_FRAGMENT = 4
    C_BAD_IP = 5
    C_BAD_TCP = 6
    C_BAD_FLAGS = 7
    C_LINK = 8
    C_IPV6_EXT = 9
    C_VLAN = 10


# packet.Packet's fields as parse_c leaves them (addresses packed, options as their kinds).
cdef struct CPkt:
    unsigned int ver, alen, sport, dport, ttl, tos, tcp_type, win, mss, wscale, nk, eol_pad
    uint8_t src[16]
    uint8_t dst[16]
    uint8_t kinds[MAX_TCP_OPT]
    uint32_t seq, ts1
    Py_ssize_t ip_opt_len, pay_len, tot_hdr
    unsigned long quirks
    const uint8_t* payload  # into the frame: valid while it is


cdef int parse_c(const uint8_t* d, Py_ssize_t n, int linktype, bint bugs, CPkt* p) noexcept nogil
cdef object packet_of(const CPkt* p, object ts)
cdef int add_counts(engine, matcher, long not_syn, long other_port, long retransmit, long stray, long syn,
                    long synack, long probe, long response, long uptime, long hits, Py_ssize_t packets) except -1


# Writers for log text: each writes at `o` and returns the end; the caller has made the room.

cdef inline char* w_bytes(char* o, const char* s, Py_ssize_t n) noexcept nogil:
    memcpy(o, s, n)
    return o + n


cdef inline char* w_uint(char* o, unsigned long v) noexcept nogil:
    """Decimal digits: at most 20 bytes."""
    cdef char tmp[24]
    cdef int i = 24
    if v == 0:
        o[0] = 48
        return o + 1
    while v:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
    memcpy(o, tmp + i, 24 - i)
    return o + 24 - i


cdef inline char* w_hex(char* o, unsigned int v) noexcept nogil:
    """Lowercase hex digits, no leading zeros: at most 8 bytes."""
    cdef char tmp[8]
    cdef int i = 8
    cdef const char* digits = "0123456789abcdef"
    if v == 0:
        o[0] = 48
        return o + 1
    while v:
        i -= 1
        tmp[i] = digits[v & 15]
        v >>= 4
    memcpy(o, tmp + i, 8 - i)
    return o + 8 - i


cdef inline char* w_octet(char* o, unsigned int v) noexcept nogil:
    """0..255 in decimal, without a division loop."""
    if v >= 100:
        o[0] = <char>(48 + v // 100)
        o[1] = <char>(48 + v // 10 % 10)
        o[2] = <char>(48 + v % 10)
        return o + 3
    if v >= 10:
        o[0] = <char>(48 + v // 10)
        o[1] = <char>(48 + v % 10)
        return o + 2
    o[0] = <char>(48 + v)
    return o + 1


cdef inline char* w_addr(char* o, const uint8_t* p, unsigned int alen) noexcept nogil:
    """p0f's address form: dotted quad, or eight uncompressed hex groups (at most 39 bytes)."""
    cdef int i
    if alen == 4:
        for i in range(4):
            if i:
                o[0] = 46  # .
                o += 1
            o = w_octet(o, p[i])
    else:
        for i in range(8):
            if i:
                o[0] = 58  # :
                o += 1
            o = w_hex(o, (p[2 * i] << 8) | p[2 * i + 1])
    return o


@cython.final
cdef class _Buf:
    cdef char* data
    cdef Py_ssize_t size, cap

    cdef int grow(self, Py_ssize_t need) except -1
    cdef char* reserve(self, Py_ssize_t n) except NULL
    cdef int put(self, const char* s, Py_ssize_t n) except -1
    cdef int put_str(self, str s) except -1
    cdef int put_uint(self, unsigned long v) except -1
    cdef int put_addr(self, bytes a) except -1
    cdef str take(self)
