"""Test code shares helpers through modules like tests/helpers.py, tests/craft.py and tests/alike.py, never by
importing a test module."""

from __future__ import annotations

import re

from tests.helpers import ROOT

# Imports of one test module from another that are still to move into a helper module (file, module, names).
NOT_MOVED_YET: set[tuple[str, str, str]] = set()
_IMPORT = re.compile(r"^\s*from (tests\.test_\w+|benchmarks\.test_\w+) import ([^\n(]+)$", re.M)


def cross_imports(root=ROOT) -> set[tuple[str, str, str]]:
    """(file, module, names) for every `from tests.test_x import ...` in the tests and benchmarks."""
    out = set()
    for path in sorted((root / "tests").glob("*.py")) + sorted((root / "benchmarks").glob("*.py")):
        for module, names in _IMPORT.findall(path.read_text()):
            out.add((str(path.relative_to(root)), module, names.strip()))
    return out


def test_no_test_module_imports_another(tmp_path):
    assert cross_imports() <= NOT_MOVED_YET
    # The check sees a new one (a file laid out like the checkout, with one such import).
    (tmp_path / "tests").mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "tests" / "test_new.py").write_text("from tests.test_cli import small_pcap\n")
    assert cross_imports(tmp_path) == {("tests/test_new.py", "tests.test_cli", "small_pcap")}
