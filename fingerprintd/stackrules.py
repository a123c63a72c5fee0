"""The rules TCP stacks follow when they build a SYN or SYN+ACK, as data.

Pure.  Two things are made from the one table below:

* the generated blocks of ``signatures/p0f.fp`` (``render_block``; the
  script ``scripts/gen_signatures.py`` writes them into the file, and a test
  checks that the committed file is what it generates), and
* the family fallback (``FamilyFallback``): when no line matches a packet
  whose option layout only one stack's option writer produces at that
  initial TTL, the matcher names that family as a generic match, with the
  reason, instead of ``???``.

Every rule names its source beside it (the reference is
``/work/shared/reference/tcp-stack-rules.md``, section numbers below).
Nothing here is fitted to one capture: windows, layouts and scales follow
from the stacks' code and documented defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import product
from typing import NamedTuple

from fingerprintd.signatures import MAX_DIST, Database, Label, marked_additions

# --- Option layouts --------------------------------------------------------
#
# Linux's option writer (net/ipv4/tcp_output.c, tcp_syn_options() choosing
# and tcp_options_write() writing: MSS, SACK-permitted folded into the
# timestamp word when both are on, timestamps, SACK-permitted alone behind two
# NOPs, then NOP + window scale).  Keyed by (timestamps, SACK, window
# scaling); each row was captured from a real 6.18 kernel in namespaces
# (tests/netns.py, reference section 1.1).  SYN+ACKs use the same writer on the
# options both sides allow (tcp_synack_options(), section 1.2).
LINUX_LAYOUTS: dict[tuple[bool, bool, bool], str] = {
    (True, True, True): "mss,sok,ts,nop,ws",
    (False, True, True): "mss,nop,nop,sok,nop,ws",
    (True, False, True): "mss,nop,nop,ts,nop,ws",
    (True, True, False): "mss,sok,ts",
    (False, False, True): "mss,nop,ws",
    (False, True, False): "mss,nop,nop,sok",
    (True, False, False): "mss,nop,nop,ts",
    (False, False, False): "mss",
}

# Windows (closed source: the layouts of p0f 3.09b's Windows lines and
# huginn-net's table, reference section 3.1).  SYN: MSS, NOP + WS, NOP NOP
# SACK-permitted; with `netsh int tcp set global timestamps=enabled` the
# layout becomes MSS, NOP + WS, SACK-permitted, timestamps (no NOPs).
WINDOWS_SYN_LAYOUTS = ("mss,nop,ws,nop,nop,sok", "mss,nop,ws,sok,ts")
# Windows answering: it echoes what the client offered (p0f's "Windows 7 or 8"
# [tcp:response] lines, the same 8 layouts).
WINDOWS_SYNACK_LAYOUTS = ("mss", "mss,nop,ws", "mss,nop,nop,sok", "mss,nop,nop,ts", "mss,sok,ts",
                          "mss,nop,ws,sok,ts", "mss,nop,ws,nop,nop,ts", "mss,nop,ws,nop,nop,sok")

# xnu (apple-oss-distributions/xnu bsd/netinet/tcp_output.c, tcp_output():
# MSS, NOP + WS, NOP NOP TS, SACK-permitted "tacked on last", padding with
# EOL).  net.inet.tcp.rfc1323 switches WS and TS together; keyed by (ws+ts,
# SACK); reference section 4.1.
MACOS_LAYOUTS: dict[tuple[bool, bool], str] = {
    (True, True): "mss,nop,ws,nop,nop,ts,sok,eol+1",
    (True, False): "mss,nop,ws,nop,nop,ts",
    (False, True): "mss,sok,eol+1",
    (False, False): "mss",
}

# FreeBSD (sys/netinet/tcp_output.c, tcp_addoptions(): MSS, WS after NOPs to
# an odd offset, SACK-permitted, TS padded to offset 2 mod 4, one EOL then
# zeros).  net.inet.tcp.rfc1323: 1 WS+TS, 2 WS only, 3 TS only;
# net.inet.tcp.sack.enable.  Keyed by (ws, sack, ts); reference section 5.1.
FREEBSD_LAYOUTS: dict[tuple[bool, bool, bool], str] = {
    (True, True, True): "mss,nop,ws,sok,ts",
    (True, True, False): "mss,nop,ws,sok,eol+1",
    (True, False, True): "mss,nop,ws,nop,nop,ts",
    (False, True, True): "mss,sok,ts",
    (False, True, False): "mss,sok,eol+1",
    (False, False, True): "mss,nop,nop,ts",
    (True, False, False): "mss,nop,ws",
    (False, False, False): "mss",
}

# OpenBSD (the order of p0f 3.09b's OpenBSD lines: MSS, NOP NOP SACK-permitted,
# NOP + WS, NOP NOP TS; an option switched off drops its NOP group; reference
# section 5.3).
OPENBSD_LAYOUTS: dict[tuple[bool, bool, bool], str] = {
    (True, True, True): "mss,nop,nop,sok,nop,ws,nop,nop,ts",
    (False, True, True): "mss,nop,nop,sok,nop,ws",
    (True, True, False): "mss,nop,nop,sok,nop,nop,ts",
    (True, False, True): "mss,nop,ws,nop,nop,ts",
    (False, False, True): "mss,nop,ws",
    (False, True, False): "mss,nop,nop,sok",
    (True, False, False): "mss,nop,nop,ts",
    (False, False, False): "mss",
}

MAX_WIN = 65535
MSS_RANGE = (536, 9000)  # the MSS a real link gives: MTU 576 .. 9040 (v4)


def largest_multiples(mss_lo: int, mss_hi: int, cap: int = MAX_WIN) -> list[int]:
    """Every N = floor(cap / mss) for an MSS in [mss_lo, mss_hi]: the segments of the largest
    multiple of the MSS that fits in `cap` (Linux 4.20+'s SYN window, reference section 1.4)."""
    return sorted({cap // mss for mss in range(mss_lo, mss_hi + 1)})


# Multipliers that older Linux releases send at the usual MSS and that p0f's
# own lines name by release (10 segments: 2.6.39-3.x; 20: 3.11 and newer).
# A 4.20+ kernel only sends them at MSS 5958-6553 or 3121-3276, which few
# links have; those get the generic Linux lines or the fallback.
OLDER_LINUX_MULTIPLIERS = frozenset({10, 20})


@dataclass(frozen=True)
class Rule:
    """One family of signature lines: every (window, layout, quirks) combination."""

    label: str  # p0f's "s|g:class:name:flavor"
    windows: tuple[str, ...]  # p0f window forms: "mss*44", "65535"
    layouts: tuple[str, ...]
    scales: tuple[str, ...] = ("*",)  # for layouts with a ws option; without one the scale is 0
    quirks: tuple[str, ...] = ("df,id+",)
    ttl: int = 64
    ver: str = "*"
    source: str = ""  # the comment above the lines: where the rule comes from

    def lines(self) -> list[str]:
        out = []
        for win, layout, quirks in product(self.windows, self.layouts, self.quirks):
            scales = self.scales if "ws" in layout.split(",") else ("0",)
            for scale in scales:
                out.append(f"{self.ver}:{self.ttl}:0:*:{win},{scale}:{layout}:{quirks}:0")
        return out


def _mss_windows(multipliers: list[int]) -> tuple[str, ...]:
    return tuple(f"mss*{n}" for n in multipliers if n not in OLDER_LINUX_MULTIPLIERS)


_SYN_N = largest_multiples(*MSS_RANGE)
# With timestamps echoed, Linux's SYN+ACK window counts segments of MSS-12
# (tcp_openreq_init_rwin() passes mss - TCPOLEN_TSTAMP_ALIGNED, section 1.6).
_SYNACK_TS_N = largest_multiples(MSS_RANGE[0] - 12, MSS_RANGE[1] - 12)
_TS_LAYOUTS = tuple(v for k, v in LINUX_LAYOUTS.items() if k[0])
_NO_TS_LAYOUTS = tuple(v for k, v in LINUX_LAYOUTS.items() if not k[0])

LINUX_SOURCE = """\
Linux 4.20+ (commit a337531b942b "tcp: up initial rmem to 128KB and SYN rwin to
around 64KB"; the label keeps its earlier name): tcp_select_initial_window()
(net/ipv4/tcp_output.c) offers the largest multiple of the MSS that fits in
65535, so the multiplier follows the MSS: floor(65535/MSS) for every MSS from
536 to 9000 (122 at MTU 576, 52 at 1280, 44 at 1500, 7 at 9000). The layout is
the option writer's for each timestamps/SACK/window-scaling setting
(tcp_syn_options(), tcp_options_write()); the scale follows
max(tcp_rmem[2], rmem_max), so any. 10 and 20 segments are left to p0f's own
lines for older releases. Reference: tcp-stack-rules.md 1.1, 1.4, 1.5;
checked against real 6.18 kernel SYNs by tests/test_conformance_kernel.py."""

BLOCKS: dict[str, tuple[Rule, ...]] = {
    "linux-syn": (
        Rule("s:unix:Linux:4.19 and newer", _mss_windows(_SYN_N), tuple(LINUX_LAYOUTS.values()),
             source=LINUX_SOURCE),
        Rule("s:unix:Linux:4.19 and newer", ("65535",), (LINUX_LAYOUTS[False, True, True],
                                                         LINUX_LAYOUTS[True, False, True]),
             source="""\
A receive buffer over 128 KiB (SO_RCVBUF, or a raised tcp_rmem[1]) makes the
window min(65535, rounded space) = 65535 (captured: SO_RCVBUF 1 MiB). Only for
the layouts no other stack's writer produces at TTL 64; with all options on,
65535 is Android's line below. Reference: tcp-stack-rules.md 1.4."""),
    ),
    "android-syn": (
        Rule("s:unix:Linux:Android 8 and newer", ("65535",), (LINUX_LAYOUTS[True, True, True],),
             source="""\
Android 8 and newer: the Linux option writer, a SYN window of exactly 65535
(the per-network tcp_rmem netd writes, and the Android-only
tcp_default_init_rwnd), and any scale (the per-network tcp_rmem[2]; 1 to 10
seen). A desktop Linux with a large receive buffer sends the same SYN.
Sources: tcp-stack-rules.md 2; labeled captures ndpi__alexa-app,
ndpi__android, ndpi__waze, ndpi__xiaomi (Android by User-Agent); huginn-net's
table (65535 with 6 and 8); zardaxt's GPL-2.0-era records (7, 8, 9)."""),
    ),
    "windows-syn": (
        Rule("s:win:Windows:10 or 11", ("mss*44", "65535"), WINDOWS_SYN_LAYOUTS, scales=("8", "4", "14"),
             ttl=128, source="""\
Windows 10 and 11, and Server 2016 to 2025 (the same stack): window 64240
(44 x 1460) or 65535, TTL 128, DF with an incrementing IP ID. The scale is the
receive-window auto-tuning level's (netsh int tcp set global
autotuninglevel=: normal 8, restricted 4, experimental 14; highlyrestricted's
2 is p0f's XP line at 65535). With timestamps enabled (Set-NetTCPSetting
-Timestamps Enabled) the layout is mss,nop,ws,sok,ts. Sources:
tcp-stack-rules.md 3.1, 3.2; huginn-net's and peace-maker's tables; labeled
captures ndpi__emotet, ndpi__http-proxy (Windows 10 by User-Agent)."""),
        Rule("s:win:Windows:10 or 11", ("mss*44",), WINDOWS_SYN_LAYOUTS, scales=("2",), ttl=128),
    ),
    "macos-syn": (
        Rule("s:unix:Mac OS X:10.10 and newer, or iOS", ("65535",), (MACOS_LAYOUTS[True, True],),
             scales=("5", "6", "7"), quirks=("df,id+", "df,ecn", "id-,ecn"), source="""\
Apple's stack since OS X 10.10 / iOS 8 (xnu tcp_output.c): window 65535 (the
receive space is 556032, over 65535), scale from tcp_set_max_rwinscale():
5, 6 or 7 for an auto-tuning maximum of 2, 4 or 8 MiB (tcp_subr.c). ECN per
connection (tcp_heuristic_do_ecn, ecn_initiate_out=2) and a zero IP ID with
or without DF on recent releases. macOS and iOS send the same SYN.
Sources: tcp-stack-rules.md 4.1-4.3; labeled captures huginn-net__macos_*
(ground truth: scale 6, df,ecn and id-,ecn), ndpi__ookla, ndpi__netflix."""),
        Rule("s:unix:Mac OS X:10.10 and newer, or iOS", ("65535",), (MACOS_LAYOUTS[True, False],),
             scales=("5", "7"), source="""\
net.inet.tcp.sack=0: no SACK-permitted. Scale 6 is left out: FreeBSD's
default SYN with SACK off is the same (65535, 6)."""),
    ),
    "bsd-syn": (
        Rule("s:unix:FreeBSD:9.x or newer", ("65535",),
             (FREEBSD_LAYOUTS[True, True, False], FREEBSD_LAYOUTS[True, False, False]), scales=("6",),
             source="""\
FreeBSD with options switched off (net.inet.tcp.rfc1323=2: window scaling
only; net.inet.tcp.sack.enable=0): tcp_addoptions()'s layouts (EOL-padded
when there are no timestamps); window 65535 (recvspace 65536 capped at
TCP_MAXWIN), scale 6 (sb_max 2 MiB). Reference: tcp-stack-rules.md 5.1, 5.2."""),
        Rule("s:unix:FreeBSD:9.x or newer", ("65535",),
             (FREEBSD_LAYOUTS[False, True, True], FREEBSD_LAYOUTS[False, False, True]), source="""\
net.inet.tcp.rfc1323=3 (timestamps only), with and without SACK."""),
        Rule("g:unix:OpenBSD:", ("16384",),
             (OPENBSD_LAYOUTS[True, True, True], OPENBSD_LAYOUTS[True, True, False]), source="""\
OpenBSD 6 and 7: window 16384 (TCP_RECVSPACE); the scale follows sb_max,
raised since p0f's 4.x-5.x line (scale 3) and not verified, so any (generic).
With window scaling off the NOP+WS group is dropped. Reference:
tcp-stack-rules.md 5.3."""),
    ),
    "linux-synack": (
        Rule("s:unix:Linux:4.19 and newer", _mss_windows(_SYNACK_TS_N), _TS_LAYOUTS, quirks=("df",),
             source="""\
Linux 4.20+ answering: tcp_openreq_init_rwin() offers the largest multiple of
MSS-12 under 65535 when timestamps are echoed (65160 = 45 x 1448 at MTU
1500), of the MSS otherwise; the options are those both sides allow, in the
writer's order; DF with IP ID 0. Reference: tcp-stack-rules.md 1.2, 1.6, 1.7;
checked against real 6.18 listeners by tests/test_conformance_kernel.py."""),
        Rule("s:unix:Linux:4.19 and newer", _mss_windows(_SYN_N), _NO_TS_LAYOUTS, quirks=("df",)),
    ),
    "windows-synack": (
        Rule("s:win:Windows:Server 2016 and newer, or 10 or 11", ("65535",),
             tuple(v for v in WINDOWS_SYNACK_LAYOUTS if "ws" in v.split(",")), scales=("8",),
             quirks=("df,id+", "df,id+,ecn"), ttl=128, source="""\
Windows Server 2016 to 2025 (and Windows 10/11) answering: window 65535,
scale 8 when the client offered window scaling, with or without ECE
(ECN negotiated); the layouts echo the client's options as Windows 7/8's do.
Without window scaling the 65535 lines are p0f's XP ones, except these two.
Sources: tcp-stack-rules.md 3.1, 3.2."""),
        Rule("s:win:Windows:Server 2016 and newer, or 10 or 11", ("65535",), ("mss,sok,ts", "mss,nop,nop,ts"),
             ttl=128),
    ),
    "macos-synack": (
        Rule("s:unix:Mac OS X:10.10 and newer, or iOS", ("65535",), (MACOS_LAYOUTS[True, True],),
             scales=("5", "6", "7"), source="""\
Apple's stack answering (the same writer, section 4.1): p0f 3.09b knows only
scale 0; today's scale is 5, 6 or 7 as for its SYNs. Only the layout no other
stack writes. Reference: tcp-stack-rules.md 4.1, 4.2."""),
    ),
}


def render_block(name: str) -> list[str]:
    """The .fp lines of one generated block (between its markers)."""
    out: list[str] = []
    label = None
    for rule in BLOCKS[name]:
        if rule.source:
            out.extend("; " + ln for ln in rule.source.splitlines())
        if rule.label != label:
            out.append(f"label = {rule.label}")
            label = rule.label
        out.extend(f"sig   = {sig}" for sig in rule.lines())
    return out


GENERATED_START = "; --- fingerprintd additions, generated: "
GENERATED_END = "; --- end of fingerprintd additions, generated: "
GENERATED_NOTE = ("; (made by scripts/gen_signatures.py from fingerprintd/stackrules.py; "
                  "edit that table, not these lines)")


def regenerate(text: str) -> str:
    """The database text with every generated block rewritten from the table."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line.startswith(GENERATED_START):
            name = line[len(GENERATED_START):].split()[0]
            if name not in BLOCKS:
                raise ValueError(f"line {i}: unknown generated block {name!r}")
            out.append(GENERATED_NOTE)
            out.extend(render_block(name))
            while i < len(lines) and not lines[i].startswith(GENERATED_END):
                i += 1
            if i == len(lines):
                raise ValueError(f"generated block {name!r} has no end marker")
    return "\n".join(out)


def generated_line_numbers(text: str) -> set[int]:
    """Line numbers inside the generated blocks of a database text."""
    return marked_additions(text, GENERATED_START, GENERATED_END)


# --- The family fallback ---------------------------------------------------

@dataclass(frozen=True)
class Writer:
    """A stack's option writer: the layouts it produces in one direction, at its initial TTL."""

    family: str  # the label name given to a fallback match ("Linux")
    klass: str  # p0f class of the family ("unix", "win")
    to_server: bool
    ttl: int
    layouts: dict[str, str]  # layout -> what it means ("timestamps off")
    whole_segments: bool  # the window is always a whole number of MSS-sized segments (or 65535)
    source: str


def _options_named(key: tuple[bool, ...], names: tuple[str, ...]) -> str:
    off = [n for n, on in zip(names, key, strict=True) if not on]
    if not off:
        return "all options on"
    return (", ".join(off[:-1]) + " and " + off[-1] if len(off) > 1 else off[0]) + " off"


def _meanings(layouts: dict, names: tuple[str, ...]) -> dict[str, str]:
    """layout -> which of the options `names` (in the layout table's key order) are off."""
    return {v: _options_named(k, names) for k, v in layouts.items()}


_LINUX_MEANING = _meanings(LINUX_LAYOUTS, ("timestamps", "SACK", "window scaling"))
_MACOS_MEANING = _meanings(MACOS_LAYOUTS, ("rfc1323", "SACK"))
_WRITERS = (
    Writer("Linux", "unix", True, 64, _LINUX_MEANING, True,
           "tcp_options_write() in net/ipv4/tcp_output.c"),
    Writer("Linux", "unix", False, 64, _LINUX_MEANING, True,
           "tcp_synack_options() and tcp_options_write() in net/ipv4/tcp_output.c"),
    Writer("Windows", "win", True, 128, {WINDOWS_SYN_LAYOUTS[0]: "the default options",
                                         WINDOWS_SYN_LAYOUTS[1]: "timestamps enabled",
                                         "mss,nop,nop,sok": "window scaling off"}, False,
           "p0f 3.09b's and huginn-net's Windows lines"),
    Writer("Windows", "win", False, 128, {v: "the client's options echoed" for v in WINDOWS_SYNACK_LAYOUTS}, False,
           "p0f 3.09b's Windows [tcp:response] lines"),
    Writer("Mac OS X", "unix", True, 64, _MACOS_MEANING, False, "tcp_output() in xnu bsd/netinet/tcp_output.c"),
    Writer("Mac OS X", "unix", False, 64, _MACOS_MEANING, False, "tcp_output() in xnu bsd/netinet/tcp_output.c"),
    Writer("FreeBSD", "unix", True, 64, _meanings(FREEBSD_LAYOUTS, ("window scaling", "SACK", "timestamps")),
           False, "tcp_addoptions() in FreeBSD sys/netinet/tcp_output.c"),
    Writer("OpenBSD", "unix", True, 64, _meanings(OPENBSD_LAYOUTS, ("timestamps", "SACK", "window scaling")),
           False, "the order of p0f 3.09b's OpenBSD lines (tcp_output.c)"),
)


@dataclass(frozen=True)
class Claim:
    writer: Writer
    meaning: str
    needs_whole_segments: bool  # the layout is shared: only Linux's segment-rounded window tells it apart


FALLBACK_FLAVOR = "(by option layout)"  # the flavor of every fallback label: "Linux (by option layout)"


class Fallback(NamedTuple):
    """A family fallback verdict."""

    label: Label  # generic, FALLBACK_FLAVOR, not from any line (line 0)
    ttl: int  # the family's initial TTL
    why: str


class FamilyFallback:
    """(direction, initial TTL, layout) -> the one writer that produces it.

    A layout two writers produce at the same initial TTL is claimed by
    neither, unless exactly one of them rounds its window to whole segments
    (Linux): then it is claimed for windows that are whole segments only.
    """

    def __init__(self, writers: tuple[Writer, ...] = _WRITERS) -> None:
        by_key: dict[tuple[bool, int, str], list[Writer]] = {}
        for w in writers:
            for layout in w.layouts:
                by_key.setdefault((w.to_server, w.ttl, layout), []).append(w)
        self.claims: dict[tuple[bool, int, str], Claim] = {}
        self.labels = {(w.klass, w.family): Label(True, w.klass, w.family, FALLBACK_FLAVOR, 0, 0) for w in writers}
        for key, ws in by_key.items():
            families = {w.family for w in ws}
            if len(families) == 1:
                self.claims[key] = Claim(ws[0], ws[0].layouts[key[2]], False)
            else:
                rounding = [w for w in ws if w.whole_segments]
                if len(rounding) == 1:
                    self.claims[key] = Claim(rounding[0], rounding[0].layouts[key[2]], True)

    def claim(self, to_server: bool, ttl: int, layout: str, win: int, mss: int, ts: bool) -> Fallback | None:
        """The verdict on a packet's shape (TTL, option layout as p0f writes it, window, MSS, whether
        it has timestamps), or None when no single writer claims it."""
        for ittl in (64, 128):
            if ittl - MAX_DIST <= ttl <= ittl:  # within p0f's MAX_DIST hops of the initial TTL
                break
        else:
            return None
        claim = self.claims.get((to_server, ittl, layout))
        if claim is None:
            return None
        w = claim.writer
        whole = bool(mss) and (win % mss == 0 or (ts and mss > 12 and win % (mss - 12) == 0))
        if claim.needs_whole_segments and not whole:
            return None
        why = (f"no line matches; option layout {layout} at initial TTL {ittl} is what {w.family}'s option "
               f"writer produces ({claim.meaning}; {w.source})")
        if claim.needs_whole_segments:
            why += ", and the window is whole segments as Linux rounds it"
        return Fallback(self.labels[w.klass, w.family], w.ttl, why)


@cache
def _generated_lines() -> frozenset[tuple[str, str]]:
    """(label text as p0f prints it, sig text) of every generated line."""
    out = set()
    for rules in BLOCKS.values():
        for rule in rules:
            kind, klass, name, flavor = rule.label.split(":", 3)
            text = Label(kind == "g", klass, name, flavor or None, 0, 0).text
            out.update((text, sig) for sig in rule.lines())
    return frozenset(out)


@cache
def _bundled_fallback() -> FamilyFallback:
    return FamilyFallback()


def fallback_for(db: Database) -> FamilyFallback | None:
    """The family fallback for a database built from these rules (one holding every generated
    line), else None: with p0f's own database, or any other, verdicts stay p0f's."""
    have = {(s.label.text, s.text) for s in db.request + db.response}
    return _bundled_fallback() if _generated_lines() <= have else None
