"""`python -m duplex` is the `duplex` command."""

import sys

from .cli import main

sys.exit(main())
