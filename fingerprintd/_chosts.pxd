# Types for the compiled copy of hosts.py (setup.py, an augmenting .pxd): the table's records become C
# structs with the same attributes (their times C doubles, not a float object each), and the capture
# thread's add_batch reads them without the interpreter; the code is hosts.py's own.
cimport cython


cdef class Syn:
    cdef public double ts, expires
    cdef public object key, where, fp
    cdef public int ttl


cdef class SynWithRecords(Syn):
    cdef public object nat, uptime


cdef class HostRecord:
    cdef public double first_seen, last_seen, last_change, expires, last_ip_sharing, last_host_change
    cdef public long count, changes
    cdef public object last_distance, signatures, os_names, latest, last_match
    cdef public object uptime_minutes, uptime_modulo_days

    cpdef _records(self, Syn obs)

    @cython.locals(sigs=list, names=list, ts=double)
    cpdef update(self, Syn obs)


cdef class ExpiringLRU:
    cdef public object maxsize, timer, _data
    cdef public double ttl
    cdef public long _writes


cdef class HostTable:
    cdef public ExpiringLRU connections, hosts
    cdef public double ttl, _expires, _fresh_until
    cdef public object timer, _servers, _lock, _arrived, arrival_hooks
    cdef public long added, lookups, hits, _writes, _waiting, generation

    @cython.locals(servers=dict, syns=list)
    cpdef add_batch(self, observations)

    @cython.locals(max_conns=Py_ssize_t, max_hosts=Py_ssize_t, now=double, expires=double,
                   added=long, writes=long, size=Py_ssize_t, syn=Syn, record=HostRecord)
    cpdef add_syns(self, list syns)
