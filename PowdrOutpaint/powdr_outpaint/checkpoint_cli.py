"""``powdr-outpaint init-checkpoint`` and ``powdr-outpaint info``."""

from __future__ import annotations

import argparse
import json

from .checkpoint import initial_checkpoint, read_checkpoint
from .network import OutpaintUNet, count_parameters
from .presets import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    init = subparsers.add_parser(
        "init-checkpoint",
        help="write an untrained checkpoint of a preset (for tests and plumbing)",
    )
    init.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    init.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--modality", default="t1")
    init.set_defaults(func=_init)

    info = subparsers.add_parser("info", help="show a checkpoint's model card")
    info.add_argument("--checkpoint", required=True)
    info.add_argument("--json", action="store_true", help="print the card as JSON")
    info.set_defaults(func=_info)


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
