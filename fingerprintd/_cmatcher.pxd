# Types for the compiled copy of matcher.py (setup.py, an augmenting .pxd): the search and the rendering run
# on C ints, and call the comparison (signatures.Rule, compiled from signatures.py: _csignatures.pxd) as C.
cimport cython
from fingerprintd._csignatures cimport Rule, win_multiplier

cdef long MAX_DIST, ANY, FIT_EXACT, FIT_FUZZY_QUIRKS, FIT_FUZZY_TTL, MISS_QUIRKS
cdef long Q_FLOW, SENDSYN_MSS, SYN, ACK, _FALLBACK_QUIRKS, _MEMO_SIZE
cdef long _P_GENERIC, _P_FUZZY, _P_RANDOM_TTL, _P_EXCESS_DIST
cdef list _NO_RULES
cdef dict _PARAMS


cpdef long guess_dist(long ttl)


cdef class _Layout:
    cdef public list wild
    cdef public dict same, merged

    cpdef list candidates(self, long mss)


cdef class Matcher:
    cdef public object db, mode, classes, fallback, cache_size
    cdef public bint flow_twin
    cdef public dict cache, _buckets, _index, _mtu, _layout_text, _quirks_text, _mail_class
    cdef public long hits, misses

    @cython.locals(index=_Layout)
    cpdef list _candidates(self, bint to_server, bytes layout, long mss)

    @cython.locals(rule=Rule, fmatch=Rule, gmatch=Rule, verdict=long)
    cpdef tuple _search(self, bint to_server, bytes layout, long ver, long ttl, long olen, long quirks, bint flow,
                        long eol_pad, long mss, long wscale, long pclass, long win, long multi, bint use_mtu)

    cpdef object _family(self, bint to_server, long quirks, long ttl, bytes layout, long eol_pad, long win, long mss)
    cpdef str _layout_str(self, bytes layout, long eol_pad)
    cpdef str _quirks_str(self, long quirks)
    cpdef str _class_of(self, object label)

    @cython.locals(rule=Rule, ver=long, ttl=long, tos=long, olen=long, quirks=long, tcp_type=long, win=long, mss=long,
                   wscale=long, eol_pad=long, tot_hdr=long, multi=long, use_mtu=bint, probe_quirks=long, flow=bint,
                   dist=long, g=long, raw_mtu=long, generic=bint, random_ttl=bint, line=long, app=bint, has_ts=bint,
                   has_pay=bint, fuzzy=bint, flags=long)
    cpdef object _render(self, tuple shape, bint to_server, long syn_mss, bint sendsyn)
