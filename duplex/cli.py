"""The `duplex` command: `serve`, `client`, `replay` (and benchmarks)."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .bench import command as bench_command
    from .client import cli as client_cli
    from .server.fleet import add_lb_config_parser
    from .client import replay as replay_cli
    from .eval import command as eval_command
    from .server.serve import add_serve_parser

    parser = argparse.ArgumentParser(prog="duplex", description="Full-duplex speech model server and tools.")
    parser.add_argument("--version", action="version", version=f"duplex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_parser(sub)
    client_cli.register(sub)
    bench_command.register(sub)
    add_lb_config_parser(sub)
    replay_cli.register(sub)
    eval_command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
