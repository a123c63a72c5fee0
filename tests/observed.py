"""Observations made the real way, for tests that need a few: a crafted SYN of a named stack through an
engine on our database."""

from __future__ import annotations

import random

from fingerprintd.classes import bundled_classes
from fingerprintd.engine import Engine
from fingerprintd.matcher import Matcher
from fingerprintd.signatures import load
from tests.conftest import OUR_DB
from tests.craft import STACKS, frame

DB = load(OUR_DB)
RNG = random.Random(11)


def observe(stack: str, src: str = "203.0.113.7", sport: int = 40000, ts: float = 1_700_000_000.0):
    eng = Engine(Matcher(DB, classes=bundled_classes()))
    obs = eng.feed(bytes(frame(STACKS[stack], src, "192.0.2.25", sport, 25, RNG, seq=RNG.randrange(1, 1 << 31))),
                   1, int(ts), int(ts % 1 * 1e6))
    assert obs is not None
    return obs
