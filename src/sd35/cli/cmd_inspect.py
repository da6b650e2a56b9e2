"""`sd35 inspect FILE_OR_DIR...`: what each model file holds and what generation still needs."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show what model files hold (component, config, dtype, size) and what is missing",
        description=(
            "Read safetensors headers only (no weights) and report, per file or folder, each component "
            "with the config detected from tensor shapes, the stored dtype, parameters and bytes; then list "
            "what is still missing to generate. Understands the official SD3.5 files, bare component files "
            "and diffusers folders."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="model files or folders")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip checking key names and shapes against the models"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when every path is readable and would load, 2 otherwise."""
    from sd35.loading.report import inspect_paths

    report = inspect_paths(args.paths, verify=not args.no_verify)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.format())
    for entry in report.entries:
        for message in ([entry.error] if entry.error else []) + list(entry.problems):
            print(f"sd35 inspect: error: {message}", file=sys.stderr)
    return 0 if report.ok else 2
