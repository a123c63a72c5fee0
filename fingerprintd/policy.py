"""Fingerprint -> verdict: a spam score, an action, and a header value.

Pure.  Rules come from a TOML file (``signatures/policy.toml`` is the
default) and are tried in order; every rule whose conditions all hold fires,
adding its score, until one marked ``final`` fires.  The action is the most
severe one among the rules that fired.  Clients in trusted networks score
nothing (like amavisd's @mynetworks: your own Windows relays are not spam).

Rules also condition on what the MTA knows about the client (its verified
name, reverse name and HELO; see fingerprintd/context.py): regexes over the
names and derived facts (no reverse name, a name that does not verify, a
dynamic-looking name, an address-literal or bare HELO, a HELO that matches
the verified name).  A rule asking about the context never fires without one.

The header value starts with the OS string, so `\\A`-anchored SpamAssassin
header rules written for p0f/amavisd keep working, then names the rules that
fired, the score, and a stable identifier of what was seen (signature hash,
mail class, context bucket) for learning from outcomes:
``Windows 10 or 11; dist: 12; link: Ethernet or modem; class: desktop; rules: desktop-no-rdns,client-helo-bare;
id: 5d0c9b4e2a/desktop/nordns-bare; client: 203.0.113.45; score: 1.8`` (the score last, as before).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from fingerprintd.classes import MAIL_CLASSES
from fingerprintd.context import (
    NO_FACTS,
    Context,
    DynamicNames,
    DynamicNamesError,
    Facts,
    bundled_dynamic_names,
    derive,
    load_dynamic_names,
)
from fingerprintd.matcher import Fingerprint, PerFingerprint
from fingerprintd.tomlfile import Located, TomlError, compile_regexes

ACTIONS = ("tag", "tempfail", "reject")  # least to most severe
_REGEX_KEYS = ("os_class", "os_name", "flavor", "label", "link")
_BOOL_KEYS = ("unknown", "app", "generic", "fuzzy")
_NAME_KEYS = ("client_name", "reverse_name", "helo")  # regexes over the MTA's names
# Derived facts (fingerprintd/context.py); "context" = the MTA gave any names at all.
_FACT_KEYS = ("context", "rdns_verified", "rdns_none", "rdns_unverified", "rdns_dynamic", "helo_literal",
              "helo_bare", "helo_matches")
# The address's p0f host records in the table's window (nat.py): a "host change" or an
# "ip sharing" record was logged for it.  Unknown (no host record given) never fires.
_HOST_KEYS = ("host_change", "ip_sharing")
_INT_KEYS = ("dist_min", "dist_max")
_RULE_KEYS = {"name", "score", "action", "final", "description", "mail_class", *_REGEX_KEYS, *_BOOL_KEYS,
              *_INT_KEYS, *_NAME_KEYS, *_FACT_KEYS, *_HOST_KEYS}
_SETTINGS_KEYS = {"trusted_networks", "reject_message", "tempfail_message", "dynamic_names"}
_TTL_DIST = re.compile(r"(\d+)\+(\d+)")


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
    names: tuple[tuple[str, re.Pattern], ...] = ()  # regexes over client_name, reverse_name, helo
    facts: tuple[tuple[str, bool], ...] = ()
    host: tuple[tuple[str, bool], ...] = ()  # host_change / ip_sharing conditions

    def matches(self, fp: Fingerprint, ctx: Context | None = None, facts: Facts = NO_FACTS,
                records: dict[str, bool] | None = None) -> bool:
        if self.mail_classes is not None and fp.mail_class not in self.mail_classes:
            return False
        for key, want in self.host:
            if records is None or records[key] != want:
                return False
        for key, want in self.facts:
            have = facts.known if key == "context" else getattr(facts, key)
            if have is None or have != want:
                return False  # unknown facts never satisfy a condition
        for key, rx in self.names:
            text = getattr(ctx, key) if ctx is not None else None
            if text is None or not rx.search(text):
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
    key: str = ""  # stable identifier: <signature hash>/<mail class>/<context bucket>
    learned: float = 0.0  # the adjustment learned from outcomes (fingerprintd/reputation.py), in score
    head: str = ""  # the header's OS part ("<OS>; dist: N; link: L; class: C")


def sig_hash(fp: Fingerprint) -> str:
    """The stack, independent of the path: label and raw signature without the TTL distance or the MSS
    (a tunnel lowers the MSS; the window's form, options and quirks stay)."""
    fields = fp.raw_sig.split(":")
    if len(fields) >= 4:
        m = _TTL_DIST.fullmatch(fields[1])  # "112+16": the TTL seen plus the distance = the initial TTL
        if m:
            fields[1] = str(int(m.group(1)) + int(m.group(2)))
        fields[3] = "*"
    text = f"{fp.os_text}|{int(fp.generic)}|{':'.join(fields)}"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def verdict_key(fp: Fingerprint, bucket: str) -> str:
    return f"{_sig_hashes(fp)}/{fp.mail_class}/{bucket}"


def render_header(head: str, rules: tuple[str, ...], score: float, key: str, learned: float = 0.0,
                  client: str = "") -> str:
    # The score stays last, as in the p0f-era header (scripts read "score: (\S+)$").
    learned_part = f"learned: {learned:+g}; " if learned else ""
    client_part = f"client: {client}; " if client else ""
    return f"{head}; rules: {','.join(rules) or 'none'}; {learned_part}id: {key}; {client_part}score: {score:g}"


def served_verdict(v: Verdict, client: str, adjustment: float = 0.0) -> Verdict:
    """The verdict as served: a learned adjustment added to the score, and the client address in the header
    (what `fingerprintd learn` needs to count one client once).  Trusted verdicts stay as they are."""
    if v.trusted:
        return v
    adjustment = round(adjustment, 2)
    score = round(v.score + adjustment, 3)
    rules = (*v.rules, "learned") if adjustment else v.rules
    return replace(v, score=score, rules=rules, learned=adjustment,
                   header=render_header(v.head, rules, score, v.key, adjustment, client))


@dataclass(frozen=True)
class Policy:
    source: str
    rules: tuple[Rule, ...]
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    reject_message: str = "550 5.7.1 Your host looks like a compromised desktop, not a mail server"
    tempfail_message: str = "451 4.7.1 Please try again later"
    dynamic_names: DynamicNames | None = None  # None: the bundled signatures/dynamic-names.toml
    # Derived: trusted networks as (address length, network, mask) integers, and
    # the untrusted verdict, made once per stack.
    _ranges: tuple = field(init=False, repr=False, compare=False)
    _scored: PerFingerprint[Verdict] = field(init=False, repr=False, compare=False)
    _replies: dict = field(init=False, repr=False, compare=False)
    _uses_host: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_uses_host", any(rule.host for rule in self.rules))
        ranges = tuple((n.max_prefixlen // 8, int(n.network_address), int(n.netmask)) for n in self.trusted)
        object.__setattr__(self, "_ranges", ranges)
        replies = {"reject": self.reject_message, "tempfail": self.tempfail_message}
        object.__setattr__(self, "_replies", replies)
        if self.dynamic_names is None:
            object.__setattr__(self, "dynamic_names", bundled_dynamic_names())
        # Built on the rules, not on self: no reference cycle to outlive a reload.
        object.__setattr__(self, "_scored", PerFingerprint(partial(_score, self.rules, replies)))

    def is_trusted(self, ip: bytes) -> bool:
        value = int.from_bytes(ip, "big")
        for length, network, mask in self._ranges:
            if len(ip) == length and value & mask == network:
                return True
        return False

    def facts(self, ctx: Context | None, client_ip: bytes | None) -> Facts:
        return derive(ctx, client_ip, self.dynamic_names)  # type: ignore[arg-type]

    def verdict(self, fp: Fingerprint, client_ip: bytes, ctx: Context | None = None, host=None) -> Verdict:
        """`host`: the address's record in the host table (hosts.HostRecord) when known, for the
        host_change / ip_sharing conditions."""
        if self.is_trusted(client_ip):
            head = _heads(fp)
            return Verdict(0.0, "accept", ("trusted_network",), f"{head}; score: 0 (trusted)", True, head=head)
        records = None
        if host is not None and self._uses_host:
            records = {"host_change": bool(getattr(host, "last_host_change", 0)),
                       "ip_sharing": bool(getattr(host, "last_ip_sharing", 0))}
        if (ctx is None or not ctx.known) and records is None:
            return self._scored(fp)  # made once per stack
        return _score(self.rules, self._replies, fp, ctx, self.facts(ctx, client_ip), records)


def _score(rules: tuple[Rule, ...], replies: dict[str, str], fp: Fingerprint, ctx: Context | None = None,
           facts: Facts = NO_FACTS, records: dict[str, bool] | None = None) -> Verdict:
    """Every rule in order until a final one fires; the most severe action wins."""
    score = 0.0
    fired = []
    action = "tag"
    for rule in rules:
        if rule.matches(fp, ctx, facts, records):
            score += rule.score
            fired.append(rule.name)
            if ACTIONS.index(rule.action) > ACTIONS.index(action):
                action = rule.action
            if rule.final:
                break
    score = round(score, 3)
    head = _heads(fp)
    key = verdict_key(fp, facts.bucket)
    rules_fired = tuple(fired)
    return Verdict(score, action, rules_fired, render_header(head, rules_fired, score, key),
                   reply=replies.get(action, ""), key=key, head=head)


def _head(fp: Fingerprint) -> str:
    return f"{fp.os_text}; dist: {fp.dist}; link: {fp.link or '???'}; class: {fp.mail_class}"


# Both depend on the stack alone, and a lookup with the MTA's names (nearly every one from the
# milter and the policy service) scores afresh: made once per stack, not once per lookup.
_heads = PerFingerprint(_head)
_sig_hashes = PerFingerprint(sig_hash)


def load_policy(path: str | Path) -> Policy:
    """A policy file, with the dynamic-name patterns it names (relative to the policy's directory)."""
    p = Path(path)
    return parse_policy(p.read_text(encoding="utf-8"), str(p), base=p.parent)


def parse_policy(text: str, source: str = "<policy>", base: Path | None = None) -> Policy:
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
    extra: dict = {k: settings[k] for k in ("reject_message", "tempfail_message") if k in settings}
    for key, value in extra.items():
        if not isinstance(value, str) or not re.match(r"[45]\d\d [45]\.\d{1,3}\.\d{1,3} ", value):
            raise fail(("settings",), key, f"{key} must be an SMTP reply like '550 5.7.1 text'")
    if settings.get("dynamic_names"):
        path = settings["dynamic_names"]
        if not isinstance(path, str):
            raise fail(("settings",), "dynamic_names", "dynamic_names must be a file path")
        full = Path(path) if base is None else base / path
        try:
            extra["dynamic_names"] = load_dynamic_names(full)
        except OSError as exc:
            raise fail(("settings",), "dynamic_names", f"cannot read {full}: {exc.strerror or exc}") from None
        except DynamicNamesError as exc:
            raise fail(("settings",), "dynamic_names", f"in dynamic_names: {exc}") from None
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
    # Names are lowercased (fingerprintd/context.py): so are their patterns' matches.
    names = tuple((k, re.compile(rx.pattern, rx.flags | re.IGNORECASE))
                  for k, rx in compile_regexes(raw, _NAME_KEYS, fail, sec, f"rule {name!r}: "))
    for key in (*_BOOL_KEYS, *_FACT_KEYS, *_HOST_KEYS):
        if key in raw and not isinstance(raw[key], bool):
            raise fail(sec, key, f"rule {name!r}: {key} must be true or false")
    flags, facts, host = (tuple((key, raw[key]) for key in keys if key in raw)
                          for keys in (_BOOL_KEYS, _FACT_KEYS, _HOST_KEYS))
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
    return Rule(name, float(score), action, final, regexes, flags, dist[0], dist[1], mail_classes, names, facts,
                host)
