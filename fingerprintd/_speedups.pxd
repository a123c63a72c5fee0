# What the compiled replay loop (_replay.pyx) takes from _speedups.pyx: the parser's C form and the buffer.
cimport cython
from libc.stdint cimport uint8_t, uint32_t


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


@cython.final
cdef class _Buf:
    cdef char* data
    cdef Py_ssize_t size, cap

    cdef int grow(self, Py_ssize_t need) except -1
    cdef int put(self, const char* s, Py_ssize_t n) except -1
    cdef int put_str(self, str s) except -1
    cdef int put_uint(self, unsigned long v) except -1
    cdef int put_hex(self, unsigned int v) except -1
    cdef int put_addr(self, bytes a) except -1
    cdef int put_raw_addr(self, const uint8_t* p, unsigned int alen) except -1
    cdef str take(self)
