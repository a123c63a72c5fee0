"""Fingerprint -> verdict: a spam score, an action, and a header value.

Pure.  Rules come from a TOML file (``signatures/policy.toml`` is the
default) and are tried in order; every rule whose conditions all hold fires,
adding its score, until one marked ``final`` fires.  The action is the most
severe one among the rules that fired.  Clients in trusted networks score
nothing (like amavisd's @mynetworks: your own Windows relays are not spam).

The header value starts with the OS string, so `\\A`-anchored SpamAssassin
header rules written for p0f/amavisd keep working:
``Windows XP; dist: 12; link: Ethernet or modem; class: desktop; score: 2.3``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from fingerprintd.classes import MAIL_CLASSES
from fingerprintd.matcher import Fingerprint, PerFingerprint
from fingerprintd.tomlfile import Located, TomlError, compile_regexes

ACTIONS = ("tag", "tempfail", "reject")  # least to most severe
_REGEX_KEYS = ("os_class", "os_name", "flavor", "label", "link")
_BOOL_KEYS = ("unknown", "app", "generic", "fuzzy")
_INT_KEYS = ("dist_min", "dist_max")
_RULE_KEYS = {"name", "score", "action", "final", "description", "mail_class", *_REGEX_KEYS, *_BOOL_KEYS,
              *_INT_KEYS}
_SETTINGS_KEYS = {"trusted_networks", "reject_message", "tempfail_message"}


PolicyError = TomlError  # errors read "file:line: message"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    score: float
    action: str
    final: bool
    regexes: tuple[tuple[str, re.Pattern], ...]
    flags: tuple[tuple[str, bool], ...]
    dist_min: int | None
    dist_max: int | None
    mail_classes: frozenset[str] | None = None  # None: any class

    def matches(self, fp: Fingerprint) -> bool:
        if self.mail_classes is not None and fp.mail_class not in self.mail_classes:
            return False
        label = fp.label
        for key, want in self.flags:
            have = {
                "unknown": label is None,
                "app": label is not None and label.is_app,
                "generic": fp.generic,
                "fuzzy": fp.fuzzy,
            }[key]
            if have != want:
                return False
        for key, rx in self.regexes:
            if key == "link":
                text = fp.link or ""
            elif label is None:
                return False
            else:
                text = {"os_class": label.klass, "os_name": label.name, "flavor": label.flavor or "",
                        "label": label.text}[key]
            if not rx.search(text):
                return False
        if self.dist_min is not None and fp.dist < self.dist_min:
            return False
        return self.dist_max is None or fp.dist <= self.dist_max


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    action: str  # "tag", "tempfail", "reject", or "accept" for trusted clients
    rules: tuple[str, ...]
    header: str
    trusted: bool = False
    reply: str = ""  # the policy's reject_message/tempfail_message for those actions, else empty


@dataclass(frozen=True)
class Policy:
    source: str
    rules: tuple[Rule, ...]
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    reject_message: str = "550 5.7.1 Your host looks like a compromised desktop, not a mail server"
    tempfail_message: str = "451 4.7.1 Please try again later"
    # Derived: trusted networks as (address length, network, mask) integers, and
    # the untrusted verdict, made once per stack.
    _ranges: tuple = field(init=False, repr=False, compare=False)
    _scored: PerFingerprint[Verdict] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranges = tuple((n.max_prefixlen // 8, int(n.network_address), int(n.netmask)) for n in self.trusted)
        object.__setattr__(self, "_ranges", ranges)
        replies = {"reject": self.reject_message, "tempfail": self.tempfail_message}
        # Built on the rules, not on self: no reference cycle to outlive a reload.
        object.__setattr__(self, "_scored", PerFingerprint(partial(_score, self.rules, replies)))

    def is_trusted(self, ip: bytes) -> bool:
        value = int.from_bytes(ip, "big")
        for length, network, mask in self._ranges:
            if len(ip) == length and value & mask == network:
                return True
        return False

    def verdict(self, fp: Fingerprint, client_ip: bytes) -> Verdict:
        if self.is_trusted(client_ip):
            return Verdict(0.0, "accept", ("trusted_network",), f"{_head(fp)}; score: 0 (trusted)", True)
        return self._scored(fp)


def _score(rules: tuple[Rule, ...], replies: dict[str, str], fp: Fingerprint) -> Verdict:
    """Every rule in order until a final one fires; the most severe action wins."""
    score = 0.0
    fired = []
    action = "tag"
    for rule in rules:
        if rule.matches(fp):
            score += rule.score
            fired.append(rule.name)
            if ACTIONS.index(rule.action) > ACTIONS.index(action):
                action = rule.action
            if rule.final:
                break
    score = round(score, 3)
    return Verdict(score, action, tuple(fired), f"{_head(fp)}; score: {score:g}", reply=replies.get(action, ""))


def _head(fp: Fingerprint) -> str:
    return f"{fp.os_text}; dist: {fp.dist}; link: {fp.link or '???'}; class: {fp.mail_class}"


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    return parse_policy(p.read_text(encoding="utf-8"), str(p))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse a policy; every error names source:line."""
    doc = Located(text, source)
    data, fail = doc.data, doc.error
    for key in data:
        if key not in ("settings", "rule"):
            raise fail((key,), None, f"unknown table {key!r} (expected [settings] and [[rule]])")
    settings = data.get("settings", {})
    for key in settings:
        if key not in _SETTINGS_KEYS:
            raise fail(("settings",), key, f"unknown setting {key!r} (expected one of {sorted(_SETTINGS_KEYS)})")
    trusted = []
    for net in settings.get("trusted_networks", []):
        try:
            trusted.append(ipaddress.ip_network(net, strict=False))
        except (ValueError, TypeError):
            raise fail(("settings",), "trusted_networks", f"not a network: {net!r}") from None
    rules = []
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise fail(("rule",), None, "rules are written [[rule]]")
    for i, raw in enumerate(raw_rules):
        rules.append(_rule(raw, ("rule", i), fail))
    extra = {k: settings[k] for k in ("reject_message", "tempfail_message") if k in settings}
    for key, value in extra.items():
        if not isinstance(value, str) or not re.match(r"[45]\d\d [45]\.\d{1,3}\.\d{1,3} ", value):
            raise fail(("settings",), key, f"{key} must be an SMTP reply like '550 5.7.1 text'")
    return Policy(source, tuple(rules), tuple(trusted), **extra)


def _rule(raw: dict, sec: tuple, fail) -> Rule:
    for key in raw:
        if key not in _RULE_KEYS:
            raise fail(sec, key, f"unknown rule key {key!r} (expected one of {sorted(_RULE_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise fail(sec, "name", "every rule needs a name")
    score = raw.get("score", 0.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise fail(sec, "score", f"rule {name!r}: score must be a number")
    action = raw.get("action", "tag")
    if action not in ACTIONS:
        raise fail(sec, "action", f"rule {name!r}: action must be one of {', '.join(ACTIONS)}")
    regexes = compile_regexes(raw, _REGEX_KEYS, fail, sec, f"rule {name!r}: ")
    flags = []
    for key in _BOOL_KEYS:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise fail(sec, key, f"rule {name!r}: {key} must be true or false")
            flags.append((key, raw[key]))
    dist = []
    for key in _INT_KEYS:
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise fail(sec, key, f"rule {name!r}: {key} must be a whole number >= 0")
        dist.append(v)
    final = raw.get("final", False)
    if not isinstance(final, bool):
        raise fail(sec, "final", f"rule {name!r}: final must be true or false")
    mail_classes = None
    if "mail_class" in raw:
        want = raw["mail_class"]
        want = [want] if isinstance(want, str) else want
        if not isinstance(want, list) or not want or any(c not in MAIL_CLASSES for c in want):
            raise fail(sec, "mail_class", f"rule {name!r}: mail_class must be one of {', '.join(MAIL_CLASSES)}, "
                                          "or a list of them")
        mail_classes = frozenset(want)
    return Rule(name, float(score), action, final, regexes, tuple(flags), dist[0], dist[1], mail_classes)
