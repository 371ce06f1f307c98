"""Run the mutants table: break the code on purpose, one line at a time, and check that a test notices.

A table is TOML, a list of `[[mutant]]` entries:

    [[mutant]]
    name = "reset-skips-engine"        # optional; defaults to "<file>:<line number>"
    file = "duplex/server/session.py"  # relative to the repository root
    original = "        conv.stream.reset()"   # an exact line of the file (leading spaces included), once
    replacement = "        pass"
    test = "tests/test_behaviour_server.py::test_reset_while_speaking_answers_ack_then_tts_stop_and_listening"

Each mutant is applied in place, its test run with this Python (`python -m pytest -x -q <test>`), and the
file restored in a `finally` (byte for byte, whatever happens, Ctrl-C included). A mutant is *caught* when
its test fails, *survived* when it passes. Exit status: 0 when every mutant was caught, 1 when one
survived, 2 when a table is wrong (a line not found, found twice, a missing key).

    python scripts/run_mutants.py                       # every tests/mutants*.toml
    python scripts/run_mutants.py tests/mutants_untested.toml --only reset-skips-engine
    python scripts/run_mutants.py --list
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
KEYS = ("file", "original", "replacement", "test")


class TableError(ValueError):
    pass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    test: str
    table: str

    def line_number(self, root: Path) -> int:
        """1-based line of `original` in the file; TableError unless it occurs exactly once."""
        lines = (root / self.file).read_text().splitlines()
        hits = [i for i, line in enumerate(lines) if line == self.original]
        if len(hits) != 1:
            raise TableError(f"{self.name}: the line {self.original!r} occurs {len(hits)} times in {self.file}, "
                             "not once")
        return hits[0] + 1


def load_tables(paths: list[Path], root: Path = REPO) -> list[Mutant]:
    mutants: list[Mutant] = []
    for path in paths:
        with open(path, "rb") as f:
            table = tomllib.load(f)
        entries = table.get("mutant", [])
        if not isinstance(entries, list):
            raise TableError(f"{path}: `mutant` must be an array of tables ([[mutant]])")
        for i, entry in enumerate(entries):
            missing = [key for key in KEYS if not isinstance(entry.get(key), str)]
            if missing:
                raise TableError(f"{path}: mutant #{i + 1} lacks {', '.join(missing)} (strings)")
            if "\n" in entry["original"] or "\n" in entry["replacement"]:
                raise TableError(f"{path}: mutant #{i + 1}: `original` and `replacement` are single lines")
            if entry["original"] == entry["replacement"]:
                raise TableError(f"{path}: mutant #{i + 1}: the replacement changes nothing")
            name = entry.get("name") or ""
            mutant = Mutant(name, entry["file"], entry["original"], entry["replacement"], entry["test"], str(path))
            number = mutant.line_number(root)   # the line is there, once
            if not name:
                mutant = dataclasses.replace(mutant, name=f"{mutant.file}:{number}")
            mutants.append(mutant)
    names = [m.name for m in mutants]
    doubles = sorted({n for n in names if names.count(n) > 1})
    if doubles:
        raise TableError(f"mutant names used twice: {', '.join(doubles)}")
    return mutants


@contextlib.contextmanager
def applied(mutant: Mutant, root: Path = REPO):
    """The mutant in place for the duration of the block; the file's exact bytes are back afterwards."""
    path = root / mutant.file
    saved = path.read_bytes()
    number = mutant.line_number(root)
    text = saved.decode()
    lines = text.splitlines(keepends=True)
    line = lines[number - 1]
    ending = line[len(line.rstrip("\r\n")):]
    lines[number - 1] = mutant.replacement + ending
    try:
        path.write_text("".join(lines))
        yield path
    finally:
        path.write_bytes(saved)


def run_one(mutant: Mutant, python: str, root: Path = REPO, timeout: float = 600.0) -> tuple[bool, float, str]:
    """(caught, seconds, output tail)."""
    started = time.monotonic()
    with applied(mutant, root):
        try:
            result = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", mutant.test],
                                    cwd=root, capture_output=True, text=True, timeout=timeout)
            caught, output = result.returncode != 0, result.stdout + result.stderr
            if result.returncode in (4, 5):   # usage error / no tests collected: the table is wrong
                raise TableError(f"{mutant.name}: pytest could not run {mutant.test}:\n{output[-2000:]}")
        except subprocess.TimeoutExpired:
            caught, output = True, f"timed out after {timeout:g} s (counted as caught)"
    return caught, time.monotonic() - started, output[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", type=Path, help="mutant tables (default: every tests/mutants*.toml)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant only (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs pytest")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's test run")
    args = parser.parse_args(argv)
    tables = args.tables or sorted((REPO / "tests").glob("mutants*.toml"))
    if not tables:
        print("no mutant tables (tests/mutants*.toml)", file=sys.stderr)
        return 2
    try:
        mutants = load_tables(tables)
        if args.only:
            unknown = sorted(set(args.only) - {m.name for m in mutants})
            if unknown:
                raise TableError(f"no mutant named {', '.join(unknown)}")
            mutants = [m for m in mutants if m.name in args.only]
        if args.list:
            for m in mutants:
                print(f"{m.name}\t{m.file}:{m.line_number(REPO)}\t{m.test}")
            return 0
        survived = []
        for m in mutants:
            caught, seconds, output = run_one(m, args.python, timeout=args.timeout)
            print(f"{'caught  ' if caught else 'SURVIVED'} {m.name}  ({m.file}, {seconds:.1f} s)  {m.test}", flush=True)
            if not caught:
                survived.append(m)
                print("    " + output.strip().replace("\n", "\n    "), flush=True)
    except TableError as exc:
        print(f"mutants table error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(mutants) - len(survived)} of {len(mutants)} mutants caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
