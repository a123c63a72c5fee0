# Types for the compiled copy of signatures.py (setup.py, an augmenting .pxd): the per-field comparison's Rule
# becomes a C struct with C methods, which the compiled matcher calls directly (_cmatcher.pxd cimports it).
# The parser is compiled too but not used: the database is read by the pure module.
cimport cython

cdef long MAX_DIST, WIN_ANY, WIN_NORMAL, WIN_MOD, WIN_MSS, WIN_MTU, ANY
cdef long FIT_EXACT, FIT_FUZZY_QUIRKS, FIT_FUZZY_TTL
cdef long MISS_QUIRKS, MISS_EOL_PAD, MISS_OLEN, MISS_TTL, MISS_MSS, MISS_WSCALE, MISS_PCLASS
cdef long _FUZZY_DELETABLE, _FUZZY_ADDABLE


cdef class Rule:
    cdef public object sig, layout, label
    cdef public long line, ttl, olen, eol_pad, mss, wscale, pclass, win_type, win, quirks4, quirks6
    cdef public bint bad_ttl, generic, tool

    cpdef long wants_quirks(self, long ver)

    @cython.locals(want=long, verdict=long)
    cpdef long fit(self, long ver, long ttl, long olen, long quirks, bint flow, long eol_pad, long mss, long wscale,
                   long pclass)

    @cython.locals(wt=long)
    cpdef bint window_fits(self, long win, long multi, bint use_mtu)


@cython.locals(div=long)
cpdef tuple win_multiplier(long win, long mss, long ts1, long ip_ver, long tot_hdr, long syn_mss)
