"""The `sd35` command: one parser, one subcommand module each; the only place that configures logging."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sd35 import __version__
from sd35.errors import SD35Error

# subcommand name -> module under sd35.cli; each module defines register(subparsers) and run(args) -> int.
# Modules are imported lazily so `sd35 --help` and light commands never pay for torch.
COMMANDS = {
    "generate": "sd35.cli.cmd_generate",
    "run": "sd35.cli.cmd_run",
    "serve": "sd35.cli.cmd_serve",
    "inspect": "sd35.cli.cmd_inspect",
    "tokens": "sd35.cli.cmd_tokens",
    "make-tiny": "sd35.cli.cmd_make_tiny",
}

log = logging.getLogger("sd35")


def _available_commands(argv: list[str]) -> dict[str, object]:
    """Import only the chosen command's module (so `sd35 tokens` never pays for torch); all of them for help."""
    chosen = next((a for a in argv if not a.startswith("-")), None)
    names = [chosen] if chosen in COMMANDS else list(COMMANDS)
    modules = {}
    for name in names:
        module_name = COMMANDS[name]
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    return modules


def build_parser(modules: dict[str, object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd35", description="Stable Diffusion 3.5 Medium engine.")
    parser.add_argument("--version", action="version", version=f"sd35 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in modules.values():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    modules = _available_commands(argv)
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SD35Error as exc:
        print(f"sd35 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sd35 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
