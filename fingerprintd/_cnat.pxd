# Types for the compiled copy of nat.py (setup.py, an augmenting .pxd): the host state becomes a C
# struct with the same attributes; the code is nat.py's own.
cimport cython


cdef class HostState:
    cdef public object last_syn, last_synack, last_class, last_name, last_flavor, last_nat, last_chg
    cdef public object last_up_min, up_mod_days
    cdef public bytes cli_scores, srv_scores
    cdef public long last_quality, nat_reasons, last_port


@cython.locals(hd=HostState)
cpdef score_sig(to_srv, sig, hd, cli_port, now, exact)

@cython.locals(hd=HostState, score=long, reason=long, diff_already=bint)
cpdef _compare(to_srv, sig, ref, hd, cli_port, exact)

@cython.locals(hd=HostState, over_5=long, over_2=long, over_1=long, over_0=long, s=long)
cpdef add_score(to_srv, hd, reason, score, now)

@cython.locals(hd=HostState)
cpdef _store(hd, to_srv, ring)

@cython.locals(hd=HostState)
cpdef verify_tool(to_srv, hd, sys, now)

@cython.locals(hd=HostState)
cpdef check_uptime(to_srv, is_syn, ts1, now_ms, ref, hd, flow)

@cython.locals(hd=HostState)
cpdef on_syn(to_srv, flow, pkt, fp, now, now_ms, exact)

@cython.locals(hd=HostState)
cpdef on_other(flow, to_srv, pkt, now_ms)
