"""scripts/run_mutants.py: the table parses, a mutant is applied in place and the file comes back byte for byte."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_mutants.py"
spec = importlib.util.spec_from_file_location("run_mutants", SCRIPT)
assert spec is not None and spec.loader is not None
run_mutants = importlib.util.module_from_spec(spec)
sys.modules["run_mutants"] = run_mutants   # (dataclasses look their module up)
spec.loader.exec_module(run_mutants)

SOURCE = "def f(x):\r\n    if x > 0:\r\n        return 1\r\n    return 0\r\n"


def table(tmp_path: Path, body: str) -> Path:
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "pkg" / "mod.py").write_bytes(SOURCE.encode())
    path = tmp_path / "mutants_x.toml"
    path.write_text(body)
    return path


GOOD = '''
[[mutant]]
name = "flip"
file = "pkg/mod.py"
original = "    if x > 0:"
replacement = "    if x < 0:"
test = "tests/test_x.py::test_f"

[[mutant]]
file = "pkg/mod.py"
original = "    return 0"
replacement = "    return 2"
test = "tests/test_x.py::test_f"
'''


def test_a_table_parses_and_a_mutant_is_applied_then_restored_byte_for_byte(tmp_path):
    mutants = run_mutants.load_tables([table(tmp_path, GOOD)], root=tmp_path)
    assert [m.name for m in mutants] == ["flip", "pkg/mod.py:4"]   # unnamed: file and line
    path = tmp_path / "pkg" / "mod.py"
    with run_mutants.applied(mutants[0], root=tmp_path):
        assert path.read_bytes() == SOURCE.replace("x > 0", "x < 0").encode()   # line ending kept
    assert path.read_bytes() == SOURCE.encode()
    with pytest.raises(KeyboardInterrupt), run_mutants.applied(mutants[1], root=tmp_path):
        assert b"return 2" in path.read_bytes()
        raise KeyboardInterrupt   # restored whatever ends the block
    assert path.read_bytes() == SOURCE.encode()


@pytest.mark.parametrize("body, message", [
    (GOOD.replace('original = "    if x > 0:"', 'original = "if x > 0:"'), "occurs 0 times"),
    (GOOD.replace('"    return 0"', '"        return 1"').replace('"    return 2"', '"        return 3"'),
     None),
    (GOOD.replace('test = "tests/test_x.py::test_f"\n\n', "\n", 1), "lacks test"),
    (GOOD.replace('"    if x < 0:"', '"    if x > 0:"'), "changes nothing"),
    (GOOD.replace("[[mutant]]\nfile", '[[mutant]]\nname = "flip"\nfile'), "names used twice"),
])
def test_a_wrong_table_is_refused(tmp_path, body, message):
    path = table(tmp_path, body)
    if message is None:   # a line that occurs once, elsewhere in the file twice: found
        (tmp_path / "pkg" / "mod.py").write_text("    if x > 0:\n        return 1\n        return 1\n")
        message = "occurs 2 times"
    with pytest.raises(run_mutants.TableError, match=message):
        run_mutants.load_tables([path], root=tmp_path)


def test_the_project_tables_parse_and_name_existing_lines():
    tables = sorted((SCRIPT.parents[1] / "tests").glob("mutants*.toml"))
    assert tables
    result = subprocess.run([sys.executable, str(SCRIPT), "--list", *map(str, tables)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == len(run_mutants.load_tables(tables))
