"""The ``powdr-outpaint`` command: one sub-command per module.

The commands are listed in :data:`COMMANDS` (name -> module and help line); only the
module of the command being run is imported, after the command line names it, so
``powdr-outpaint --help`` needs neither PyTorch nor anything platform-specific, and one
command's imports (or platform limits) cannot stop another from running. Each sub-command
module exposes ``register(subparsers)``, which adds its parser(s) with
``help=command_help(name)`` and sets ``func`` to a callable taking the parsed arguments and
returning an exit code. This module itself imports only the standard library.

Errors the user can fix (:class:`PowdrError`) are printed as one sentence with exit
code 2; anything else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import NamedTuple

from .. import __version__
from ..errors import PowdrError


class Command(NamedTuple):
    module: str  # in powdr_outpaint.commands; its register(subparsers) adds the parser
    help: str  # the line shown by powdr-outpaint --help


#: In the order ``powdr-outpaint --help`` lists them.
COMMANDS: dict[str, Command] = {
    "sample": Command("sample", "synthesise N volumes around a kept lesion, with mean and std maps"),
    "init-checkpoint": Command("checkpoint", "write an untrained checkpoint of a preset (for tests and plumbing)"),
    "info": Command("checkpoint", "show a checkpoint's model card"),
    "strip": Command(
        "checkpoint",
        "keep only what sampling needs (configuration + EMA weights) from a training checkpoint",
    ),
    "cascade": Command(
        "checkpoint",
        "join a first-stage model and a refine-stage model into one sampling checkpoint",
    ),
    "bench": Command("bench", "time one denoising step of a preset's network"),
    "train": Command("train", "train an outpainting model on cases in BraTS layout or a CSV list"),
    "evaluate": Command("evaluate", "quality metrics and a QA report of one outpainting run"),
    "generate": Command("generate", "outpaint many cases in one run (resumable; split over GPUs under torchrun)"),
    "export": Command("export", "write outpainted runs as a segmentation training set (nnU-Net v2 raw format)"),
    "demo": Command("demo", "outpaint the MNI152 template with the bundled demo model and write a QA report"),
}


def named_files(values: list[str] | None, option: str) -> str | dict[str, str] | None:
    """Repeated ``--image``/``--original`` values -> one path, {sequence: path}, or None if none.

    ``SEQUENCE=FILE`` names a sequence; a value is read that way only when it is not itself an
    existing file (a file name may hold '='). Names are case-insensitive.
    """
    from pathlib import Path

    from ..model.checkpoint import SEQUENCE_NAME

    if not values:
        return None
    named: dict[str, str] = {}
    plain: list[str] = []
    for value in values:
        name, separator, path = value.partition("=")
        if separator and SEQUENCE_NAME.match(name) and path and not Path(value).exists():
            if name.lower() in named:
                raise PowdrError(f"{option} names {name} twice")
            named[name.lower()] = path
        else:
            plain.append(value)
    if plain and (named or len(plain) > 1):
        raise PowdrError(
            f"give the files of several sequences as SEQUENCE=FILE, one {option} per sequence "
            f"(e.g. {option} t1=A.nii.gz {option} flair=B.nii.gz)"
        )
    return plain[0] if plain else named


def command_help(name: str) -> str:
    """The one-line help of command ``name``."""
    return COMMANDS[name].help


def command_in(argv: list[str]) -> str | None:
    """The sub-command named on a command line: its first word that is not an option.

    The top-level parser has no option taking a value (only ``--help`` and ``--version``),
    so that word is the command, or a mistake argparse reports.
    """
    for token in argv:
        if token == "--":
            return None
        if not token.startswith("-"):
            return token
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the full parser of ``command`` only (its module is imported).

    Every other command is listed, with its help line, by a placeholder parser that
    imports nothing; ``command=None`` imports no command module at all.
    """
    parser = argparse.ArgumentParser(
        prog="powdr-outpaint",
        description="Pathology-preserving outpainting of 3-D MRI with a conditional wavelet diffusion model.",
        epilog="Run 'powdr-outpaint COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = COMMANDS[command].module if command in COMMANDS else None
    for name, entry in COMMANDS.items():
        if name in subparsers.choices:
            continue  # registered with an earlier command of the same module
        if entry.module == chosen:
            importlib.import_module(f"{__package__}.{entry.module}").register(subparsers)
            if name not in subparsers.choices:
                raise RuntimeError(f"{entry.module}.register() did not add the command {name!r}")
        else:
            subparsers.add_parser(name, help=entry.help, add_help=False)
    return parser


def _tolerate_unencodable_output() -> None:
    """Never fail on printing a path: streams that cannot encode a character escape it.

    The Slicer module starts the worker with PYTHONIOENCODING=utf-8; a Windows console or
    pipe in a legacy code page (cp1252...) would otherwise raise UnicodeEncodeError.
    """
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding in ("utf8", "utf8sig") or getattr(stream, "errors", None) != "strict":
            continue
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _tolerate_unencodable_output()
    parser = build_parser(command_in(argv))
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
