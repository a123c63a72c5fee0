"""p0f v3 ``.fp`` text -> a signature database.

Pure: ``parse_text`` takes the text and a name to blame in errors; only
``load`` touches the file system.  The grammar and every accepted token are
p0f 3.09b's (``readfp.c`` and ``fp_tcp.c:tcp_register_sig``), including its
refusal of a specific signature that an earlier one already covers.  Errors
are ``SignatureError`` and read ``file:line: what was wrong``.

One p0f bug is fixed and can be restored by reading in ``mode.P0F_BUGS``
(``P0fMode.ttl_olen_cut``): for a random-TTL ittl (``64-``) p0f skips the
first character of the IP-option length that follows, so ``64-:40:``
registers olen 0.  The database keeps the mode it was read in: the matcher
and the engine take theirs from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fingerprintd.mode import FIXED, P0fMode
from fingerprintd.packet import Q_DF, Q_ECN, Q_FLOW, Q_NZ_ID, Q_ZERO_ID, QUIRK_TOKENS

MAX_DIST = 35
MAX_TCP_OPT = 24
NAME_CHARS = " ./-_!?()"

WIN_ANY, WIN_NORMAL, WIN_MOD, WIN_MSS, WIN_MTU = 0, 1, 2, 3, 4

_OPT_TOKENS = (("nop", 1), ("mss", 2), ("ws", 3), ("sok", 4), ("sack", 5), ("ts", 8))
_IPV4_ONLY = {"df", "id+", "id-", "0+"}
_FIELD = re.compile(r"([A-Za-z_]*)[ \t]*=[ \t]*")
_LABEL = re.compile(r"([sg]):([A-Za-z0-9!]+):")
_NAME = re.compile(r"[A-Za-z0-9 ./\-_!?()]+:")
_TTL = re.compile(r"([0-9]+)(?:(-)|\+([0-9]*))?")
_DIGITS = re.compile(r"[0-9]*")
_EOL = re.compile(r"eol\+([0-9]*)")
_PCLASS = {"*": None, "0": 0, "+": 1}


class SignatureError(ValueError):
    """A problem in a signature file, located by file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class Label:
    generic: bool
    klass: str  # the class as registered in `classes`, or "!" for tools
    name: str  # first spelling registered for this name (p0f prints that)
    flavor: str | None
    label_id: int
    line: int
    sys: tuple[str, ...] = ()

    @property
    def is_app(self) -> bool:
        return self.klass == "!"

    @property
    def text(self) -> str:
        """Name and flavor the way p0f prints them."""
        return f"{self.name} {self.flavor}" if self.flavor else self.name


@dataclass(frozen=True, slots=True)
class TcpSig:
    """One `sig =` line of a [tcp:*] section."""

    ver: int | None  # 4, 6, or None for '*'
    ttl: int
    bad_ttl: bool  # the 'N-' form: N is the largest initial TTL
    olen: int
    mss: int | None  # None = '*'
    win_type: int
    win: int
    wscale: int | None
    layout: bytes
    eol_pad: int
    quirks: int
    pclass: int | None  # None = '*', 0, or 1 for '+'
    label: Label
    line: int
    text: str  # the value as written

    @property
    def generic(self) -> bool:
        return self.label.generic


@dataclass(slots=True)
class Database:
    source: str
    classes: tuple[str, ...] = ()
    mtu: dict[int, str] = field(default_factory=dict)
    mtu_lines: list[tuple[int, str, int]] = field(default_factory=list)  # (mtu, label, line)
    request: list[TcpSig] = field(default_factory=list)  # [tcp:request], file order
    response: list[TcpSig] = field(default_factory=list)  # [tcp:response]
    http_sigs: int = 0  # [http:*] signatures are parsed for syntax only
    labels: list[Label] = field(default_factory=list)
    mode: P0fMode = FIXED  # the mode it was read in: the Matcher's and the Engine's (see fingerprintd.mode)

    def tcp(self, to_server: bool) -> list[TcpSig]:
        return self.request if to_server else self.response

    @property
    def sig_count(self) -> int:
        return len(self.mtu_lines) + len(self.request) + len(self.response) + self.http_sigs


ADDITIONS_START = "; --- fingerprintd additions"
ADDITIONS_END = "; --- end of fingerprintd additions"


def marked_additions(text: str, start: str = ADDITIONS_START, end: str = ADDITIONS_END) -> set[int]:
    """Line numbers inside the file's marked addition blocks (lines not from p0f's database), or inside the
    blocks other markers open and close; numbered as parse_text numbers them (lines end at "\\n" only)."""
    inside, out = False, set()
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith(start):
            inside = True
        elif line.startswith(end):
            inside = False
        elif inside:
            out.add(number)
    return out


def load(path: str | Path, mode: P0fMode = FIXED) -> Database:
    """Read and parse a database file in `mode`; OSError and SignatureError propagate."""
    p = Path(path)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SignatureError(str(p), line, "not valid UTF-8 text") from None
    return parse_text(text, str(p), mode)


class _Parser:
    def __init__(self, source: str, mode: P0fMode) -> None:
        self.db = Database(source, mode=mode)
        self.source = source
        self.ttl_olen_cut = mode.ttl_olen_cut
        self.state = "sect"  # sect -> label -> (sys) -> sig
        self.section: str | None = None
        self.names: dict[str, str] = {}  # lower-case -> first spelling
        self.label: Label | None = None
        self.label_id = 0
        self.mtu_label: str | None = None
        self.line = 0
        # The specific lines so far, per direction (True: request), for p0f's "already covered" check.
        self.specific = {True: CoverIndex(), False: CoverIndex()}
        self.handlers = {"classes": self.classes_line, "label": self.label_line, "sys": self.sys_line,
                         "sig": self.sig_line, "ua_os": self.ua_os_line}

    def fail(self, message: str) -> SignatureError:
        return SignatureError(self.source, self.line, message)

    def intern(self, name: str) -> str:
        return self.names.setdefault(name.lower(), name)

    def feed(self, raw: str) -> None:
        line = raw.lstrip(" \t")
        if not line or line.startswith(";"):
            return
        if line.startswith("["):
            self.section_line(line)
            return
        m = _FIELD.match(line)
        if not m or not m.group(1):
            raise self.fail("expected 'name = value' or a [section] header")
        key, val = m.group(1), line[m.end():]
        handler = self.handlers.get(key)
        if handler is None:
            raise self.fail(f"unknown field {key!r} (expected classes, label, sys, sig or ua_os)")
        handler(val)

    def section_line(self, line: str) -> None:
        if line in ("[mtu]", "[tcp:request]", "[tcp:response]", "[http:request]", "[http:response]"):
            self.section = line[1:-1]
            self.state = "label"
            return
        hint = " (trailing blanks or a \\r are not allowed)" if line.rstrip() != line else ""
        raise self.fail(
            f"unknown section {line!r}{hint}; expected [mtu], [tcp:request], "
            "[tcp:response], [http:request] or [http:response]"
        )

    def classes_line(self, val: str) -> None:
        if self.state != "sect":
            raise self.fail("'classes' must come before the first section")
        classes = _comma_list(val, r"[A-Za-z0-9]+")
        if classes is None:
            raise self.fail("malformed classes; expected comma-separated letters and digits")
        self.db.classes = self.db.classes + tuple(classes)

    def find_class(self, name: str) -> str:
        for c in self.db.classes:
            if c.lower() == name.lower():
                return c
        known = ", ".join(self.db.classes) or "none declared"
        raise self.fail(f"unknown class {name!r} (declared classes: {known})")

    def label_line(self, val: str) -> None:
        if self.state not in ("label", "sig"):
            raise self.fail(
                "misplaced 'label': expected after a [section] header or a sig"
                + (" ('sys' must follow a '!' label)" if self.state == "sys" else "")
            )
        if self.section == "mtu":
            if not val:
                raise self.fail("empty [mtu] label")
            self.mtu_label = val
            self.state = "sig"
            return
        m = _LABEL.match(val)
        if not m:
            raise self.fail("malformed label; expected 'label = s|g:class|!:name:flavor'")
        klass = "!" if m.group(2) == "!" else self.find_class(m.group(2))
        rest = val[m.end():]
        nm = _NAME.match(rest)
        if not nm or not rest[: nm.end() - 1].isascii():
            raise self.fail(
                f"malformed name in label; names use letters, digits and {NAME_CHARS!r}, "
                "followed by ':'"
            )
        name = self.intern(rest[: nm.end() - 1])
        flavor = rest[nm.end():] or None
        self.label_id += 1
        self.label = Label(m.group(1) == "g", klass, name, flavor, self.label_id, self.line)
        self.db.labels.append(self.label)
        self.state = "sys" if klass == "!" else "sig"

    def sys_line(self, val: str) -> None:
        if self.state != "sys":
            raise self.fail("misplaced 'sys': it belongs right after a '!' (application) label")
        items = _comma_list(val, r"@?[A-Za-z0-9 ./\-_!?()]+")
        if items is None or any(i == "@" for i in items):
            raise self.fail("malformed sys; expected comma-separated OS names or @class")
        entries = [
            "@" + self.find_class(i[1:]) if i.startswith("@") else self.intern(i) for i in items
        ]
        assert self.label is not None
        self.label = Label(
            self.label.generic, self.label.klass, self.label.name, self.label.flavor,
            self.label.label_id, self.label.line, tuple(entries),
        )
        self.db.labels[-1] = self.label
        self.state = "sig"

    def ua_os_line(self, val: str) -> None:
        if self.section != "http:request" or self.state != "label":
            raise self.fail("misplaced 'ua_os': it belongs at the top of [http:request]")

    def sig_line(self, val: str) -> None:
        if self.state != "sig":
            raise self.fail(
                "misplaced 'sig': expected after a label"
                + (" and its 'sys' line" if self.state == "sys" else "")
            )
        if self.section == "mtu":
            if not re.fullmatch(r"[0-9]+", val) or not 0 < int(val) <= 65535:
                raise self.fail(f"malformed MTU {val!r}; expected a number from 1 to 65535")
            assert self.mtu_label is not None
            mtu = int(val)
            self.db.mtu_lines.append((mtu, self.mtu_label, self.line))
            self.db.mtu.setdefault(mtu, self.mtu_label)  # first line wins, as in p0f
        elif self.section in ("tcp:request", "tcp:response"):
            self.tcp_sig(val)
        else:
            self.db.http_sigs += 1

    def tcp_sig(self, val: str) -> None:
        assert self.label is not None
        fields = val.split(":", 4)
        if len(fields) < 5:
            raise self.fail("malformed signature; expected ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass")
        ver_s, ittl_s, olen_s, mss_s, rest = fields
        if ver_s not in ("4", "6", "*"):
            raise self.fail(f"IP version must be 4, 6 or *, not {ver_s!r}")
        ver = None if ver_s == "*" else int(ver_s)

        # Numbers follow p0f's atol(): an empty field reads as 0.
        m = _TTL.fullmatch(ittl_s)
        if not m:
            raise self.fail(f"malformed initial TTL {ittl_s!r}; expected N, N- or N+D")
        ttl = int(m.group(1))
        if not 1 <= ttl <= 255:
            raise self.fail(f"initial TTL {ttl} out of range 1..255")
        bad_ttl = m.group(2) is not None
        if bad_ttl and self.ttl_olen_cut:
            olen_s = olen_s[1:]  # p0f skips the first character of olen after 'N-:'
        elif m.group(3) is not None:
            ttl += _num(m.group(3) or "0")
            if ttl > 255:
                raise self.fail(f"initial TTL {ittl_s} adds up past 255")
        olen = self.number(olen_s, 0, 255, "IP option length")
        mss = None if mss_s == "*" else self.number(mss_s, 0, 65535, "MSS ('*' or a number)")

        win_s, rest = self.split(rest, ",", "malformed window; expected 'wsize,scale'")
        win_type, win = self.window(win_s)
        scale_s, rest = self.split(rest, ":", "malformed signature; expected ':' after the window scale")
        wscale = None if scale_s == "*" else self.number(scale_s, 0, 255, "window scale ('*' or a number)")
        layout_s, rest = self.split(rest, ":", "malformed signature; expected ':' after the option layout")
        layout, eol_pad = self.options(layout_s)
        quirks_s, pclass_s = self.split(rest, ":", "malformed signature; expected ':' before the payload class")
        quirks = self.quirks(quirks_s, ver)
        pclass_map = _PCLASS
        if pclass_s not in pclass_map:
            hint = " (trailing blanks or a \\r are not allowed)" if pclass_s.rstrip() in pclass_map else ""
            raise self.fail(f"malformed payload class {pclass_s!r}; expected *, 0 or +{hint}")

        sig = TcpSig(
            ver, ttl, bad_ttl, olen, mss, win_type, win, wscale, layout, eol_pad, quirks,
            pclass_map[pclass_s], self.label, self.line, val,
        )
        request = self.section == "tcp:request"
        earlier = self.specific[request]
        covering = earlier.first(sig)
        if covering is not None:
            raise self.fail(f"signature is already covered by line {covering.line}")
        earlier.add(sig)
        self.db.tcp(request).append(sig)

    def split(self, text: str, sep: str, expected: str) -> tuple[str, str]:
        head, found, rest = text.partition(sep)
        if not found:
            raise self.fail(expected)
        return head, rest

    def number(self, s: str, lo: int, hi: int, what: str) -> int:
        if not _DIGITS.fullmatch(s):
            raise self.fail(f"malformed {what}: {s!r}")
        n = _num(s)
        if not lo <= n <= hi:
            raise self.fail(f"{what} {n} out of range {lo}..{hi}")
        return n

    def window(self, s: str) -> tuple[int, int]:
        if s == "*":
            return WIN_ANY, 0
        if s.startswith("%"):
            return WIN_MOD, self.number(s[1:], 2, 65535, "window modulus (%N)")
        if s[:4] in ("mss*", "mtu*"):
            return (WIN_MSS if s[1] == "s" else WIN_MTU), self.number(s[4:], 1, 1000, "window multiplier")
        if not _DIGITS.fullmatch(s):
            raise self.fail(f"malformed window {s!r}; expected *, N, %N, mss*N or mtu*N")
        return WIN_NORMAL, self.number(s, 0, 65535, "window size")

    def options(self, s: str) -> tuple[bytes, int]:
        if not s:
            return b"", 0
        kinds = bytearray()
        eol_pad = 0
        items = _items(s)
        for i, tok in enumerate(items):
            if len(kinds) >= MAX_TCP_OPT:
                raise self.fail(f"more than {MAX_TCP_OPT} TCP options")
            if tok.startswith("eol"):
                m = _EOL.fullmatch(tok)
                if not m:
                    raise self.fail(f"malformed EOL option {tok!r}; expected eol+N")
                if i != len(items) - 1:
                    raise self.fail("eol+N must be the last option")
                kinds.append(0)
                eol_pad = self.number(m.group(1), 0, 255, "EOL padding")
            elif tok.startswith("?"):
                kinds.append(self.number(tok[1:], 0, 255, "option kind (?N)"))
            else:
                for name, kind in _OPT_TOKENS:
                    if tok == name:
                        kinds.append(kind)
                        break
                else:
                    raise self.fail(
                        f"unknown TCP option {tok!r}; expected eol+N, nop, mss, ws, sok, sack, ts or ?N"
                    )
        return bytes(kinds), eol_pad

    def quirks(self, s: str, ver: int | None) -> int:
        if not s:
            return 0
        bits = dict(QUIRK_TOKENS)
        quirks = 0
        for tok in _items(s):
            if tok not in bits:
                raise self.fail(f"unknown quirk {tok!r}; expected one of {', '.join(bits)}")
            if ver == 6 and tok in _IPV4_ONLY:
                raise self.fail(f"quirk {tok!r} is not valid for IPv6")
            if ver == 4 and tok == "flow":
                raise self.fail("quirk 'flow' is not valid for IPv4")
            quirks |= bits[tok]
        return quirks


def shadowed(db: Database) -> list[tuple[str, TcpSig, TcpSig]]:
    """Lines that can never win: (section, line, the earlier line that covers it).

    Any line covered by an earlier specific line is already an error (as in
    p0f); what is left is a generic line behind an earlier generic line that
    matches everything it does: the first generic match always wins.
    """
    out = []
    for section, sigs in (("tcp:request", db.request), ("tcp:response", db.response)):
        earlier = CoverIndex(include_generic=True)
        for sig in sigs:
            if sig.generic:
                ref = earlier.first(sig)
                if ref is not None:
                    out.append((section, sig, ref))
                earlier.add(sig)
    return out


# The quirks a `*` (any version) line cannot demand of an IPv6 packet, and of an IPv4 one.
V6_QUIRK_MASK = ~(Q_DF | Q_NZ_ID | Q_ZERO_ID)
V4_QUIRK_MASK = ~Q_FLOW


def demanded_quirks(sig: TcpSig, ip_ver: int) -> int:
    """The quirks a line demands of a packet (or a line read as one) of an IP version: a `*` line's are masked.

    The covering check's index keys on it, and Rule (the comparison) holds it per version.
    """
    if sig.ver is not None:
        return sig.quirks
    return sig.quirks & (V4_QUIRK_MASK if ip_ver == 4 else V6_QUIRK_MASK)


class CoverIndex:
    """Earlier lines, bucketed by what `covers` needs to be exactly equal.

    p0f checks a new line against every earlier one, which is quadratic: 200k
    lines took minutes.  A line can only cover another with the same option
    layout, EOL padding, IP option length and (masked) quirks, an MSS, window
    scale and payload class that is equal or `*`, and a window that is equal,
    `*`, a modulus, or the multiplier the new line's window reads as.  So the
    candidates are the few buckets those keys name; `covers` still decides,
    and the earliest covering line wins, as in p0f's file-order scan.
    """

    def __init__(self, include_generic: bool = False) -> None:
        self.include_generic = include_generic
        # (layout, eol_pad, olen, masked quirks, mss, wscale, pclass) -> window key -> lines in file order;
        # one map for new IPv4 lines, one for the rest (a `*` line's quirk mask differs).
        self._v4: dict[tuple, dict[tuple[int, int], list[TcpSig]]] = {}
        self._other: dict[tuple, dict[tuple[int, int], list[TcpSig]]] = {}
        self._moduli: dict[tuple, set[int]] = {}  # the %N windows present per bucket of _other/_v4

    def add(self, ref: TcpSig) -> None:
        if ref.generic and not self.include_generic:
            return
        q4, qo = demanded_quirks(ref, 4), demanded_quirks(ref, 6)
        wkey = (ref.win_type, ref.win)
        for table, q, tag in ((self._v4, q4, 4), (self._other, qo, 0)):
            key = (ref.layout, ref.eol_pad, ref.olen, q, ref.mss, ref.wscale, ref.pclass)
            table.setdefault(key, {}).setdefault(wkey, []).append(ref)
            if ref.win_type == WIN_MOD:
                self._moduli.setdefault((tag, *key), set()).add(ref.win)

    def first(self, new: TcpSig) -> TcpSig | None:
        """The earliest added line that covers `new`, or None."""
        table, tag = (self._v4, 4) if new.ver == 4 else (self._other, 0)
        wkeys = self._window_keys(new)
        best: TcpSig | None = None
        for mss in _OR_ANY(new.mss):
            for wscale in _OR_ANY(new.wscale):
                for pclass in _OR_ANY(new.pclass):
                    key = (new.layout, new.eol_pad, new.olen, new.quirks, mss, wscale, pclass)
                    windows = table.get(key)
                    if windows is None:
                        continue
                    keys = wkeys
                    if new.win_type == WIN_NORMAL:
                        moduli = self._moduli.get((tag, *key))
                        if moduli:
                            keys = wkeys + [(WIN_MOD, m) for m in _dividing(new.win, moduli)]
                    for wkey in keys:
                        for ref in windows.get(wkey, ()):
                            if best is not None and ref.line > best.line:
                                break
                            if covers(ref, new, self.include_generic):
                                best = ref
                                break
        return best

    def _window_keys(self, new: TcpSig) -> list[tuple[int, int]]:
        keys = [(new.win_type, new.win)]
        if new.win_type == WIN_NORMAL:
            keys.append((WIN_ANY, 0))
            multi, use_mtu = win_multiplier(new.win, -1 if new.mss is None else new.mss, 0, new.ver or 0, 0, 0)
            if multi > 0:
                keys.append((WIN_MTU if use_mtu else WIN_MSS, multi))
        elif self.include_generic and new.win_type != WIN_ANY:
            keys.append((WIN_ANY, 0))
        return keys


def _OR_ANY(value: int | None) -> tuple[int | None, ...]:
    """The values of a field a covering line may have: the same, or `*`."""
    return (None,) if value is None else (value, None)


def _dividing(win: int, moduli: set[int]) -> list[int]:
    """The moduli that divide `win`: by trying each while there are few, else by `win`'s divisors."""
    if len(moduli) <= 64 or not win:
        return [m for m in moduli if win % m == 0]
    out = []
    d = 1
    while d * d <= win:
        if win % d == 0:
            out += [x for x in {d, win // d} if x in moduli]
        d += 1
    return out


# The per-field comparison of one line with a packet (p0f's tcp_find_match), defined once: the matcher
# compares packets with it, and the covering check compares a new line, read as a packet, with an earlier one.
# Rule.fit answers FIT_EXACT, a fuzzy verdict (the FIT_FUZZY_* bits), or the first field that rules the line
# out (a MISS_* code, in the order the fields are compared).
FIT_EXACT = 0
FIT_FUZZY_QUIRKS = 1  # only `df`/`id+` vanishing or `id-`/`ecn` appearing
FIT_FUZZY_TTL = 2  # the TTL is out of the line's range, which never rules a line out
MISS_QUIRKS, MISS_EOL_PAD, MISS_OLEN, MISS_TTL, MISS_MSS, MISS_WSCALE, MISS_PCLASS = range(4, 11)
ANY = -1  # a `*` field in a Rule
_FUZZY_DELETABLE = Q_DF | Q_NZ_ID
_FUZZY_ADDABLE = Q_ZERO_ID | Q_ECN


class Rule:
    """A line's fields as the comparison reads them: plain ints, ANY for `*`, the quirks masked per IP version.

    Made once per line (the matcher holds one per line; compiled, it is a C struct, see _csignatures.pxd).
    """

    __slots__ = ("sig", "ttl", "bad_ttl", "olen", "eol_pad", "mss", "wscale", "pclass", "win_type", "win",
                 "quirks4", "quirks6", "generic", "tool", "layout", "label", "line")

    def __init__(self, sig: TcpSig) -> None:
        self.sig = sig
        self.label = sig.label
        self.line = sig.line
        self.ttl = sig.ttl
        self.bad_ttl = sig.bad_ttl
        self.olen = sig.olen
        self.eol_pad = sig.eol_pad
        self.mss = ANY if sig.mss is None else sig.mss
        self.wscale = ANY if sig.wscale is None else sig.wscale
        self.pclass = ANY if sig.pclass is None else sig.pclass
        self.win_type = sig.win_type
        self.win = sig.win
        self.quirks4 = demanded_quirks(sig, 4)  # what the line demands of an IPv4 packet
        self.quirks6 = demanded_quirks(sig, 6)  # and of any other
        self.generic = sig.label.generic
        self.tool = sig.label.is_app
        self.layout = sig.layout

    def wants_quirks(self, ver: int) -> int:
        return self.quirks4 if ver == 4 else self.quirks6

    def fit(self, ver: int, ttl: int, olen: int, quirks: int, flow: bool, eol_pad: int, mss: int, wscale: int,
            pclass: int) -> int:
        """Every field but the option layout (the caller's bucket) and the window (window_fits).

        `flow`: the packet's IPv6 flow label, held out of `quirks` (matcher.Probe.twin): it counts only
        for a line that asks for it.
        """
        want = self.quirks4 if ver == 4 else self.quirks6
        if flow and want & Q_FLOW:
            quirks |= Q_FLOW
        verdict = FIT_EXACT
        if want != quirks:
            if want & ~quirks & ~_FUZZY_DELETABLE or quirks & ~want & ~_FUZZY_ADDABLE:
                return MISS_QUIRKS
            verdict = FIT_FUZZY_QUIRKS
        if self.eol_pad != eol_pad:
            return MISS_EOL_PAD
        if self.olen != olen:
            return MISS_OLEN
        if self.bad_ttl:
            if self.ttl < ttl:
                return MISS_TTL
        elif self.ttl < ttl or self.ttl - ttl > MAX_DIST:
            verdict |= FIT_FUZZY_TTL
        if self.mss != ANY and self.mss != mss:
            return MISS_MSS
        if self.wscale != ANY and self.wscale != wscale:
            return MISS_WSCALE
        if self.pclass != ANY and self.pclass != pclass:
            return MISS_PCLASS
        return verdict

    def window_fits(self, win: int, multi: int, use_mtu: bool) -> bool:
        """A packet's window (and its MSS/MTU multiplier, see win_multiplier) against the line's."""
        wt = self.win_type
        if wt == WIN_NORMAL:
            return self.win == win
        if wt == WIN_MOD:
            return win % self.win == 0
        if wt == WIN_MSS:
            return not use_mtu and self.win == multi
        if wt == WIN_MTU:
            return use_mtu and self.win == multi
        return True


def covers(ref: TcpSig, new: TcpSig, include_generic: bool = False) -> bool:
    """Whether `ref` matches everything `new` does.

    This is p0f's registration check: the new line, treated as a packet, is
    matched exactly (no fuzz) against a specific line before it.  With
    `include_generic` (the shadow report, not p0f's check) generic lines count
    too, and a `*` window covers every window form, as it does for packets.
    """
    if (ref.generic and not include_generic) or ref.layout != new.layout:
        return False
    rule = Rule(ref)
    mss = ANY if new.mss is None else new.mss
    if rule.fit(new.ver or 0, new.ttl, new.olen, new.quirks, False, new.eol_pad, mss,
                ANY if new.wscale is None else new.wscale, ANY if new.pclass is None else new.pclass) != FIT_EXACT:
        return False
    if include_generic and ref.win_type == WIN_ANY:
        return True
    if new.win_type != WIN_NORMAL:
        return ref.win_type == new.win_type and ref.win == new.win  # windows as written: no packet has them
    # A literal window in the new line is read as a packet's would be: it may be a multiple of its own MSS.
    multi, use_mtu = (win_multiplier(new.win, mss, 0, new.ver or 0, 0, 0) if ref.win_type in (WIN_MSS, WIN_MTU)
                      else (-1, False))
    return rule.window_fits(new.win, multi, use_mtu)


def win_multiplier(
    win: int, mss: int, ts1: int, ip_ver: int, tot_hdr: int, syn_mss: int
) -> tuple[int, bool]:
    """(N, use_mtu) when the window is N times an MSS- or MTU-derived size.

    p0f's detect_win_multi: the first divisor that divides the window wins,
    in this order; (-1, False) when none does, the window is 0, or the MSS
    is under 100.
    """
    if not win or mss < 100:
        return -1, False
    if win % mss == 0:
        return win // mss, False
    if ts1 and win % (mss - 12) == 0:
        return win // (mss - 12), False
    # The usual MSS values, then the MTU-derived sizes (unrolled: the compiled copy runs it as plain C).
    if win % 1460 == 0:
        return win // 1460, False
    if win % 1448 == 0:
        return win // 1448, False
    if ip_ver == 6:
        if win % 1440 == 0:
            return win // 1440, False
        if win % 1428 == 0:
            return win // 1428, False
    if win % (mss + 40) == 0:
        return win // (mss + 40), True
    if win % (mss + tot_hdr) == 0:
        return win // (mss + tot_hdr), True
    if ip_ver == 6 and win % (mss + 60) == 0:
        return win // (mss + 60), True
    if win % 1500 == 0:
        return win // 1500, True
    if syn_mss:
        if syn_mss > 0 and win % syn_mss == 0:
            return win // syn_mss, False
        if syn_mss > 12 and win % (syn_mss - 12) == 0:  # p0f divides by zero at syn_mss 12
            return win // (syn_mss - 12), False
    return -1, False


def parse_text(text: str, source: str = "<string>", mode: P0fMode = FIXED) -> Database:
    """Parse database text in `mode`; `source` names it in error messages."""
    parser = _Parser(source, mode)
    for number, raw in enumerate(text.split("\n"), 1):
        parser.line = number
        parser.feed(raw)
    return parser.db


__all__ = [
    "Database",
    "Label",
    "TcpSig",
    "SignatureError",
    "load",
    "parse_text",
    "MAX_DIST",
    "win_multiplier",
    "shadowed",
]


def _comma_list(val: str, item: str) -> list[str] | None:
    """Split a classes/sys value the way p0f does, or None if it would refuse it.

    Blanks and commas before an item are skipped; an item runs to the next
    comma or the end; an empty item (a trailing comma) is an error.
    """
    out = []
    pos = 0
    pattern = re.compile(item)
    while pos < len(val):
        while pos < len(val) and val[pos] in " \t,":
            pos += 1
        if pos == len(val) and out:
            return None if val.rstrip(" \t").endswith(",") else out
        m = pattern.match(val, pos)
        if not m or (m.end() < len(val) and val[m.end()] != ","):
            return None
        out.append(m.group(0))
        pos = m.end()
    return out


def _num(s: str) -> int:
    return int(s) if s else 0


def _items(s: str) -> list[str]:
    """Comma-separated tokens; p0f tolerates one trailing comma before ':'."""
    return s[:-1].split(",") if s.endswith(",") else s.split(",")
