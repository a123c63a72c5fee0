"""Which implementation runs the packet path: the compiled accelerator or the pure-Python reference.

The pattern of aiohttp's HTTP parser, yarl and multidict: the pure-Python
modules (packet, flows, nat, signatures, matcher, engine, report) are the
reference; the optional extensions built by setup.py (fingerprintd/_speedups.pyx;
_cflows, _cnat, _csignatures and _cmatcher, compiled from flows.py, nat.py,
signatures.py and matcher.py themselves; _csock.pyx, the p0f socket's query
loop, whose reference is compat.P0fSocketServer._loop) do the same work faster and are
chosen at import when present.  `FINGERPRINTD_NO_EXTENSIONS=1` forces the
pure-Python path; a missing or broken build falls back to it silently
(`fingerprintd --version` says which runs).  tests/conftest.py runs the suite
on both.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ENV = "FINGERPRINTD_NO_EXTENSIONS"


class Accelerator:
    """The compiled modules, as one object."""

    def __init__(self, speedups: ModuleType, flows: ModuleType, nat: ModuleType, replay: ModuleType,
                 matcher: ModuleType, hosts: ModuleType, sock: ModuleType) -> None:
        self.speedups = speedups
        self.flows = flows  # FlowTable, RecentSyns compiled from flows.py
        self.nat = nat  # on_syn, on_other compiled from nat.py
        self.replay = replay  # Replay: `fingerprintd replay` on C structs, every format
        self.matcher = matcher  # Matcher compiled from matcher.py (its comparison from signatures.py)
        self.hosts = hosts  # HostTable compiled from hosts.py
        self.sock = sock  # Loop: the p0f socket's query loop (compat.P0fSocketServer)


_HERE = Path(__file__).resolve().parent
# Each compiled module and the source it was built from.
_SOURCES = (("_speedups", "_speedups.pyx"), ("_replay", "_replay.pyx"), ("_cflows", "flows.py"), ("_cnat", "nat.py"),
            ("_csignatures", "signatures.py"), ("_cmatcher", "matcher.py"), ("_chosts", "hosts.py"),
            ("_csock", "_csock.pyx"))


def _stale(module: ModuleType, source: str) -> bool:
    """The module was compiled from another version of its source (edited since the last build)."""
    try:
        data = (_HERE / source).read_bytes()
    except OSError:
        return False  # an install without sources: nothing to compare with
    return getattr(module, "__source_sha256__", None) != hashlib.sha256(data).hexdigest()


def _load(warn: bool = True) -> Accelerator | None:
    if os.environ.get(ENV):
        return None
    try:
        from fingerprintd import _cflows, _chosts, _cmatcher, _cnat, _csignatures, _csock, _replay, _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    modules = {"_speedups": _speedups, "_replay": _replay, "_cflows": _cflows, "_cnat": _cnat,
               "_csignatures": _csignatures, "_cmatcher": _cmatcher, "_chosts": _chosts, "_csock": _csock}
    stale = [source for name, source in _SOURCES if _stale(modules[name], source)]
    if stale:
        # A stale copy would answer like the old code: the reference runs instead, and says so once.
        if warn:
            print(f"fingerprintd: the accelerator is older than {', '.join(stale)}; running pure Python "
                  "(rebuild: pip install -e . or make)", file=sys.stderr)
        return None
    return Accelerator(_speedups, _cflows, _cnat, _replay, _cmatcher, _chosts, _csock)


ACCEL: Accelerator | None = _load()


def compiled() -> Accelerator:
    """The compiled modules, whatever is selected (for tests and benchmarks that run both)."""
    got = _load(warn=False) if not os.environ.get(ENV) else None
    if got is None:
        saved = os.environ.pop(ENV, None)
        try:
            got = _load(warn=False)
        finally:
            if saved is not None:
                os.environ[ENV] = saved
    if got is None:
        raise RuntimeError("the compiled accelerator is not built or is older than its sources (see setup.py)")
    return got


def use(compiled_path: bool) -> None:
    """Select an implementation for what is built from now on (engines, flow books, formatters)."""
    global ACCEL
    ACCEL = compiled() if compiled_path else None


@contextmanager
def selected(compiled_path: bool) -> Iterator[None]:
    """Select an implementation for the duration of a with block."""
    global ACCEL
    saved = ACCEL
    use(compiled_path)
    try:
        yield
    finally:
        ACCEL = saved


def available() -> bool:
    """The accelerator is built, current and importable (whatever the environment variable says)."""
    saved = os.environ.pop(ENV, None)
    try:
        return _load(warn=False) is not None
    finally:
        if saved is not None:
            os.environ[ENV] = saved


def name() -> str:
    """The implementation in use, for --version and the summaries."""
    return "compiled accelerator" if ACCEL is not None else "pure Python"
