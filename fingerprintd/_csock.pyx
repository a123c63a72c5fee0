# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The p0f socket's query loop in C (see fingerprintd/accel.py): compat.P0fSocketServer._loop is the reference.

The usual query, one 21-byte recv() answered by one 232-byte send() on a
connection with nothing buffered, runs here without a Python object: the
epoll wait (the GIL released, so the capture thread runs meanwhile), the
recv into a C buffer, the query's check, the answer from a memo of packed
answers, and the send.  Everything else is the reference's own code, called
back: accepting (_accept), a connection with something buffered, pipelined
or partial queries, end of file and a client that does not read (_serve),
errors (_close), the idle sweep (_sweep), and an answer not in the memo
(compat.answer_until, which calls compat.p0f_answer with the server's memo).

The memo: address -> (the table's generation, until when, the packed
answer).  The host table bumps its generation on every write, so an answer
packed while it read G is still the answer while it reads G, up to the
host's expiry (the table's own clock): no table lookup for a repeat query
while no SYN arrives.  It is set-associative with a fixed size (MEMO_SETS x
MEMO_WAYS answers): per address the answer's 40 bytes of numbers, and its
192 bytes of names kept once per distinct value (as compat._names makes them
once per pair of verdicts), about 3 MB at most, allocated as used; it is used only for
a table with a `generation` (not for store.SharedLookup, whose Redis answers
change with no local write).

What the reference keeps per connection (client.active, for the idle sweep)
is kept here per descriptor for the connections served here, and handed to
the connections' records before each sweep; the memo's answers, which asked
no lookup of the table, are added to its lookups/hits counters at each sweep
(at most a second late).  The stop flag is seen at every wake-up; the stop
event and a selector closed under the loop when idle and at each sweep.  tests/test_compat_csock.py drives both loops with the same
queries and requires the same bytes and counters.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno  # EWOULDBLOCK is EAGAIN on Linux
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy, memset, strerror

import time

__source_sha256__ = SOURCE_SHA256  # set by setup.py: accel.py refuses a build older than this file


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64

    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum: EPOLLIN


cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    enum: MSG_NOSIGNAL


cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec

    int clock_gettime(int clock, timespec *ts)
    enum: CLOCK_MONOTONIC


cdef enum:
    QUERY_SIZE = 21
    RESPONSE_SIZE = 232
    HEAD_SIZE = 40  # the answer's numbers (compat._HEAD), then its names (compat._NAMES)
    NAMES_SIZE = 192
    NAMES_MAX = 1024  # distinct names kept; more, and the memo starts over
    POLL_EVENTS = 64  # as compat.POLL_EVENTS
    MEMO_SETS = 8192  # a power of two
    MEMO_WAYS = 4


cdef struct Entry:  # the answers' numbers apart (`heads`): a set's entries share a cache line or two
    uint64_t hi, lo  # the address: an IPv4 one in lo's low 32 bits
    long gen  # the table's generation when the answer was packed
    double until  # the host's expiry, on the table's clock
    uint8_t kind  # 0: empty, 4 or 6
    uint8_t found  # a host (counted as a lookup hit), not "no match"
    uint16_t names  # its names: which of `names`


cdef inline double monotonic() nogil:
    """time.monotonic(): the same clock (CLOCK_MONOTONIC), as the reference's `now`."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline uint64_t load64(const char *p) nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint32_t load32(const char *p) nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef class Loop:
    """One P0fSocketServer's loop: `run()` in place of its _loop."""

    cdef object server, conns, hosts, memo, stop, sel, compat, no_match, timer
    cdef int listen_fd, recv_size
    cdef bint memo_on, own_clock
    cdef uint8_t *plain  # per descriptor: a connection with nothing buffered, served here
    cdef double *active  # per descriptor: its last answer here (client.active, handed over before a sweep)
    cdef int cap
    cdef Entry *entries
    cdef char *heads  # HEAD_SIZE bytes per entry, in the entries' order
    cdef char *names  # NAMES_SIZE bytes per distinct names
    cdef uint64_t *names_hash
    cdef int32_t *names_index  # 2 x NAMES_MAX slots, open addressing by hash: 1 + a names' number, 0 free
    cdef int names_count
    cdef char out[RESPONSE_SIZE]  # a kept answer, put together to be sent
    cdef long gen  # the table's generation, read since the GIL was last let go (gen_known)
    cdef bint gen_known
    cdef public bint stopping  # P0fSocketServer.stop(): seen at the next wake-up, before the event is
    cdef uint32_t victim
    cdef char *buf
    cdef char head4[5]
    cdef char head6[5]
    cdef char bad[RESPONSE_SIZE]
    cdef readonly unsigned long long queries, bad_queries  # the usual queries answered here
    cdef long table_lookups, table_hits  # memo answers not yet counted in the table's lookups/hits

    def __cinit__(self):
        self.plain = NULL
        self.active = NULL
        self.entries = NULL
        self.heads = NULL
        self.names = NULL
        self.names_hash = NULL
        self.names_index = NULL
        self.buf = NULL

    def __init__(self, server):
        from fingerprintd import compat  # here: compat imports accel, which imports this module

        self.compat = compat
        self.server = server
        self.conns = server._conns
        self.hosts = server.hosts
        self.memo = server._memo
        self.stop = server._stop
        self.sel = server._sel
        self.listen_fd = server.sock.fileno()
        self.recv_size = server._recv_size
        self.buf = <char *>calloc(self.recv_size, 1)
        self.no_match = compat.NO_MATCH_RESPONSE
        memcpy(self.head4, PyBytes_AS_STRING(compat._V4_QUERY), 5)
        memcpy(self.head6, PyBytes_AS_STRING(compat._V6_QUERY), 5)
        bad = compat.BAD_QUERY_RESPONSE
        assert PyBytes_GET_SIZE(bad) == RESPONSE_SIZE
        memcpy(self.bad, PyBytes_AS_STRING(bad), RESPONSE_SIZE)
        self.memo_on = hasattr(self.hosts, "generation") and hasattr(self.hosts, "timer")
        self.timer = self.hosts.timer if self.memo_on else None
        self.own_clock = self.timer is time.monotonic
        if self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.plain)
        free(self.active)
        self._free_memo()
        free(self.buf)

    cdef int _grow(self, int fd) except -1:
        cdef int cap = self.cap
        cdef int new = cap * 2 if cap else 64
        while new <= fd:
            new *= 2
        plain = <uint8_t *>realloc(self.plain, new)
        if plain == NULL:
            raise MemoryError()
        self.plain = plain
        active = <double *>realloc(self.active, new * sizeof(double))
        if active == NULL:
            raise MemoryError()
        self.active = active
        memset(self.plain + cap, 0, new - cap)
        memset(self.active + cap, 0, (new - cap) * sizeof(double))
        self.cap = new
        return 0

    def run(self):
        """The loop, until the server's stop event (the reference's _loop, line for line where it is Python)."""
        cdef epoll_event events[POLL_EVENTS]
        cdef int n, epfd, err, timeout
        cdef double now, next_sweep, interval
        cdef bint listening = True
        server, conns, stop = self.server, self.conns, self.stop
        ep = self.sel
        ep.register(self.listen_fd, EPOLLIN)
        interval = min(1.0, server.idle_timeout / 4)
        next_sweep = monotonic() + interval
        epfd = ep.fileno()
        try:
            while not self.stopping:
                timeout = 200 if listening else 50
                with nogil:
                    n = epoll_wait(epfd, events, POLL_EVENTS, timeout)
                    err = errno
                self.gen_known = False  # other threads ran meanwhile
                if n <= 0:
                    # The stop event and the selector are looked at when idle and at each sweep, not at every
                    # wake-up (the selector closed under the loop: as its own poll(), a ValueError).
                    if stop.is_set():
                        return
                    epfd = ep.fileno()
                    if n < 0:
                        if err == EINTR:
                            continue
                        raise OSError(err, strerror(err).decode())
                now = monotonic()
                listening = self._events(events, n, now, listening)
                if not listening and now >= server._paused_until:
                    ep.register(self.listen_fd, EPOLLIN)
                    listening = True
                if now >= next_sweep:
                    next_sweep = now + interval
                    if stop.is_set():
                        return
                    epfd = ep.fileno()
                    if self.table_lookups:
                        self._count_lookups()
                    self._hand_over_active()
                    server._sweep(now)
        finally:
            if self.table_lookups:
                self._count_lookups()

    cdef bint _events(self, epoll_event *events, int n, double now, bint listening) except -1:
        """One wake-up's events; whether the listening socket is still watched."""
        cdef int i, fd
        cdef uint32_t ev
        cdef double table_now = -1.0  # the table's clock, read once per wake-up when the memo is asked
        server, conns = self.server, self.conns
        for i in range(n):
            fd = events[i].data.fd
            ev = events[i].events
            if ev == EPOLLIN and fd < self.cap and self.plain[fd]:
                table_now = self._query(fd, now, table_now)
                continue
            client = conns.get(fd)
            self.gen_known = False  # Python code runs below: other threads may too
            if client is None:
                if fd == self.listen_fd:
                    listening = server._accept()
                continue
            if ev != EPOLLIN or client.out or client.inbuf:
                server._serve(client, ev, now, None)
                continue
            if fd >= self.cap:
                self._grow(fd)
            self.plain[fd] = 1
            table_now = self._query(fd, now, table_now)
        return listening

    cdef double _query(self, int fd, double now, double table_now) except? -2.0:
        """The usual query on a connection with nothing buffered; anything else goes to the reference's
        code.  Returns the table's clock if it was read (-1 if not yet)."""
        cdef ssize_t got, sent
        cdef int err
        cdef const char *answer
        cdef Entry *e
        got = recv(fd, self.buf, self.recv_size, 0)
        if got < 0:
            err = errno
            if err == EAGAIN or err == EINTR:
                return table_now
            self._fall_back(fd, None, now, 0)  # the client went away mid-query: forget it, nothing else
            return table_now
        if got != QUERY_SIZE:  # end of file, pipelined or partial queries
            self._fall_back(fd, PyBytes_FromStringAndSize(self.buf, got), now, 1)
            return table_now
        kept = None
        if memcmp(self.buf, self.head4, 5) != 0 and memcmp(self.buf, self.head6, 5) != 0:
            answer = self.bad
            self.bad_queries += 1
        elif self.memo_on:
            if table_now < 0:
                if self.own_clock:
                    table_now = now
                else:
                    table_now = self.timer()
                    self.gen_known = False
            e = self._slot(table_now)
            if e != NULL:
                memcpy(self.out, self.heads + (e - self.entries) * HEAD_SIZE, HEAD_SIZE)
                memcpy(self.out + HEAD_SIZE, self.names + e.names * NAMES_SIZE, NAMES_SIZE)
                answer = self.out
            else:
                kept = self._miss(table_now)
                answer = PyBytes_AS_STRING(kept)
        else:
            kept = self.compat.p0f_answer(PyBytes_FromStringAndSize(self.buf, QUERY_SIZE), self.hosts, self.memo)
            self.gen_known = False
            if kept is self.compat.BAD_QUERY_RESPONSE:
                self.bad_queries += 1
            answer = PyBytes_AS_STRING(kept)
        self.queries += 1
        self.active[fd] = now
        sent = send(fd, answer, RESPONSE_SIZE, MSG_NOSIGNAL)
        if sent == RESPONSE_SIZE:
            return table_now
        if sent < 0:
            err = errno
            if err != EAGAIN and err != EINTR:
                self._fall_back(fd, None, now, 0)
                return table_now
            sent = 0
        # The client's buffer is full: the rest waits for it.
        self._fall_back(fd, PyBytes_FromStringAndSize(answer + sent, RESPONSE_SIZE - sent), now, 2)
        return table_now

    cdef int _fall_back(self, int fd, object data, double now, int how) except -1:
        """The connection leaves the fast path: 0 close it, 1 _serve what was read, 2 _serve an unsent rest."""
        self.plain[fd] = 0
        self.gen_known = False
        client = self.conns.get(fd)
        if client is None:
            return 0
        if how == 0:
            self.server._close(client)
        elif how == 1:
            self.server._serve(client, EPOLLIN, now, data)
        else:
            client.active = now
            client.out += data
            self.server._serve(client, 0, now, None)
        return 0

    cdef Entry *_key(self, uint64_t *hi, uint64_t *lo, uint8_t *kind) noexcept:
        """The address of the query in buf (an IPv4-mapped IPv6 one as its IPv4 address: the SYN carried
        that) and its memo set."""
        cdef const char *addr = self.buf + 5
        cdef uint64_t h
        if self.buf[4] == 4 or memcmp(addr, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0:
            kind[0] = 4
            hi[0] = 0
            lo[0] = load32(addr if self.buf[4] == 4 else addr + 12)
        else:
            kind[0] = 6
            hi[0] = load64(addr)
            lo[0] = load64(addr + 8)
        h = (hi[0] * <uint64_t>0x9E3779B97F4A7C15ULL) ^ (lo[0] * <uint64_t>0xC2B2AE3D27D4EB4FULL)
        h ^= h >> 29
        return self.entries + ((h >> 17) & (MEMO_SETS - 1)) * MEMO_WAYS if self.entries != NULL else NULL

    cdef Entry *_slot(self, double table_now) except? NULL:
        """The memo's answer to the query in buf if it still holds, else NULL."""
        cdef uint64_t hi, lo
        cdef uint8_t kind
        cdef Entry *s = self._key(&hi, &lo, &kind)
        cdef int w
        if s == NULL:
            return NULL
        if not self.gen_known:
            self.gen = self.hosts.generation
            self.gen_known = True
        for w in range(MEMO_WAYS):
            if s[w].kind == kind and s[w].lo == lo and s[w].hi == hi:
                if s[w].gen == self.gen and table_now < s[w].until:
                    self.table_lookups += 1
                    self.table_hits += s[w].found
                    return &s[w]
                return NULL
        return NULL

    cdef bytes _miss(self, double table_now):
        """The reference's answer (compat.answer_until: p0f_answer and the server's memo), kept here."""
        cdef uint64_t hi, lo
        cdef uint8_t kind
        cdef Entry *s
        cdef Entry *e = NULL
        cdef long gen = self.hosts.generation  # before the lookup: a write meanwhile makes the entry stale
        cdef double until
        cdef int w, names_at
        answer, until = self.compat.answer_until(PyBytes_FromStringAndSize(self.buf, QUERY_SIZE), self.hosts,
                                                 self.memo)
        self.gen_known = False
        if PyBytes_GET_SIZE(answer) != RESPONSE_SIZE or not until > table_now:
            return answer
        if self.entries == NULL:
            # Untouched pages cost nothing: the memory grows with the addresses asked about.
            self.entries = <Entry *>calloc(MEMO_SETS * MEMO_WAYS, sizeof(Entry))
            self.heads = <char *>calloc(MEMO_SETS * MEMO_WAYS, HEAD_SIZE)
            self.names = <char *>calloc(NAMES_MAX, NAMES_SIZE)
            self.names_hash = <uint64_t *>calloc(NAMES_MAX, sizeof(uint64_t))
            self.names_index = <int32_t *>calloc(2 * NAMES_MAX, sizeof(int32_t))
            if self.entries == NULL or self.heads == NULL or self.names == NULL or self.names_hash == NULL \
                    or self.names_index == NULL:
                self._free_memo()
                return answer
        names_at = self._intern(PyBytes_AS_STRING(answer) + HEAD_SIZE)
        s = self._key(&hi, &lo, &kind)
        for w in range(MEMO_WAYS):
            if s[w].kind == kind and s[w].lo == lo and s[w].hi == hi:
                e = &s[w]
                break
        if e == NULL:
            for w in range(MEMO_WAYS):
                if s[w].kind == 0:
                    e = &s[w]
                    break
        if e == NULL:
            e = &s[self.victim & (MEMO_WAYS - 1)]
            self.victim += 1
        e.kind, e.hi, e.lo, e.gen, e.until, e.names = kind, hi, lo, gen, until, <uint16_t>names_at
        e.found = answer is not self.no_match
        memcpy(self.heads + (e - self.entries) * HEAD_SIZE, PyBytes_AS_STRING(answer), HEAD_SIZE)
        return answer

    cdef int _intern(self, const char *names) noexcept:
        """The number of these 192 bytes of names among those kept (kept now if new).  When NAMES_MAX
        are kept already, they and every entry are dropped first (the entries name them by number)."""
        cdef uint64_t h = 14695981039346656037ULL  # FNV-1a
        cdef int i, at
        for i in range(NAMES_SIZE):
            h = (h ^ <uint8_t>names[i]) * 1099511628211ULL
        at = <int>(h & (2 * NAMES_MAX - 1))
        while self.names_index[at]:
            i = self.names_index[at] - 1
            if self.names_hash[i] == h and memcmp(self.names + i * NAMES_SIZE, names, NAMES_SIZE) == 0:
                return i
            at = (at + 1) & (2 * NAMES_MAX - 1)
        if self.names_count == NAMES_MAX:
            memset(self.entries, 0, MEMO_SETS * MEMO_WAYS * sizeof(Entry))
            memset(self.names_index, 0, 2 * NAMES_MAX * sizeof(int32_t))
            self.names_count = 0
            at = <int>(h & (2 * NAMES_MAX - 1))
        i = self.names_count
        self.names_count += 1
        memcpy(self.names + i * NAMES_SIZE, names, NAMES_SIZE)
        self.names_hash[i] = h
        self.names_index[at] = i + 1
        return i

    cdef void _free_memo(self) noexcept:
        free(self.entries)
        free(self.heads)
        free(self.names)
        free(self.names_hash)
        free(self.names_index)
        self.entries = NULL
        self.heads = NULL
        self.names = NULL
        self.names_hash = NULL
        self.names_index = NULL

    cdef int _count_lookups(self) except -1:
        """The memo's answers as the lookups they stand for, in the table's counters (under its lock, as
        its own lookup counts them)."""
        hosts = self.hosts
        with hosts._lock:
            hosts.lookups += self.table_lookups
            hosts.hits += self.table_hits
        self.table_lookups = self.table_hits = 0
        return 0

    cdef int _hand_over_active(self) except -1:
        """The last answers given here, into the connections' records: what the idle sweep reads."""
        cdef int fd
        for fd, client in self.conns.items():
            if fd < self.cap and self.active[fd] > client.active:
                client.active = self.active[fd]
        return 0
