"""Rewrite the generated blocks of signatures/p0f.fp from fingerprintd/stackrules.py.

    python scripts/gen_signatures.py [--check] [PATH]

--check exits 1 (and names the first differing line) when the file is not
what the table generates; tests/test_stackrules.py runs the same check.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fingerprintd.stackrules import regenerate

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    path = Path(args[0]) if args else ROOT / "signatures" / "p0f.fp"
    text = path.read_text(encoding="utf-8")
    new = regenerate(text)
    if "--check" in argv:
        if new == text:
            return 0
        old_lines, new_lines = text.split("\n"), new.split("\n")
        for n, (a, b) in enumerate(zip(old_lines, new_lines, strict=False), 1):
            if a != b:
                print(f"{path}:{n}: is {a!r}, the table makes {b!r}", file=sys.stderr)
                break
        else:
            print(f"{path}: {len(old_lines)} lines, the table makes {len(new_lines)}", file=sys.stderr)
        return 1
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"{path}: rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
