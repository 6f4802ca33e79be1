"""``powdr-outpaint init-checkpoint`` and ``powdr-outpaint info``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .checkpoint import initial_checkpoint, read_checkpoint, save_checkpoint
from .cli import command_help
from .errors import PowdrError
from .network import OutpaintUNet, count_parameters
from .presets import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    init = subparsers.add_parser(
        "init-checkpoint",
        help=command_help("init-checkpoint"),
    )
    init.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    init.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--modality", default="t1")
    init.set_defaults(func=_init)

    info = subparsers.add_parser("info", help=command_help("info"))
    info.add_argument("--checkpoint", required=True)
    info.add_argument("--json", action="store_true", help="print the card as JSON")
    info.set_defaults(func=_info)

    strip = subparsers.add_parser(
        "strip",
        help=command_help("strip"),
        description="Write a small checkpoint for sharing: the training state (optimiser, RNG, data "
        "order) is dropped; the configuration and the sampling (EMA) weights are kept unchanged.",
    )
    strip.add_argument("--checkpoint", required=True, help="a checkpoint written by train (e.g. latest.pt)")
    strip.add_argument("--out", required=True, help="the sampling-only checkpoint to write (.pt)")
    strip.set_defaults(func=_strip)


def _init(args: argparse.Namespace) -> int:
    path = initial_checkpoint(args.out, args.preset, seed=args.seed, modality=args.modality)
    print(f"wrote an untrained {args.preset} checkpoint to {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    config, _ = read_checkpoint(args.checkpoint)
    card = config.card()
    card["parameters"] = count_parameters(OutpaintUNet(config.network))
    if args.json:
        print(json.dumps(card))
    else:
        for key, value in card.items():
            print(f"{key:>12}: {value}")
    return 0


def strip_checkpoint(source: str | Path, destination: str | Path) -> Path:
    """Copy ``source`` to ``destination`` without its training state; returns the new path."""
    source, destination = Path(source), Path(destination)
    if destination.exists() and destination.resolve() == source.resolve():
        raise PowdrError("--out must differ from --checkpoint; the training checkpoint is kept as it is")
    config, payload = read_checkpoint(source)
    return save_checkpoint(destination, config, payload["weights"])


def _strip(args: argparse.Namespace) -> int:
    before = Path(args.checkpoint).stat().st_size
    path = strip_checkpoint(args.checkpoint, args.out)
    after = path.stat().st_size
    print(f"wrote {path} ({after / 2**20:.1f} MiB, was {before / 2**20:.1f} MiB)")
    return 0
