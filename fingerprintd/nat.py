"""p0f's host-change, IP-sharing and uptime records, kept on its host books.

p0f compares every SYN with the previous SYN from the same address (and every
SYN+ACK with the previous SYN+ACK from it) and scores what changed: another
OS, another line, TTL, MSS, a source port going back, timestamps that cannot
come from one clock (``fp_tcp.c:score_nat``).  The scores go into a 32-entry
ring per host and direction; a ring with enough high scores is "ip sharing",
a single score of 2 or more is "host change" (``process.c:add_nat_score``).
Timestamp progression between a host's packets also gives its uptime
(``fp_tcp.c:check_ts_tcp``).  This module is that logic, to the bit when
`exact` is set (``--p0f-bugs``), so its records equal p0f's.

By default two of p0f's signals are not scored, because today's stacks set
them off on a single host (see README, "Host change and IP sharing"):

* timestamps that jump: Linux (since 4.10), macOS/iOS and Windows offset the
  TCP timestamp per connection, so two SYNs of one host look like two clocks
  (p0f adds 4).  Timestamps that *do* progress like one clock still halve the
  score, as in p0f: that evidence is still good.
* the source port going back: ports are randomized (RFC 6056; Linux's
  per-destination offsets, parallel connects), so a drop says nothing.

The functions here are pure: they read and update the `Host` record they are
given (fields named as in p0f's ``host_data``) and return the record to log.
"""

from __future__ import annotations

from typing import NamedTuple

from fingerprintd.packet import Q_DF, Q_ECN, Q_NZ_ID, Q_ZERO_ID
from fingerprintd.signatures import Label

# p0f's reasons (process.h), in the order its log spells them.
NAT_APP_SIG = 0x0001
NAT_OS_SIG = 0x0002
NAT_UNK_DIFF = 0x0004
NAT_TO_UNK = 0x0008
NAT_TS = 0x0010
NAT_PORT = 0x0020
NAT_TTL = 0x0040
NAT_MSS = 0x0080
NAT_FUZZY = 0x0100
REASON_NAMES = (
    (NAT_APP_SIG, "app_vs_os"), (NAT_OS_SIG, "os_diff"), (NAT_UNK_DIFF, "sig_diff"), (NAT_TO_UNK, "x_known"),
    (NAT_TS, "tstamp"), (NAT_TTL, "ttl"), (NAT_PORT, "port"), (NAT_MSS, "mtu"), (NAT_FUZZY, "fuzzy"),
)

# p0f's config.h.
NAT_SCORES = 32
MIN_TSCALE = 0.7  # Hz
MAX_TSCALE = 1500
MIN_TWAIT = 25  # ms
MAX_TWAIT = 1000 * 60 * 10
TSTAMP_GRACE = 100
MAX_NAT_TS = 1000 * 60 * 60 * 24
MIN_PORT_DROP = 64
SMALL_TTL_CHG = 2
LOCAL_TTL_LIMIT = 5
NEAR_TTL_LIMIT = 9

_IGNORED_QUIRKS = Q_ECN | Q_DF | Q_NZ_ID | Q_ZERO_ID  # fuzzy-level quirks: not a sign of another host
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_ZERO_RING = bytes(NAT_SCORES)
_new_tuple = tuple.__new__


class Sig(NamedTuple):
    """What p0f keeps of a host's last SYN or SYN+ACK (its ``tcp_sig``)."""

    label: Label | None  # the matched line's label; None when unknown
    line: int
    fuzzy: bool
    bad_ttl: bool
    dist: int
    ttl: int
    quirks: int
    layout: bytes
    mss: int
    ts1: int
    recv_ms: int  # capture time, ms


class NatRecord(NamedTuple):
    """A `host change` or `ip sharing` record."""

    kind: str  # "host change" or "ip sharing"
    reason: str  # p0f's reason words, space-separated; "" when none
    raw_hits: tuple[int, int, int, int]  # ring entries >= 6, >= 3, >= 2, >= 1


class Uptime(NamedTuple):
    """An `uptime` record."""

    minutes: int
    modulo_days: int
    freq: float  # Hz, as measured (p0f prints it with two decimals)

    def text(self) -> str:
        m = self.minutes
        return f"{m // 60 // 24} days {m // 60 % 24} hrs {m % 60} min (modulo {self.modulo_days} days)"


class HostState:
    """The per-address part of p0f's ``host_data`` this module reads and writes."""

    __slots__ = ("last_syn", "last_synack", "last_class", "last_name", "last_flavor", "last_quality",
                 "cli_scores", "srv_scores", "nat_reasons", "last_nat", "last_chg", "last_port",
                 "last_up_min", "up_mod_days")

    def __init__(self) -> None:
        self.last_syn: Sig | None = None
        self.last_synack: Sig | None = None
        self.last_class: str | None = None  # p0f's last_class_id / last_name_id; None is -1
        self.last_name: str | None = None
        self.last_flavor: str | None = None
        self.last_quality = 0  # 1 fuzzy, 2 generic
        self.cli_scores = _ZERO_RING  # rings stay the shared zero ring until a score arrives
        self.srv_scores = _ZERO_RING
        self.nat_reasons = 0
        self.last_nat = 0  # unix time of the last ip sharing record, 0 never
        self.last_chg = 0  # ... of the last host change record
        self.last_port = 0
        self.last_up_min = -1
        self.up_mod_days = 0


def score_sig(to_srv: bool, sig: Sig, hd: HostState, cli_port: int, now: int, exact: bool) -> NatRecord | None:
    """Score an OS signature against the host's history, update it; the record to log, if any."""
    ref = hd.last_syn if to_srv else hd.last_synack
    label = sig.label
    score = 0
    reason = 0
    if ref is None:
        # Nothing of this direction on file; the OS on file may still come from the other one.
        if label is not None and hd.last_class is not None and hd.last_name != label.name:
            reason |= NAT_OS_SIG
            score += 8
    else:
        score, reason = _compare(to_srv, sig, ref, hd, cli_port, exact)
    record = add_score(to_srv, hd, reason, score, now)
    if label is not None:
        hd.last_class = label.klass
        hd.last_name = label.name
        hd.last_flavor = label.flavor
        hd.last_quality = (1 if sig.fuzzy else 0) | (2 if label.generic else 0)
    hd.last_port = cli_port
    return record


def _compare(to_srv: bool, sig: Sig, ref: Sig, hd: HostState, cli_port: int, exact: bool) -> tuple[int, int]:
    score = reason = 0
    diff_already = False
    label, rlabel = sig.label, ref.label
    if label is None or rlabel is None:
        # One side unknown: weak signals only, the unknown one may be a userland tool.
        if (sig.quirks ^ ref.quirks) & ~_IGNORED_QUIRKS:
            reason |= NAT_UNK_DIFF
            score += 2
        elif to_srv and sig.layout != ref.layout:  # SYN+ACK layouts may legitimately vary
            reason |= NAT_UNK_DIFF
            score += 1
        if to_srv and (label is None) != (rlabel is None):
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

    if not diff_already and label is not None and hd.last_class is not None and hd.last_name != label.name:
        score += 8
        reason |= NAT_OS_SIG
        diff_already = True

    ttl_diff = sig.ttl - ref.ttl
    if (not diff_already and ttl_diff and not sig.bad_ttl and not ref.bad_ttl
            and (sig.dist <= NEAR_TTL_LIMIT or ttl_diff > 1)):
        score += 1 if sig.dist > LOCAL_TTL_LIMIT and abs(ttl_diff) <= SMALL_TTL_CHG else 4
        reason |= NAT_TTL

    last_port = hd.last_port
    if exact and to_srv and last_port and cli_port < last_port and last_port - cli_port >= MIN_PORT_DROP:
        score += 1
        reason |= NAT_PORT

    if sig.mss != ref.mss:
        score += 1
        reason |= NAT_MSS

    if score and sig.ts1 and ref.ts1:
        ms_diff = (sig.recv_ms - ref.recv_ms) & _U64
        if ms_diff < MAX_NAT_TS:
            max_ts = max(ms_diff, TSTAMP_GRACE) * MAX_TSCALE // 1000
            ts_diff = (sig.ts1 - ref.ts1) & _U32
            if ts_diff > max_ts and (ms_diff >= TSTAMP_GRACE or (~ts_diff & _U32) > max_ts):
                if exact:  # by default a jump is no evidence: stacks offset timestamps per connection
                    score += 4
                    reason |= NAT_TS
            else:
                score //= 2
    return score, reason


def add_score(to_srv: bool, hd: HostState, reason: int, score: int, now: int) -> NatRecord | None:
    """Push a score into the host's ring (p0f's add_nat_score); the record it triggers, if any."""
    old = hd.cli_scores if to_srv else hd.srv_scores
    hd.nat_reasons |= reason
    if not score and old is _ZERO_RING:
        return None  # a zero pushed into an empty ring leaves it empty: a steady host's every SYN
    ring = bytearray(old)
    del ring[0]
    ring.append(score)
    if not score:
        _store(hd, to_srv, _ZERO_RING if ring == _ZERO_RING else bytes(ring))
        return None
    over_5 = over_2 = over_1 = over_0 = 0
    for s in ring:
        if s >= 1:
            over_0 += 1
            if s >= 2:
                over_1 += 1
                if s >= 3:
                    over_2 += 1
                    if s >= 6:
                        over_5 += 1
    hits = (over_5, over_2, over_1, over_0)
    if over_5 > 2 or over_2 > 4 or over_1 > 6 or over_0 > 8:
        reason = hd.nat_reasons
        hd.last_nat = now
        _store(hd, to_srv, _ZERO_RING)
        hd.nat_reasons = 0
        kind = "ip sharing"
    else:
        _store(hd, to_srv, bytes(ring))
        if score == 1:
            return None  # wait for something more substantial
        hd.last_chg = now
        kind = "host change"
    return NatRecord(kind, reason_words(reason), hits)


def reason_words(reason: int) -> str:
    """p0f's reason words for the bits set, space-separated ("" when none)."""
    # A list, not a generator: the compiled copy (setup.py) cannot hold a closure in a cpdef function.
    return " ".join([name for bit, name in REASON_NAMES if reason & bit])


def _store(hd: HostState, to_srv: bool, ring: bytes) -> None:
    if to_srv:
        hd.cli_scores = ring
    else:
        hd.srv_scores = ring


def verify_tool(to_srv: bool, hd: HostState, sys: tuple[str, ...], now: int) -> NatRecord | None:
    """A tool (`!` line) was seen: does the host's OS run it? (p0f's verify_tool_class)"""
    if hd.last_class is None:
        return None
    for entry in sys:
        if (entry[1:] == hd.last_class) if entry.startswith("@") else (entry == hd.last_name):
            return add_score(to_srv, hd, 0, 0, now)
    return add_score(to_srv, hd, NAT_APP_SIG, 4, now)


class TsState:
    """A flow's timestamp clock reading (p0f's cli_tps / srv_tps): 0 unread, -1 bad, else Hz."""

    __slots__ = ("cli_tps", "srv_tps")

    def __init__(self) -> None:
        self.cli_tps = 0
        self.srv_tps = 0


def check_uptime(to_srv: bool, is_syn: bool, ts1: int, now_ms: int, ref: Sig | None, hd: HostState,
                 flow: TsState) -> Uptime | None:
    """Uptime from the timestamp progression since the host's last SYN (or SYN+ACK), as p0f's check_ts_tcp.

    `ref` is that last signature (for a SYN: the one before this SYN).
    """
    if not ts1:
        return None
    if (flow.cli_tps if to_srv else flow.srv_tps) or ref is None or not ref.ts1:
        return None
    ms_diff = (now_ms - ref.recv_ms) & _U64
    ts_diff = (ts1 - ref.ts1) & _U32
    if ms_diff < MIN_TWAIT or ms_diff > MAX_TWAIT:
        return None
    inv = ~ts_diff & _U32
    if ts_diff < 5 or (ms_diff < TSTAMP_GRACE and inv // 1000 < MAX_TSCALE // TSTAMP_GRACE):
        return None
    ffreq = inv * -1000.0 / ms_diff if ts_diff > inv else ts_diff * 1000.0 / ms_diff
    if ffreq < MIN_TSCALE or ffreq > MAX_TSCALE:
        if not is_syn:  # a bad reading on a SYN may be a new host; on the flow's own packets it is final
            if to_srv:
                flow.cli_tps = -1
            else:
                flow.srv_tps = -1
        return None
    freq = int(ffreq)
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
    up_min = ts1 // freq // 60
    up_mod_days = _U32 // (freq * 60 * 60 * 24)
    hd.last_up_min = up_min
    hd.up_mod_days = up_mod_days
    return Uptime(up_min, up_mod_days, ffreq)


def on_syn(to_srv: bool, flow, pkt, fp, now: int, now_ms: int, exact: bool) -> tuple[NatRecord | None, Uptime | None]:
    """A fingerprinted SYN (to_srv) or SYN+ACK on `flow`: p0f's NAT record and uptime for it.

    `flow` is a flows.Flow (or RecentSyns' stand-in): it names the hosts and
    carries the flow's timestamp readings.  Tools and p0f-sendsyn exchanges are
    kept out of the scores, as in p0f.
    """
    host = flow.client if to_srv else flow.server
    if host is None:
        return None, None
    hd = host.nat
    if hd is None:
        hd = host.nat = HostState()
    label = fp.label
    if label is not None and label.is_app:
        return verify_tool(to_srv, hd, label.sys, now), None
    if flow.sendsyn:
        return None, None
    # tuple.__new__: one per SYN, and NamedTuple's own __new__ is a Python function.
    sig = _new_tuple(Sig, (label, fp.line, fp.fuzzy, fp.random_ttl, fp.dist, pkt.ttl, pkt.quirks, pkt.opt_layout,
                           pkt.mss, pkt.ts1, now_ms))
    record = score_sig(to_srv, sig, hd, pkt.sport if to_srv else pkt.dport, now, exact)
    # The uptime compares with the host's previous packet of the kind, so it runs before the swap.
    if to_srv:
        uptime = check_uptime(True, True, pkt.ts1, now_ms, hd.last_syn, hd, flow)
        hd.last_syn = sig
    else:
        uptime = check_uptime(False, False, pkt.ts1, now_ms, hd.last_synack, hd, flow)
        hd.last_synack = sig
    return record, uptime


def on_other(flow, to_srv: bool, pkt, now_ms: int) -> Uptime | None:
    """An ACK, FIN or RST of a tracked flow that p0f reads timestamps from."""
    if flow.sendsyn:
        return None
    host = flow.client if to_srv else flow.server
    hd = host.nat
    if hd is None:
        return None
    return check_uptime(to_srv, False, pkt.ts1, now_ms, hd.last_syn if to_srv else hd.last_synack, hd, flow)
