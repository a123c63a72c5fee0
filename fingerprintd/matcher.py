"""Packet x database -> fingerprint, with p0f 3.09b's matching semantics.

The search is p0f's ``fp_tcp.c:tcp_find_match``: candidates are the lines
with the packet's exact option layout, in file order; the first exact
specific line wins at once, else the first exact generic line, else the first
fuzzy line (only ``df``/``id+`` vanishing, ``id-``/``ecn`` appearing, or a TTL
out of range make a line fuzzy).  A fuzzy tool (``!``) line means no match.

One extension, in default mode and for a database built from the stack rules
(``stackrules.fallback_for``): when no line matches and the option layout is
one only a single stack's option writer produces at that initial TTL, the
family is named as a generic match (flavor ``stackrules.FALLBACK_FLAVOR``) with the
reason, instead of ``???``.  ``mode.P0F_BUGS`` turns it off (``P0fMode.no_fallback``), and the
IPv6 flow-label rule (`Probe.twin`) with it (``P0fMode.flow_label_counts``): the
matcher's mode is its database's (``signatures.load(path, mode)``).

Everything the answer depends on is a handful of header fields, and real
traffic repeats the same few stacks, so whole results are memoized on those
fields: a repeated stack costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

from fingerprintd.classes import NO_CLASSES, ClassMap
from fingerprintd.packet import (
    ACK,
    OPT_EOL,
    OPT_MSS,
    OPT_NOP,
    OPT_SACK,
    OPT_SACKOK,
    OPT_TS,
    OPT_WS,
    Q_DF,
    Q_ECN,
    Q_FLOW,
    Q_NZ_ID,
    Q_ZERO_ID,
    SENDSYN_MSS,
    SYN,
    Packet,
    quirks_to_str,
)
from fingerprintd.signatures import (
    ANY,
    FIT_EXACT,
    FIT_FUZZY_QUIRKS,
    FIT_FUZZY_TTL,
    MAX_DIST,
    MISS_EOL_PAD,
    MISS_MSS,
    MISS_OLEN,
    MISS_PCLASS,
    MISS_QUIRKS,
    MISS_TTL,
    MISS_WSCALE,
    WIN_ANY,
    WIN_MOD,
    WIN_MSS,
    WIN_MTU,
    WIN_NORMAL,
    Database,
    Label,
    SignatureError,
    TcpSig,
    parse_text,
)
from fingerprintd.stackrules import FamilyFallback, fallback_for

# isort: split
# The comparison and the window rule, on a line of their own: the compiled copy (setup.py) takes them
# from the compiled signatures, and calls them as C.
from fingerprintd.signatures import Rule, win_multiplier

DEFAULT_CACHE_SIZE = 16384  # distinct stacks; real traffic has a few hundred
T = TypeVar("T")

_FALLBACK_QUIRKS = Q_DF | Q_NZ_ID | Q_ZERO_ID | Q_ECN | Q_FLOW  # what a stock stack sets; anything else: no fallback
_OPT_NAMES = {OPT_NOP: "nop", OPT_MSS: "mss", OPT_WS: "ws", OPT_SACKOK: "sok", OPT_SACK: "sack", OPT_TS: "ts"}


class Fingerprint(NamedTuple):
    """The verdict on one SYN or SYN+ACK, in p0f's terms."""

    to_server: bool  # True: a SYN ([tcp:request]); False: a SYN+ACK
    label: Label | None  # the matched line's label; None when unknown
    line: int  # the matched line, 0 when unknown
    fuzzy: bool
    generic: bool
    random_ttl: bool  # matched an 'N-' line
    app: bool  # reported as 'app' (a tool, or a p0f-sendsyn exchange)
    dist: int
    dist_text: str  # "12", or "<= 12" for random-TTL lines
    params: str  # p0f's params field: generic, fuzzy, ... or "none"
    raw_sig: str
    raw_mtu: int  # MSS + fixed IP/TCP header size; 0 when there is no MSS
    link: str | None  # the [mtu] label for raw_mtu; None when unknown
    mtu_reported: bool  # p0f logs an mtu line for this packet
    mail_class: str = "unknown"  # server, desktop, mobile, embedded, scanner, unknown (see classes.py)

    @property
    def os_text(self) -> str:
        return self.label.text if self.label else "???"


class PerFingerprint(Generic[T]):
    """A value derived from a Fingerprint (a header, a message), made once per stack.

    The matcher hands out one Fingerprint object per stack from its cache,
    so keying by identity is exact and cheaper than hashing the tuple.  Each
    entry holds its Fingerprint, which keeps the id from being reused.
    """

    __slots__ = ("make", "size", "_memo")

    def __init__(self, make: Callable[[Fingerprint], T], size: int = DEFAULT_CACHE_SIZE) -> None:
        self.make = make
        self.size = size
        self._memo: dict[int, tuple[Fingerprint, T]] = {}

    def __call__(self, fp: Fingerprint) -> T:
        hit = self._memo.get(id(fp))
        if hit is not None and hit[0] is fp:
            return hit[1]
        value = self.make(fp)
        if len(self._memo) >= self.size:
            self._memo.clear()
        self._memo[id(fp)] = (fp, value)
        return value


class Probe(NamedTuple):
    """What a signature line is compared with: a packet's fields, or a raw_sig's."""

    ip_ver: int
    ttl: int
    olen: int
    quirks: int
    layout: bytes
    eol_pad: int
    mss: int
    win: int
    wscale: int
    pclass: int  # 1 when there is payload
    multi: int  # the window's MSS/MTU multiplier, -1 when none
    use_mtu: bool
    flow: bool = False  # an IPv6 flow label, held out of `quirks` (see flow_twin)

    @classmethod
    def of(cls, pkt: Packet, syn_mss: int = 0, flow_twin: bool = True) -> Probe:
        multi, use_mtu = win_multiplier(pkt.win, pkt.mss, pkt.ts1, pkt.ip_ver, pkt.tot_hdr, syn_mss)
        probe = cls(pkt.ip_ver, pkt.ttl, pkt.ip_opt_len, pkt.quirks, pkt.opt_layout, pkt.opt_eol_pad, pkt.mss,
                    pkt.win, pkt.wscale, 1 if pkt.pay_len else 0, multi, use_mtu)
        return probe.twin() if flow_twin else probe

    def twin(self) -> Probe:
        """The IPv6 flow-label rule (a deliberate deviation from p0f).

        Linux, macOS and Windows all set a flow label on IPv6 SYNs, and p0f's
        database has no line with `flow`, so p0f calls every such SYN `???`.
        Here the label is held aside: a line without `flow` is compared as if
        the SYN had none, so an IPv6 SYN gets its IPv4 twin's verdict; a line
        that asks for `flow` still gets it.  raw_sig still shows `flow`.
        """
        if self.ip_ver != 6 or not self.quirks & Q_FLOW:
            return self
        return self._replace(quirks=self.quirks & ~Q_FLOW, flow=True)


_FUZZ_NOTES = ((FIT_FUZZY_QUIRKS, "quirks"), (FIT_FUZZY_TTL, "ttl"))
_WHY = {MISS_EOL_PAD: "EOL padding differs: wants {r.eol_pad}, has {p.eol_pad}",
        MISS_OLEN: "IP option length differs: wants {r.olen}, has {p.olen}",
        MISS_TTL: "TTL {p.ttl} is above the line's random-TTL maximum {r.ttl}",
        MISS_MSS: "MSS differs: wants {r.mss}, has {p.mss}",
        MISS_WSCALE: "window scale differs: wants {r.wscale}, has {p.wscale}",
        MISS_PCLASS: "payload class differs"}


def compare(ref: TcpSig, p: Probe, explain: bool = False) -> tuple[str | None, str]:
    """One line against a probe with the same option layout, as p0f's tcp_find_match does.

    ("exact" | "fuzzy" | None, why), by the rules of signatures.Rule.  The
    reason is only spelled out when asked for.
    """
    r = Rule(ref)
    verdict = r.fit(p.ip_ver, p.ttl, p.olen, p.quirks, p.flow, p.eol_pad, p.mss, p.wscale, p.pclass)
    if verdict < MISS_QUIRKS and not r.window_fits(p.win, p.multi, p.use_mtu):
        if not explain:
            return None, ""
        wt = ref.win_type
        want = {WIN_NORMAL: str(ref.win), WIN_MOD: f"%{ref.win}", WIN_MSS: f"mss*{ref.win}",
                WIN_MTU: f"mtu*{ref.win}"}[wt]
        have = f"{'mtu' if p.use_mtu else 'mss'}*{p.multi}" if p.multi > 0 else str(p.win)
        return None, f"window differs: wants {want}, has {have}"
    if verdict == FIT_EXACT:
        return "exact", "matches"
    if not explain:
        if verdict >= MISS_QUIRKS:
            return None, ""
        return "fuzzy", "; ".join(note for bit, note in _FUZZ_NOTES if verdict & bit)
    want_q = r.wants_quirks(p.ip_ver)
    quirks = p.quirks | Q_FLOW if p.flow and want_q & Q_FLOW else p.quirks
    if verdict == MISS_QUIRKS:
        return None, (f"quirks differ: wants {quirks_to_str(want_q) or 'none'}, "
                      f"has {quirks_to_str(quirks) or 'none'}")
    if verdict >= MISS_QUIRKS:
        return None, _WHY[verdict].format(r=ref, p=p)
    notes = []
    if verdict & FIT_FUZZY_QUIRKS:
        notes.append(f"quirks: missing {quirks_to_str(want_q & ~quirks) or '-'}, "
                     f"extra {quirks_to_str(quirks & ~want_q) or '-'}")
    if verdict & FIT_FUZZY_TTL:
        notes.append(f"TTL {p.ttl} out of range for initial TTL {ref.ttl}")  # TTL never rules a line out
    return "fuzzy", "; ".join(notes)


def parse_raw_sig(raw: str, flow_twin: bool = True) -> Probe:
    """A probe from p0f's raw_sig text (`4:64+0:0:1460:mss*44,10:mss,sok,ts,nop,ws:df,id+:0`)."""
    head = "classes = x\n[tcp:request]\nlabel = s:x:probe:\nsig = "
    try:
        sig = parse_text(head + raw.replace("+?:", "+0:", 1) + "\n", "raw_sig").request[0]
    except SignatureError as exc:
        raise ValueError(f"not a raw signature: {exc.message}") from None
    if sig.ver is None or sig.mss is None or sig.wscale is None or sig.pclass is None or sig.win_type in (
            WIN_ANY, WIN_MOD):
        raise ValueError("a raw signature has no wildcards: ver, mss, window, scale and payload must be values")
    observed_ttl = int(raw.split(":", 2)[1].split("+", 1)[0])
    if sig.win_type in (WIN_MSS, WIN_MTU):
        # raw_sig shows the multiplier, not the window: take the usual divisor back.
        multi, use_mtu = sig.win, sig.win_type == WIN_MTU
        win = min(65535, multi * (sig.mss + 40 if use_mtu else sig.mss))
    else:
        multi, use_mtu, win = -1, False, sig.win
    probe = Probe(sig.ver, observed_ttl, sig.olen, sig.quirks, sig.layout, sig.eol_pad, sig.mss, win, sig.wscale,
                  sig.pclass, multi, use_mtu)
    return probe.twin() if flow_twin else probe


def guess_dist(ttl: int) -> int:
    """Hops from the nearest usual initial TTL at or above `ttl`."""
    if ttl <= 32:
        return 32 - ttl
    if ttl <= 64:
        return 64 - ttl
    if ttl <= 128:
        return 128 - ttl
    return 255 - ttl


def layout_to_str(layout: bytes, eol_pad: int) -> str:
    return ",".join(
        f"eol+{eol_pad}" if k == OPT_EOL else _OPT_NAMES.get(k) or f"?{k}" for k in layout
    )


class _Layout:
    """The lines of one direction and option layout, as Rules, in file order.

    Only those whose MSS is the packet's or `*` are candidates (any other
    MSS rules a line out): the candidate list per MSS value is merged when
    that value first comes, and only for values some line has; packets bring
    MSS values without end.
    """

    __slots__ = ("wild", "same", "merged")

    def __init__(self, sigs: list[TcpSig]) -> None:
        self.wild: list[Rule] = []  # the `*` MSS lines
        self.same: dict[int, list[Rule]] = {}  # MSS -> the lines with that MSS
        self.merged: dict[int, list[Rule]] = {}  # MSS -> candidates
        for sig in sigs:
            rule = Rule(sig)
            if rule.mss == ANY:
                self.wild.append(rule)
            else:
                self.same.setdefault(rule.mss, []).append(rule)

    def candidates(self, mss: int) -> list[Rule]:
        got = self.merged.get(mss)
        if got is not None:
            return got
        same = self.same.get(mss)
        if same is None:
            return self.wild
        got = self.merged[mss] = sorted(same + self.wild, key=_line_of) if self.wild else same
        return got


_NO_RULES: list[Rule] = []
# p0f's params field, from these bits and the TOS (see _render).
_P_GENERIC, _P_FUZZY, _P_RANDOM_TTL, _P_EXCESS_DIST = 1, 2, 4, 8
_PARAMS: dict[tuple[int, int], str] = {}


def _params_text(flags: int, tos: int) -> str:
    words = [word for bit, word in ((_P_GENERIC, "generic"), (_P_FUZZY, "fuzzy"), (_P_RANDOM_TTL, "random_ttl"),
                                    (_P_EXCESS_DIST, "excess_dist")) if flags & bit]
    if tos:
        words.append(f"tos:0x{tos:02x}")
    return " ".join(words) or "none"

_new_tuple = tuple.__new__  # a Fingerprint from its fields in order, without NamedTuple's keyword-taking __new__
_MEMO_SIZE = 4096  # the bound of the layout and quirk text memos (junk options make new layouts without end)


class Matcher:
    """Matches packets against one database; immutable once built."""

    def __init__(self, db: Database, cache_size: int = DEFAULT_CACHE_SIZE, classes: ClassMap = NO_CLASSES) -> None:
        self.db = db
        # p0f's deviations on or off: always as the database was read (fingerprintd.mode), never told apart.
        self.mode = mode = db.mode
        self.classes = classes  # loaded by the caller (classes.load_classes); without one every class is unknown
        self.flow_twin = not mode.flow_label_counts  # the IPv6 flow-label rule, see Probe.twin
        self.fallback: FamilyFallback | None = None if mode.no_fallback else fallback_for(db)
        self.cache_size = cache_size
        self.cache: dict[tuple, Fingerprint] = {}
        self.hits = 0
        self.misses = 0
        # Signatures by (direction, option layout), in file order; made into Rules per layout when a packet
        # first asks for it (a database of 200k lines loads without making 200k of them).
        self._buckets: dict[tuple[bool, bytes], list[TcpSig]] = {}
        for to_server in (True, False):
            for sig in db.tcp(to_server):
                self._buckets.setdefault((to_server, sig.layout), []).append(sig)
        self._index: dict[tuple[bool, bytes], _Layout] = {}
        self._mtu = db.mtu
        self._layout_text: dict[tuple[bytes, int], str] = {}
        self._quirks_text: dict[int, str] = {}
        self._mail_class: dict[int, tuple[Label, str]] = {}  # by id(label): Label's own hash is slow

    def _candidates(self, to_server: bool, layout: bytes, mss: int) -> list[Rule]:
        """The lines a packet is compared with (see _Layout)."""
        key = (to_server, layout)
        index = self._index.get(key)
        if index is None:
            sigs = self._buckets.get(key)
            if sigs is None:
                return _NO_RULES
            index = self._index[key] = _Layout(sigs)
        return index.candidates(mss)

    def find(
        self, pkt: Packet, to_server: bool, syn_mss: int = 0
    ) -> tuple[TcpSig | None, bool, int]:
        """(matched line or None, fuzzy, distance) for a packet, uncached."""
        return self.find_probe(Probe.of(pkt, syn_mss, self.flow_twin), to_server)

    def find_probe(self, probe: Probe, to_server: bool) -> tuple[TcpSig | None, bool, int]:
        """p0f's search: (matched line or None, fuzzy, distance)."""
        p = probe
        rule, fuzzy, dist = self._search(to_server, p.layout, p.ip_ver, p.ttl, p.olen, p.quirks, p.flow, p.eol_pad,
                                         p.mss, p.wscale, p.pclass, p.win, p.multi, p.use_mtu)
        return None if rule is None else rule.sig, fuzzy, dist

    def _search(self, to_server: bool, layout: bytes, ver: int, ttl: int, olen: int, quirks: int, flow: bool,
                eol_pad: int, mss: int, wscale: int, pclass: int, win: int, multi: int, use_mtu: bool
                ) -> tuple[Rule | None, bool, int]:
        """p0f's tcp_find_match: the first exact specific line wins at once, else the first exact generic
        line, else the first fuzzy one."""
        fmatch: Rule | None = None
        gmatch: Rule | None = None
        for rule in self._candidates(to_server, layout, mss):
            verdict = rule.fit(ver, ttl, olen, quirks, flow, eol_pad, mss, wscale, pclass)
            if verdict >= MISS_QUIRKS or not rule.window_fits(win, multi, use_mtu):
                continue
            if verdict == FIT_EXACT:
                if not rule.generic:
                    return rule, False, rule.ttl - ttl
                if gmatch is None:
                    gmatch = rule
            elif fmatch is None:
                fmatch = rule
        if gmatch is not None:
            return gmatch, False, gmatch.ttl - ttl
        if fmatch is None:
            return None, False, guess_dist(ttl)
        if fmatch.tool:
            return None, False, 0  # no fuzzy matches for tools; p0f leaves dist at 0
        if fmatch.ttl < ttl or (not fmatch.bad_ttl and fmatch.ttl - ttl > MAX_DIST):
            return fmatch, True, guess_dist(ttl)
        return fmatch, True, fmatch.ttl - ttl

    def family_fallback(self, probe: Probe, to_server: bool) -> tuple[Label, int, str] | None:
        """(the family's generic label, distance, reason) for a probe no line matches, or None."""
        return self._family(to_server, probe.quirks, probe.ttl, probe.layout, probe.eol_pad, probe.win, probe.mss)

    def _family(self, to_server: bool, quirks: int, ttl: int, layout: bytes, eol_pad: int, win: int, mss: int
                ) -> tuple[Label, int, str] | None:
        if self.fallback is None or quirks & ~_FALLBACK_QUIRKS:
            return None
        got = self.fallback.claim(to_server, ttl, self._layout_str(layout, eol_pad), win, mss, OPT_TS in layout)
        return None if got is None else (got.label, got.ttl - ttl, got.why)

    def explain(self, probe: Probe, to_server: bool = True) -> list[tuple[TcpSig, str | None, str]]:
        """Every line of the direction, with its verdict on the probe and why."""
        out = []
        for ref in self.db.tcp(to_server):
            if ref.layout != probe.layout:
                out.append((ref, None, f"option layout differs: wants {layout_to_str(ref.layout, ref.eol_pad)}"))
            else:
                out.append((ref, *compare(ref, probe, explain=True)))
        return out

    def fingerprint(
        self, pkt: Packet, to_server: bool, syn_mss: int = 0, sendsyn: bool = False
    ) -> Fingerprint:
        """The memoized verdict for a SYN (to_server) or SYN+ACK."""
        key = (pkt.shape, to_server, syn_mss, sendsyn)
        fp = self.cache.get(key)
        if fp is not None:
            self.hits += 1
            return fp
        self.misses += 1
        fp = self._render(pkt.shape, to_server, syn_mss, sendsyn)
        if len(self.cache) >= self.cache_size:
            self.cache.clear()  # a bound, cheap to keep; a flood of junk just refills it
        self.cache[key] = fp
        return fp

    def _layout_str(self, layout: bytes, eol_pad: int) -> str:
        key = (layout, eol_pad)
        got = self._layout_text.get(key)
        if got is None:
            if len(self._layout_text) >= _MEMO_SIZE:
                self._layout_text.clear()
            got = self._layout_text[key] = layout_to_str(layout, eol_pad)
        return got

    def _quirks_str(self, quirks: int) -> str:
        got = self._quirks_text.get(quirks)
        if got is None:
            if len(self._quirks_text) >= _MEMO_SIZE:
                self._quirks_text.clear()
            got = self._quirks_text[quirks] = quirks_to_str(quirks)
        return got

    def _class_of(self, label: Label | None) -> str:
        if label is None:
            return "unknown"
        got = self._mail_class.get(id(label))
        if got is None or got[0] is not label:
            got = self._mail_class[id(label)] = (label, self.classes.of(label))  # holds the label: ids stay
        return got[1]

    def _render(self, shape: tuple, to_server: bool, syn_mss: int, sendsyn: bool) -> Fingerprint:
        """The verdict from a packet's shape (Packet.shape: every field it depends on)."""
        ver, ttl, tos, olen, quirks, tcp_type, win, mss, wscale, has_ts, layout, eol_pad, has_pay, tot_hdr = shape
        multi, use_mtu = win_multiplier(win, mss, has_ts, ver, tot_hdr, syn_mss)
        probe_quirks, flow = quirks, False
        if ver == 6 and quirks & Q_FLOW and self.flow_twin:
            probe_quirks, flow = quirks & ~Q_FLOW, True  # see Probe.twin
        rule, fuzzy, dist = self._search(to_server, layout, ver, ttl, olen, probe_quirks, flow, eol_pad, mss,
                                         wscale, 1 if has_pay else 0, win, multi, use_mtu)
        label: Label | None = None
        generic = random_ttl = False
        line = 0  # 0 for a family fallback too
        if rule is not None:
            label = rule.label
            generic = rule.generic
            random_ttl = rule.bad_ttl
            line = rule.line
        elif not sendsyn:
            fallback = self._family(to_server, probe_quirks, ttl, layout, eol_pad, win, mss)
            if fallback is not None:
                label, dist, _ = fallback
                generic = True

        flags = 0
        if label is not None:
            flags = (_P_GENERIC if generic else 0) | (_P_FUZZY if fuzzy else 0) | (_P_RANDOM_TTL if random_ttl else 0)
        if dist > MAX_DIST:
            flags |= _P_EXCESS_DIST
        params = _PARAMS.get((flags, tos))
        if params is None:
            params = _PARAMS[flags, tos] = _params_text(flags, tos)  # at most 16 x 64 of them

        g = guess_dist(ttl)
        ttl_s = f"{ttl}+?" if g > MAX_DIST else f"{ttl}+{g}"
        mss_s = "*" if mss == SENDSYN_MSS and tcp_type == SYN | ACK else str(mss)
        win_s = (("mtu*" if use_mtu else "mss*") + str(multi)) if multi > 0 else str(win)
        raw_sig = (f"{ver}:{ttl_s}:{olen}:{mss_s}:{win_s},{wscale}:{self._layout_str(layout, eol_pad)}:"
                   f"{self._quirks_str(quirks)}:{'+' if has_pay else '0'}")

        raw_mtu = mss + (40 if ver == 4 else 60) if mss else 0
        app = (rule.tool if rule is not None else label is not None and label.is_app) or sendsyn
        return _new_tuple(Fingerprint, (
            to_server,
            label,
            line,
            fuzzy,
            generic,
            random_ttl,
            app,
            dist,
            f"<= {dist}" if random_ttl else str(dist),  # dist_text
            params,
            raw_sig,
            raw_mtu,
            self._mtu.get(raw_mtu) if raw_mtu else None,  # link
            raw_mtu != 0 and not app,  # mtu_reported
            self._class_of(label),
        ))

    def cache_stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self.cache)}


def _line_of(rule: Rule) -> int:
    return rule.line
