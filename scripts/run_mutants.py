"""Run the mutants table: break the code on purpose, one line at a time, and check that a test notices.

A table is TOML, a list of `[[mutant]]` entries:

    [[mutant]]
    name = "reset-skips-engine"        # optional; defaults to "<file>:<line number>"
    file = "duplex/server/session.py"  # relative to the repository root
    original = "        conv.stream.reset()"   # an exact line of the file (leading spaces included), once
    replacement = "        pass"
    test = "tests/test_behaviour_server.py::test_reset_while_speaking_answers_ack_then_tts_stop_and_listening"

The live tree is never written. The runner copies the repository's files (tracked and untracked, not the
ignored ones: `git ls-files`) into a temporary folder once; each mutant is applied to the copy, its test run
there with this Python (`python -m pytest -x -q <test>`, the copy first on PYTHONPATH, so `import duplex` and
the servers the tests start are the mutated copy's; the generated weights are shared through
DUPLEX_WEIGHTS_DIR), and the copy's file put back. A SIGKILL (a CI timeout) leaves at most a stray folder
in the temporary directory, never a mutant in the checkout.

A mutant is *caught* when its test fails, *survived* when it passes, and *unknown* when its test run
outlives `--timeout` (a hang says nothing about the test: the run and everything it started are killed).
Exit status: 0 when every mutant was caught, 1 when one survived, 3 when none survived but one is
unknown, 2 when a table is wrong (a line not found, found twice, a missing key).

    python scripts/run_mutants.py                       # every tests/mutants*.toml
    python scripts/run_mutants.py tests/mutants_untested.toml --only reset-skips-engine
    python scripts/run_mutants.py --list
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing as tp
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
KEYS = ("file", "original", "replacement", "test")
SHARED = ("tests/browser/node_modules",)   # ignored folders the tests need, linked into the copy
CAUGHT, SURVIVED, UNKNOWN = "caught", "SURVIVED", "unknown"


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


def source_files(root: Path) -> list[str]:
    """The repository's files as its developer sees them: tracked and untracked, less what git ignores (or
    every file, outside a git checkout)."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True).stdout.decode()
        return [f for f in listed.split("\0") if f and (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts]


@contextlib.contextmanager
def scratch_copy(root: Path = REPO) -> tp.Iterator[Path]:
    """A temporary copy of the repository's files (removed afterwards): where the mutants are applied."""
    parent = Path(tempfile.mkdtemp(prefix="duplex-mutants-"))
    copy = parent / root.name
    try:
        for name in source_files(root):
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, target)
        for name in SHARED:
            if (root / name).exists() and not (copy / name).exists():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                (copy / name).symlink_to(root / name)
        yield copy
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_env(copy: Path, root: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.setdefault("DUPLEX_WEIGHTS_DIR", str(root / "weights"))   # generated once, shared (never a source file)
    return env


def run_one(mutant: Mutant, python: str, copy: Path, root: Path = REPO,
            timeout: float = 600.0) -> tuple[str, float, str]:
    """(verdict, seconds, output tail): the mutant applied to `copy` (a `scratch_copy`), never to `root`."""
    started = time.monotonic()
    with applied(mutant, copy):
        process = subprocess.Popen([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", mutant.test],
                                   cwd=copy, env=test_env(copy, root), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
            verdict = SURVIVED if process.returncode == 0 else CAUGHT
            if process.returncode in (4, 5):   # usage error / no tests collected: the table is wrong
                raise TableError(f"{mutant.name}: pytest could not run {mutant.test}:\n{output[-2000:]}")
        except subprocess.TimeoutExpired:
            verdict, output = UNKNOWN, f"timed out after {timeout:g} s: neither caught nor survived"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)   # the run and every server it started
            process.wait()
    return verdict, time.monotonic() - started, output[-2000:]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)   # the copy is removed on the way out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", type=Path, help="mutant tables (default: every tests/mutants*.toml)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant only (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs pytest")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per mutant's test run; past it the mutant is unknown")
    parser.add_argument("--root", type=Path, default=REPO, help="the repository (its files are copied, never written)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    tables = args.tables or sorted((root / "tests").glob("mutants*.toml"))
    if not tables:
        print("no mutant tables (tests/mutants*.toml)", file=sys.stderr)
        return 2
    try:
        mutants = load_tables(tables, root)
        if args.only:
            unknown = sorted(set(args.only) - {m.name for m in mutants})
            if unknown:
                raise TableError(f"no mutant named {', '.join(unknown)}")
            mutants = [m for m in mutants if m.name in args.only]
        if args.list:
            for m in mutants:
                print(f"{m.name}\t{m.file}:{m.line_number(root)}\t{m.test}")
            return 0
        verdicts: dict[str, list[Mutant]] = {CAUGHT: [], SURVIVED: [], UNKNOWN: []}
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        with scratch_copy(root) as copy:
            for m in mutants:
                verdict, seconds, output = run_one(m, args.python, copy, root, timeout=args.timeout)
                verdicts[verdict].append(m)
                print(f"{verdict:8} {m.name}  ({m.file}, {seconds:.1f} s)  {m.test}", flush=True)
                if verdict != CAUGHT:
                    print("    " + output.strip().replace("\n", "\n    "), flush=True)
    except TableError as exc:
        print(f"mutants table error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(verdicts[CAUGHT])} of {len(mutants)} mutants caught, {len(verdicts[SURVIVED])} survived, "
          f"{len(verdicts[UNKNOWN])} unknown (timed out)")
    return 1 if verdicts[SURVIVED] else 3 if verdicts[UNKNOWN] else 0


if __name__ == "__main__":
    sys.exit(main())
