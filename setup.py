"""The optional compiled accelerator (fingerprintd/_speedups.pyx and friends, see fingerprintd/accel.py).

Everything else is in pyproject.toml.  The extensions are optional, as in
aiohttp, yarl and multidict: without Cython or a compiler, or with
FINGERPRINTD_NO_EXTENSIONS=1 at build time, the build still succeeds and the
pure-Python reference implementation runs.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Compiled copies of pure modules, from the same source: (module, source, names kept from the pure module so
# that both paths hand out objects of the same classes; only the functions and the books' classes compile,
# and optionally (pure module, names): one `from fingerprintd.<pure module> import <names>` line of the source
# that the copy takes from that module's compiled copy instead, to call them as C (cimported by its .pxd)).
COPIES = (
    ("_cflows", "flows.py", "FlowLimits, _SynOnly"),
    ("_cnat", "nat.py", "NatRecord, Sig, TsState, Uptime"),
    ("_csignatures", "signatures.py", "Database, Label, SignatureError, TcpSig"),
    ("_cmatcher", "matcher.py", "Fingerprint, PerFingerprint, Probe", ("signatures", "Rule, win_multiplier")),
    ("_chosts", "hosts.py", "AddressError, normalize_ip"),
)
# Modules written for Cython (_replay cimports _speedups' parser through _speedups.pxd; _csock is the p0f
# socket's query loop).
PYX = ("_speedups", "_replay", "_csock")
GENERATED = Path("build") / "accel-src" / "fingerprintd"  # a package directory: Cython finds the .pxd by it


class OptionalBuildExt(build_ext):
    """A failed compile is a warning: the pure-Python path still works."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure leaves pure Python
            print(f"fingerprintd: accelerator not built ({exc}); the pure-Python path will run", file=sys.stderr)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"fingerprintd: {ext.name} not built ({exc}); the pure-Python path will run", file=sys.stderr)


def _write_if_changed(path: Path, text: str) -> None:
    """Leave an unchanged file alone: its date decides whether Cython runs again."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def extensions() -> list:
    if os.environ.get("FINGERPRINTD_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("fingerprintd: Cython not installed; building without the accelerator", file=sys.stderr)
        return []
    from setuptools import Extension

    exts = []
    GENERATED.mkdir(parents=True, exist_ok=True)
    (GENERATED / "__init__.py").touch()
    for name, source, kept, *compiled in COPIES:
        text = (Path("fingerprintd") / source).read_text(encoding="utf-8")
        pure = source.removesuffix(".py")
        digest = hashlib.sha256(text.encode()).hexdigest()
        for module, names in compiled:
            line = f"from fingerprintd.{module} import {names}\n"
            assert line in text, f"{source} has no line {line!r} (setup.py COPIES)"
            text = text.replace(line, f"from fingerprintd._c{module} import {names}\n")
        # The source's hash, so that accel.py can refuse a copy older than the module it was made from.
        text += f"\n\nfrom fingerprintd.{pure} import {kept}  # noqa: E402,F811\n__source_sha256__ = {digest!r}\n"
        target = GENERATED / f"{name}.py"
        types = Path("fingerprintd") / f"{name}.pxd"  # C types for the copy, if any (an augmenting .pxd)
        if types.exists():
            _write_if_changed(GENERATED / types.name, types.read_text(encoding="utf-8"))
        _write_if_changed(target, text)
        exts.append(Extension(f"fingerprintd.{name}", [str(target)], extra_compile_args=["-O2"]))
    directives = {"language_level": "3", "annotation_typing": False}
    try:
        built = cythonize(exts, compiler_directives=directives, quiet=True)
        for name in PYX:  # each with its own source's hash (accel.py compares it with the file)
            source = Path("fingerprintd") / f"{name}.pyx"
            ext = Extension(f"fingerprintd.{name}", [str(source)], extra_compile_args=["-O2"])
            built += cythonize([ext], compiler_directives=directives, quiet=True,
                               compile_time_env={"SOURCE_SHA256": hashlib.sha256(source.read_bytes()).hexdigest()})
        return built
    except Exception as exc:  # noqa: BLE001
        print(f"fingerprintd: Cython failed ({exc}); building without the accelerator", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
