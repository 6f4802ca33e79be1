"""The ``powdr-outpaint`` command: one sub-command per module.

Each sub-command module exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a callable taking the parsed arguments and returning an exit code.
Errors the user can fix (:class:`PowdrError`) are printed as one sentence with exit
code 2; anything else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import __version__
from .errors import PowdrError

SUBCOMMAND_MODULES = (
    "sample_cli",
    "checkpoint_cli",
    "bench",
    "train_cli",
    "evaluate_cli",
    "generate_cli",
    "export_cli",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powdr-outpaint",
        description="Pathology-preserving outpainting of 3-D MRI with a conditional wavelet diffusion model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PowdrError as error:
        if getattr(args, "progress", "text") == "json":
            print(json.dumps({"event": "error", "message": str(error)}), flush=True)
        print(f"powdr-outpaint {args.command}: error: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"powdr-outpaint {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
