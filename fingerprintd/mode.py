"""p0f 3.09b's deviations, on or off: the one mode object every stage reads.

fingerprintd fixes a few of p0f 3.09b's bugs and adds two rules of its own; ``--p0f-bugs`` (``[capture]
p0f_bugs``) turns all of them back to p0f's behaviour, so that the output equals p0f's byte for byte.  The
mode is one of exactly two objects, `FIXED` (the default) and `P0F_BUGS`, made from the user's switch at the
edge (`P0fMode.of`).  It is read in once, with the signatures (``signatures.load(path, mode)``); the matcher
takes it from the database, the engine from the matcher, and the parser is given it by the engine, so no
two stages can disagree about it.

Each deviation is a field, true where p0f's behaviour is reproduced, so a reader sees what "bugs" means and
which stage reads which.  They go together: there is no mode with some of them (the compiled parser reads
`p0f_bugs`, and the conformance tests check the two modes against p0f).
"""

from __future__ import annotations

from typing import Any


class P0fMode:
    """FIXED or P0F_BUGS (there are no others): which of p0f 3.09b's behaviours a run reproduces."""

    __slots__ = {
        "name": 'the switch\'s spelling: "fixed" or "p0f-bugs"',
        "p0f_bugs": "all the other fields at once (what the compiled parser reads)",
        # packet.parse
        "vlan_refused": "802.1Q/802.1ad-tagged Ethernet frames are skipped as vlan-tagged (p0f reads a tagged "
                        "frame at the fixed offset 14); fixed: the tags are walked",
        "ipv6_ext_refused": "IPv6 packets with extension headers are skipped (p0f drops any IPv6 packet whose next "
                            "header is not TCP); fixed: hop-by-hop, routing, destination options, mobility, HIP, "
                            "shim6 and atomic fragment headers are walked",
        "ack_bit24": "ack+ (ACK flag clear, ack number set) tests bit 24 of the ack number only, p0f's byte-order "
                     "slip; fixed: any non-zero ack number",
        "eol_last_byte_missed": "opt+ (non-zero bytes after EOL) misses a lone non-zero last byte of the option "
                                "area: p0f's scan steps past it",
        # signatures.parse_text
        "ttl_olen_cut": 'after a random-TTL ittl ("64-") the first character of the IP option length is skipped, '
                        'so "64-:40:" registers olen 0',
        # matcher.Matcher
        "flow_label_counts": "an IPv6 flow label is a quirk a line must list, so every flow-labelled SYN (Linux, "
                             "macOS, Windows) is ???; fixed: the flow-label rule (matcher.Probe.twin)",
        "no_fallback": "an unmatched SYN stays ???; fixed: the stack-rules family fallback (stackrules.fallback_for)",
        # engine -> nat
        "nat_exact": "host change / ip sharing scored to p0f's bit, jumping timestamps and a source port going back "
                     "included (nat.py)",
    }

    def __init__(self, name: str, p0f_bugs: bool) -> None:
        if p0f_bugs in _BY_FLAG:
            raise TypeError("there are only two p0f modes: mode.FIXED and mode.P0F_BUGS (P0fMode.of(p0f_bugs))")
        for field in self.__slots__:
            object.__setattr__(self, field, p0f_bugs)
        object.__setattr__(self, "name", name)
        _BY_FLAG[p0f_bugs] = self

    @staticmethod
    def of(p0f_bugs: bool) -> P0fMode:
        """The mode the user-facing switch (--p0f-bugs, [capture] p0f_bugs) names."""
        return _BY_FLAG[bool(p0f_bugs)]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"P0fMode is immutable (setting {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"P0fMode is immutable (deleting {name})")

    def __reduce__(self) -> str:
        return "P0F_BUGS" if self.p0f_bugs else "FIXED"  # copies and pickles are the module's own object

    def __repr__(self) -> str:
        return f"mode.{self.__reduce__()}"


_BY_FLAG: dict[bool, P0fMode] = {}
FIXED = P0fMode("fixed", False)
P0F_BUGS = P0fMode("p0f-bugs", True)

__all__ = ["FIXED", "P0F_BUGS", "P0fMode"]
