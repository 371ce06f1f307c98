"""The protocol fuzzer's long profile: N random examples per endpoint (/ws, /api/chat, /v1/realtime).

    python scripts/fuzz.py --examples 2000

CI runs the bounded, deterministic profile (`pytest tests/test_fuzz_protocols.py`, 120 examples each,
derandomized); this one draws fresh random examples every run, so it finds what CI's fixed set does not.
A failure prints the shrunk example and a `@reproduce_failure` line (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000, help="examples per endpoint (default 2000)")
    parser.add_argument("-k", default=None, help="pytest -k: one endpoint, e.g. realtime")
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "0",
           str(REPO / "tests" / "test_fuzz_protocols.py")]
    if args.k:
        cmd += ["-k", args.k]
    env = {**os.environ, "DUPLEX_FUZZ_EXAMPLES": str(args.examples)}
    return subprocess.call(cmd, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
