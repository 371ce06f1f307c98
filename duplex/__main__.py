"""`python -m duplex` is the `duplex` command."""

import sys

from .cli import main

if __name__ == "__main__":   # a spawned child process (models/stt_process.py) imports this module: no main there
    sys.exit(main())
