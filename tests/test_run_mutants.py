"""scripts/run_mutants.py: the table parses, a mutant is applied in place and the file comes back byte for byte."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
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


PROBE = '''import os, pathlib, sys, time
import pkg.mod

def test_f():
    pathlib.Path(os.environ["MUTANT_MARK"] + ".pid").write_text(str(os.getpid()))
    pathlib.Path(os.environ["MUTANT_MARK"]).write_text(pkg.mod.__file__)
    if os.environ.get("MUTANT_HANG"):
        time.sleep(3600)
    assert pkg.mod.f(1) == 1
'''


def scratch_repo(tmp_path: Path, body: str = GOOD) -> Path:
    """A small repository with the runner in its scripts/ (so its REPO is this one), a module, a test and a table."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "run_mutants.py").write_bytes(SCRIPT.read_bytes())
    table(root, body.replace("tests/test_x.py::test_f", "tests/test_x.py"))
    (root / "pkg" / "__init__.py").write_text("")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text(PROBE)
    return root


def start_runner(root: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(root / "scripts" / "run_mutants.py"), str(root / "mutants_x.toml"),
                             *args], cwd=root, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_killed_run_leaves_the_live_tree_untouched_and_the_test_sees_the_mutated_copy(tmp_path):
    """Issue 24 item 12: mutants were applied in place and restored in a `finally`, so a SIGKILL (a CI timeout)
    left one in the checkout. They go to a copy: the live file never changes, even while a test runs."""
    root = scratch_repo(tmp_path)
    live = root / "pkg" / "mod.py"
    mark = tmp_path / "mark"
    runner = start_runner(root, "--only", "flip", MUTANT_MARK=str(mark), MUTANT_HANG="1")
    try:
        deadline = time.monotonic() + 120
        while not mark.exists():   # the mutant's test is running (and hangs there)
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()[0]
            time.sleep(0.05)
        assert live.read_bytes() == SOURCE.encode()            # not in the live tree while its test runs
        assert not Path(mark.read_text()).is_relative_to(root)   # the test imported the copy
    finally:
        os.killpg(runner.pid, signal.SIGKILL)                  # what a CI timeout does
        runner.wait()
        hung = Path(f"{mark}.pid")
        if hung.exists():   # the mutant's pytest runs in its own session: the runner's kill does not reach it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(hung.read_text()), signal.SIGKILL)
    assert live.read_bytes() == SOURCE.encode()


def test_each_mutant_is_judged_by_its_test_on_the_copy(tmp_path):
    root = scratch_repo(tmp_path)
    result = start_runner(root, MUTANT_MARK=str(tmp_path / "mark"))
    output = result.communicate(timeout=300)[0]
    # flip: f(1) == 0, caught; return 2: f(1) still 1, survived
    assert "caught   flip" in output and "SURVIVED pkg/mod.py:4" in output, output
    assert result.returncode == 1
    assert (root / "pkg" / "mod.py").read_bytes() == SOURCE.encode()


def test_a_test_that_outlives_the_timeout_is_unknown_not_caught(tmp_path):
    root = scratch_repo(tmp_path)
    result = start_runner(root, "--only", "flip", "--timeout", "3", MUTANT_MARK=str(tmp_path / "mark"),
                          MUTANT_HANG="1")
    output = result.communicate(timeout=300)[0]
    assert "unknown  flip" in output and "caught   flip" not in output, output
    assert result.returncode == 3
