# Types for the compiled copy of flows.py (setup.py): Cython's "augmenting .pxd", so the books'
# classes become C structs with the same attributes and the same code, with no second source to keep.
cimport cython


cdef class Host:
    cdef public object first_seen, last_seen, nat
    cdef public long use_cnt, total_conn


cdef class Flow:
    cdef public object key, created, next_cli_seq, syn_mss, next_srv_seq, request, cli_tps, srv_tps
    cdef public Host client, server
    cdef public bint sendsyn, acked
    cdef public long http


cdef class FlowTable:
    cdef public object limits, flows, hosts, _last_expire
    cdef public long packets

    cpdef tick(self, sec)
    cpdef syn_done(self, flow, pkt, app)
    cpdef synack_done(self, flow, pkt, app)

    @cython.locals(flow=Flow)
    cpdef _destroy(self, key)

    @cython.locals(flow=Flow)
    cpdef _nuke_flows(self)

    @cython.locals(host=Host)
    cpdef Host _host(self, key, now)

    @cython.locals(flow=Flow, client=Host, server=Host)
    cpdef syn(self, pkt)

    @cython.locals(flow=Flow)
    cpdef synack(self, pkt)

    @cython.locals(flow=Flow)
    cpdef other(self, pkt)


cdef class RecentSyns:
    cdef public object seen, hosts
    cdef public long size, max_hosts

    cpdef tick(self, sec)
    cpdef syn_done(self, flow, pkt, app)
    cpdef synack(self, pkt)
    cpdef synack_done(self, flow, pkt, app)
    cpdef other(self, pkt)

    @cython.locals(host=Host)
    cpdef syn(self, pkt)
