"""What the MTA knows about the client -> derived facts a policy can score.

Pure.  fingerprintd does no DNS of its own: the MTA hands over three names
(Postfix's policy service: ``client_name``, ``reverse_client_name``,
``helo_name``; the milter: the connect hostname, ``{client_ptr}`` or the
``_`` macro, the HELO; SpamAssassin: the relay's rdns and helo) and this
module turns them into facts:

* ``rdns_verified``   a forward-confirmed (FCrDNS) name exists (Postfix's
  ``client_name`` other than ``unknown``; the milter's hostname other than ``[ip]``);
* ``rdns_none``       no reverse name at all (no PTR);
* ``rdns_unverified`` a PTR exists but does not resolve back to the address
  (Postfix: ``client_name=unknown`` while ``reverse_client_name`` is set);
* ``rdns_dynamic``    the name (the verified one, else the PTR) looks dynamic
  or residential: the address's own digits in it, or a pattern of the
  bundled, overridable ``signatures/dynamic-names.toml``;
* ``helo_literal``    the HELO is an address literal (``[203.0.113.46]``) or a bare address;
* ``helo_bare``       the HELO is one word without a dot (``DESKTOP-4F7K2LQ``, ``localhost``) or empty;
* ``helo_matches``    the HELO is the verified name, or a name in its
  organizational domain (Exchange Online: the PTR and the HELO differ per
  address and datacenter but share ``*.protection.outlook.com``; T. Zink,
  "The outbound IP and HELO format for Office 365", 2016).

Every fact is None when the names it needs were not given: a rule that asks
for a fact does not fire on a lookup without context (an old client).
The context bucket (``fcrdns-match``, ``nordns-bare``, ...) is the coarse
summary the learning keys on.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fingerprintd.tomlfile import Located, TomlError

MAX_NAME = 255  # DNS names stop at 253; a longer HELO is cut (hostile input stays bounded)
_LITERAL = re.compile(r"\A\[(?:ipv6:)?([0-9a-f.:]+)\]\Z")
_DIGITS = re.compile(r"\d+")

DynamicNamesError = TomlError  # errors read "file:line: message"


@dataclass(frozen=True, slots=True)
class Context:
    """The names as the MTA gave them; None: not given, "": known to be absent."""

    client_name: str | None = None  # verified (FCrDNS) name
    reverse_name: str | None = None  # the PTR as-is
    helo: str | None = None

    @property
    def known(self) -> bool:
        return self.client_name is not None or self.reverse_name is not None or self.helo is not None


def _clean(name: str | None, unknown: tuple[str, ...] = ("unknown",)) -> str | None:
    if name is None:
        return None
    name = "".join(ch for ch in name[:MAX_NAME] if ch.isprintable()).strip().rstrip(".").lower()
    if name in unknown or (name.startswith("[") and name.endswith("]") and unknown != ()):
        return ""  # Postfix's "unknown", the milter's "[ip]": no such name
    return name


def from_postfix(client_name: str | None, reverse_name: str | None, helo: str | None) -> Context:
    """Postfix's policy attributes (or milter macros): "unknown" means no name."""
    return Context(_clean(client_name), _clean(reverse_name), _clean(helo, ()))


def from_milter(hostname: str | None, macros: dict[str, str | None], helo: str | None = None) -> Context:
    """The milter's connect hostname (verified name or "[ip]"), `{client_ptr}` or the `_` macro
    ("<reverse name> [<addr>]", with " (may be forged)"), `{client_resolve}` and the HELO."""
    resolve = (macros.get("{client_resolve}") or "").upper()
    verified = _clean(hostname) if hostname else _clean(macros.get("{client_name}"))
    if resolve == "TEMP":
        verified = None  # a DNS hiccup says nothing about the client
    ptr = macros.get("{client_ptr}")
    if ptr is None and macros.get("_"):
        underscore = macros["_"] or ""
        name, _, _ = underscore.partition(" [")
        ptr = name if " [" in underscore else None
    reverse = _clean(ptr) if ptr is not None else None
    if reverse is None and verified:
        reverse = verified  # a verified name is a PTR too
    if resolve == "TEMP" and reverse == "":
        reverse = None
    return Context(verified, reverse, _clean(helo, ()) if helo is not None else None)


# --- dynamic / residential names ---------------------------------------------------------

@dataclass(frozen=True)
class DynamicNames:
    """Patterns for names that look dynamic or residential, and static exemptions."""

    source: str
    dynamic: tuple[tuple[str, re.Pattern], ...]
    static: tuple[tuple[str, re.Pattern], ...]
    address_digits: bool = True

    def why(self, name: str, ip: bytes | None) -> str:
        """The reason `name` looks dynamic ("" if it does not)."""
        if not name:
            return ""
        for _, rx in self.static:
            if rx.search(name):
                return ""
        if self.address_digits and ip is not None and len(ip) == 4 and _has_address(name, ip):
            return "address-digits"
        for label, rx in self.dynamic:
            if rx.search(name):
                return label
        return ""


def _has_address(name: str, ip: bytes) -> bool:
    """The address's four octets in the name, in either order, or as hex / zero-padded digits."""
    octets = [str(b) for b in ip]
    groups = _DIGITS.findall(name)
    for i in range(len(groups) - 3):
        window = [g.lstrip("0") or "0" for g in groups[i:i + 4]]
        if window == octets or window == octets[::-1]:
            return True
    packed_hex = ip.hex()
    padded = "".join(f"{b:03d}" for b in ip)
    return packed_hex in name or padded in name or "".join(f"{b:03d}" for b in ip[::-1]) in name


def load_dynamic_names(path: str | Path) -> DynamicNames:
    p = Path(path)
    return parse_dynamic_names(p.read_text(encoding="utf-8"), str(p))


@cache
def bundled_dynamic_names() -> DynamicNames:
    """The bundled patterns, read once: what a policy uses unless its settings name another file."""
    from fingerprintd.data import bundled

    return load_dynamic_names(bundled("dynamic-names.toml"))


def parse_dynamic_names(text: str, source: str = "<dynamic-names>") -> DynamicNames:
    doc = Located(text, source)
    data, fail = doc.data, doc.error
    for key in data:
        if key not in ("settings", "dynamic", "static"):
            raise fail((key,), None, f"unknown table {key!r} (expected [settings], [[dynamic]], [[static]])")
    settings = data.get("settings", {})
    for key in settings:
        if key != "address_digits":
            raise fail(("settings",), key, f"unknown setting {key!r} (expected address_digits)")
    address_digits = settings.get("address_digits", True)
    if not isinstance(address_digits, bool):
        raise fail(("settings",), "address_digits", "address_digits must be true or false")
    out = {}
    for kind in ("dynamic", "static"):
        items = data.get(kind, [])
        if not isinstance(items, list):
            raise fail((kind,), None, f"patterns are written [[{kind}]]")
        compiled = []
        for i, raw in enumerate(items):
            sec = (kind, i)
            for key in raw:
                if key not in ("name", "regex", "source"):
                    raise fail(sec, key, f"unknown key {key!r} (expected name, regex, source)")
            name, regex = raw.get("name"), raw.get("regex")
            if not isinstance(name, str) or not name:
                raise fail(sec, "name", "every pattern needs a name")
            if not isinstance(regex, str) or not regex:
                raise fail(sec, "regex", f"pattern {name!r} needs a regex")
            try:
                compiled.append((name, re.compile(regex, re.IGNORECASE)))
            except re.error as exc:
                raise fail(sec, "regex", f"pattern {name!r}: bad regular expression: {exc}") from None
        out[kind] = tuple(compiled)
    return DynamicNames(source, out["dynamic"], out["static"], address_digits)


# --- facts ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Facts:
    known: bool
    rdns_verified: bool | None
    rdns_none: bool | None
    rdns_unverified: bool | None
    rdns_dynamic: bool | None
    helo_literal: bool | None
    helo_bare: bool | None
    helo_matches: bool | None
    dynamic_reason: str = ""

    @property
    def bucket(self) -> str:
        """The context bucket the learning keys on: <rdns>-<helo>, or "nocontext"."""
        if not self.known:
            return "nocontext"
        if self.rdns_dynamic:
            rdns = "dynamic"
        elif self.rdns_verified:
            rdns = "fcrdns"
        elif self.rdns_unverified:
            rdns = "unverified"
        elif self.rdns_none or self.rdns_verified is False:
            rdns = "nordns"
        else:
            rdns = "unknown"
        if self.helo_matches:
            helo = "match"
        elif self.helo_literal:
            helo = "literal"
        elif self.helo_bare:
            helo = "bare"
        elif self.helo_literal is None:
            helo = "unknown"
        else:
            helo = "other"
        return f"{rdns}-{helo}"


NO_FACTS = Facts(False, None, None, None, None, None, None, None)


_SECOND_LEVEL = {"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go", "gv"}


def org_domain(name: str) -> str:
    """The name's organizational domain, approximated without a public suffix list: the last two
    labels, or three under a country's second level (example.co.uk, example.com.au)."""
    labels = name.split(".")
    n = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL else 2
    return ".".join(labels[-n:]) if len(labels) >= n else ""


def helo_matches(helo: str, name: str) -> bool:
    """The HELO names the verified host or a host of its organization (Exchange Online: PTR and HELO
    differ per IP and datacenter but share *.protection.outlook.com).  Lenient on purpose: a bot that
    knows its verified name can HELO exactly that anyway; what this catches is the HELO that fits nothing."""
    if not helo or not name:
        return False
    if helo == name:
        return True
    domain = org_domain(name)
    return bool(domain) and (helo == domain or helo.endswith("." + domain))


def is_literal(helo: str) -> bool:
    m = _LITERAL.match(helo)
    text = m.group(1) if m else helo
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def derive(ctx: Context | None, ip: bytes | None, names: DynamicNames) -> Facts:
    if ctx is None or not ctx.known:
        return NO_FACTS
    verified, reverse, helo = ctx.client_name, ctx.reverse_name, ctx.helo
    rdns_verified = None if verified is None else bool(verified)
    if verified:
        rdns_none, rdns_unverified = False, False
    elif reverse is None:
        rdns_none = rdns_unverified = None
    else:
        rdns_none, rdns_unverified = reverse == "", verified == "" and reverse != ""
    name = verified or reverse
    if name:
        reason = names.why(name, ip)
        rdns_dynamic: bool | None = bool(reason)
    else:
        reason = ""
        # No PTR at all: nothing looks dynamic; unknown when only "no verified name" is known.
        rdns_dynamic = False if reverse == "" else None
    if helo is None:
        literal = bare = matches = None
    else:
        literal = is_literal(helo)
        bare = not literal and "." not in helo
        matches = None if verified is None else (not literal and helo_matches(helo, verified))
    return Facts(True, rdns_verified, rdns_none, rdns_unverified, rdns_dynamic, literal, bare, matches, reason)
