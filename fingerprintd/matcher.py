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
reason, instead of ``???``.  ``p0f_bugs=True`` turns it off.

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
    MAX_DIST,
    V4_QUIRK_MASK,
    V6_QUIRK_MASK,
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
    win_multiplier,
)
from fingerprintd.stackrules import FamilyFallback, fallback_for

DEFAULT_CACHE_SIZE = 16384  # distinct stacks; real traffic has a few hundred
T = TypeVar("T")

_FUZZY_DELETABLE = Q_DF | Q_NZ_ID
_FUZZY_ADDABLE = Q_ZERO_ID | Q_ECN
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


def compare(ref: TcpSig, p: Probe, explain: bool = False) -> tuple[str | None, str]:
    """One line against a probe with the same option layout, as p0f's tcp_find_match does.

    ("exact" | "fuzzy" | None, why).  Only `df`/`id+` vanishing, `id-`/`ecn`
    appearing, or a TTL out of range make a line fuzzy; anything else that
    differs rules it out.  The reason is only spelled out when asked for.
    """
    fuzzy = ""
    ref_quirks = ref.quirks
    if ref.ver is None:
        ref_quirks &= V4_QUIRK_MASK if p.ip_ver == 4 else V6_QUIRK_MASK
    quirks = p.quirks | Q_FLOW if p.flow and ref_quirks & Q_FLOW else p.quirks
    if ref_quirks != quirks:
        missing, extra = ref_quirks & ~quirks, quirks & ~ref_quirks
        if missing & ~_FUZZY_DELETABLE or extra & ~_FUZZY_ADDABLE:
            return None, (f"quirks differ: wants {quirks_to_str(ref_quirks) or 'none'}, "
                          f"has {quirks_to_str(quirks) or 'none'}") if explain else ""
        fuzzy = (f"quirks: missing {quirks_to_str(missing) or '-'}, extra {quirks_to_str(extra) or '-'}"
                 if explain else "quirks")
    if ref.eol_pad != p.eol_pad:
        return None, f"EOL padding differs: wants {ref.eol_pad}, has {p.eol_pad}" if explain else ""
    if ref.olen != p.olen:
        return None, f"IP option length differs: wants {ref.olen}, has {p.olen}" if explain else ""
    if ref.bad_ttl:
        if ref.ttl < p.ttl:
            return None, f"TTL {p.ttl} is above the line's random-TTL maximum {ref.ttl}" if explain else ""
    elif ref.ttl < p.ttl or ref.ttl - p.ttl > MAX_DIST:
        ttl_note = f"TTL {p.ttl} out of range for initial TTL {ref.ttl}" if explain else "ttl"
        fuzzy = f"{fuzzy}; {ttl_note}" if fuzzy else ttl_note  # TTL never rules a line out
    if ref.mss is not None and ref.mss != p.mss:
        return None, f"MSS differs: wants {ref.mss}, has {p.mss}" if explain else ""
    if ref.wscale is not None and ref.wscale != p.wscale:
        return None, f"window scale differs: wants {ref.wscale}, has {p.wscale}" if explain else ""
    if ref.pclass is not None and ref.pclass != p.pclass:
        return None, "payload class differs" if explain else ""
    wt = ref.win_type
    if (
        (wt == WIN_NORMAL and ref.win != p.win)
        or (wt == WIN_MOD and p.win % ref.win)
        or (wt == WIN_MSS and (p.use_mtu or ref.win != p.multi))
        or (wt == WIN_MTU and (not p.use_mtu or ref.win != p.multi))
    ):
        if not explain:
            return None, ""
        want = {WIN_NORMAL: str(ref.win), WIN_MOD: f"%{ref.win}", WIN_MSS: f"mss*{ref.win}",
                WIN_MTU: f"mtu*{ref.win}"}[wt]
        have = f"{'mtu' if p.use_mtu else 'mss'}*{p.multi}" if p.multi > 0 else str(p.win)
        return None, f"window differs: wants {want}, has {have}"
    return ("fuzzy", fuzzy) if fuzzy else ("exact", "matches")


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


class Matcher:
    """Matches packets against one database; immutable once built."""

    def __init__(self, db: Database, cache_size: int = DEFAULT_CACHE_SIZE, p0f_bugs: bool | None = None,
                 classes: ClassMap = NO_CLASSES) -> None:
        self.db = db
        # p0f's deviations on or off: as the database was read unless told (one switch for every stage).
        self.p0f_bugs = db.p0f_bugs if p0f_bugs is None else p0f_bugs
        p0f_bugs = self.p0f_bugs
        self.classes = classes  # loaded by the caller (classes.load_classes); without one every class is unknown
        self.flow_twin = not p0f_bugs  # the IPv6 flow-label rule, see Probe.twin
        self.fallback: FamilyFallback | None = None if p0f_bugs else fallback_for(db)
        self.cache_size = cache_size
        self.cache: dict[tuple, Fingerprint] = {}
        self.hits = 0
        self.misses = 0
        # Signatures by (direction, option layout), in file order.
        self._buckets: dict[tuple[bool, bytes], list[TcpSig]] = {}
        for to_server in (True, False):
            for sig in db.tcp(to_server):
                self._buckets.setdefault((to_server, sig.layout), []).append(sig)

    def find(
        self, pkt: Packet, to_server: bool, syn_mss: int = 0
    ) -> tuple[TcpSig | None, bool, int]:
        """(matched line or None, fuzzy, distance) for a packet, uncached."""
        return self.find_probe(Probe.of(pkt, syn_mss, self.flow_twin), to_server)

    def find_probe(self, probe: Probe, to_server: bool) -> tuple[TcpSig | None, bool, int]:
        """p0f's search: (matched line or None, fuzzy, distance)."""
        ttl = probe.ttl
        fmatch: TcpSig | None = None
        gmatch: TcpSig | None = None
        for ref in self._buckets.get((to_server, probe.layout), ()):
            status = compare(ref, probe)[0]
            if status is None:
                continue
            if status == "exact":
                if not ref.label.generic:
                    return ref, False, ref.ttl - ttl
                if gmatch is None:
                    gmatch = ref
            elif fmatch is None:
                fmatch = ref
        if gmatch is not None:
            return gmatch, False, gmatch.ttl - ttl
        if fmatch is not None and fmatch.label.is_app:
            return None, False, 0  # no fuzzy matches for tools; p0f leaves dist at 0
        if (
            fmatch is None
            or fmatch.ttl < ttl
            or (not fmatch.bad_ttl and fmatch.ttl - ttl > MAX_DIST)
        ):
            return fmatch, fmatch is not None, guess_dist(ttl)
        return fmatch, True, fmatch.ttl - ttl

    def family_fallback(self, probe: Probe, to_server: bool) -> tuple[Label, int, str] | None:
        """(the family's generic label, distance, reason) for a probe no line matches, or None."""
        if self.fallback is None or probe.quirks & ~_FALLBACK_QUIRKS:
            return None
        got = self.fallback.claim(to_server, probe.ttl, layout_to_str(probe.layout, probe.eol_pad), probe.win,
                                  probe.mss, OPT_TS in probe.layout)
        return None if got is None else (got.label, got.ttl - probe.ttl, got.why)

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
        fp = self._render(pkt, to_server, syn_mss, sendsyn)
        if len(self.cache) >= self.cache_size:
            self.cache.clear()  # a bound, cheap to keep; a flood of junk just refills it
        self.cache[key] = fp
        return fp

    def _render(self, pkt: Packet, to_server: bool, syn_mss: int, sendsyn: bool) -> Fingerprint:
        probe = Probe.of(pkt, syn_mss, self.flow_twin)
        sig, fuzzy, dist = self.find_probe(probe, to_server)
        label = sig.label if sig else None
        generic = bool(sig and sig.label.generic)
        random_ttl = bool(sig and sig.bad_ttl)
        if sig is None and not sendsyn and (fallback := self.family_fallback(probe, to_server)) is not None:
            label, dist, _ = fallback
            generic = True

        params = []
        if label:
            if generic:
                params.append("generic")
            if fuzzy:
                params.append("fuzzy")
            if random_ttl:
                params.append("random_ttl")
        if dist > MAX_DIST:
            params.append("excess_dist")
        if pkt.tos:
            params.append(f"tos:0x{pkt.tos:02x}")

        g = guess_dist(pkt.ttl)
        ttl_s = f"{pkt.ttl}+?" if g > MAX_DIST else f"{pkt.ttl}+{g}"
        mss_s = "*" if pkt.mss == SENDSYN_MSS and pkt.tcp_type == SYN | ACK else str(pkt.mss)
        multi, use_mtu = win_multiplier(
            pkt.win, pkt.mss, pkt.ts1, pkt.ip_ver, pkt.tot_hdr, syn_mss
        )
        win_s = f"{'mtu' if use_mtu else 'mss'}*{multi}" if multi > 0 else str(pkt.win)
        raw_sig = (
            f"{pkt.ip_ver}:{ttl_s}:{pkt.ip_opt_len}:{mss_s}:{win_s},{pkt.wscale}:"
            f"{layout_to_str(pkt.opt_layout, pkt.opt_eol_pad)}:{quirks_to_str(pkt.quirks)}:"
            f"{'+' if pkt.pay_len else '0'}"
        )

        raw_mtu = pkt.mss + (40 if pkt.ip_ver == 4 else 60) if pkt.mss else 0
        app = bool(label and label.is_app) or sendsyn
        return Fingerprint(
            to_server=to_server,
            label=label,
            line=sig.line if sig else 0,  # 0 for a family fallback too
            fuzzy=fuzzy,
            generic=generic,
            random_ttl=random_ttl,
            app=app,
            dist=dist,
            dist_text=f"<= {dist}" if random_ttl else str(dist),
            params=" ".join(params) or "none",
            raw_sig=raw_sig,
            raw_mtu=raw_mtu,
            link=self.db.mtu.get(raw_mtu) if raw_mtu else None,
            mtu_reported=bool(raw_mtu) and not app,
            mail_class=self.classes.of(label),
        )

    def cache_stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self.cache)}
