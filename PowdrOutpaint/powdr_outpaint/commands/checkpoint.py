"""``powdr-outpaint init-checkpoint`` and ``powdr-outpaint info``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import PowdrError
from ..model.checkpoint import (
    GUIDED_BANDS,
    STAGE_SECTIONS,
    WEIGHT_DTYPES,
    detailer_of,
    expert_of,
    guide_of,
    initial_checkpoint,
    read_checkpoint,
    refiner_of,
    save_cascade,
    save_checkpoint,
    stored_section,
)
from ..model.network import OutpaintUNet, count_parameters
from ..model.presets import PRESETS
from .cli import command_help


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
    strip.add_argument("--weights", choices=sorted(WEIGHT_DTYPES), default="fp32",
                       help="store the weights in fp32 (default), fp16 (half the file) or int8 (a quarter: "
                            "kernels in 8 bits, one scale per output channel); sampling still computes in the "
                            "precision it is given")
    strip.set_defaults(func=_strip)

    cascade = subparsers.add_parser(
        "cascade",
        help=command_help("cascade"),
        description="Write one sampling checkpoint from a first stage (any outpaint preset) and a refine "
        "stage (--preset refine), an expert for the first stage's last steps (trained with --max-timestep), "
        "a detail stage (--preset demo-detail) and/or a guide (a weaker first stage for autoguidance): "
        "'sample' then makes the anatomy with the first stage, guided away from the guide's mistakes, hands "
        "its last steps to the expert, redraws its detail with the detail stage and adds finer detail with "
        "the refine stage. Training state is dropped.",
    )
    cascade.add_argument("--first", required=True, help="the first stage (e.g. a demo-preset latest.pt, or a cascade)")
    cascade.add_argument("--refine", default=None,
                         help="the refine stage (a refine-preset latest.pt, or a cascade)")
    cascade.add_argument("--detail", default=None,
                         help="a detail stage (a demo-detail latest.pt) that draws detail from the first stage's image "
                              "seen at half its own resolution: on the first stage's grid (demo), or one octave "
                              "finer (demo-coarse); a cascade gives its detail stage; without it, a detail stage the "
                              "--first file holds is kept")
    cascade.add_argument("--expert", default=None,
                         help="an expert for the first stage's last steps (a run trained with --max-timestep); "
                              "without it, an expert the --first file holds is kept")
    cascade.add_argument("--guide", default=None,
                         help="a weaker first stage of the same task (e.g. an earlier checkpoint of the same "
                              "run) for autoguidance; without it, a guide the --first file holds is kept")
    cascade.add_argument("--guidance", type=float, default=None, metavar="W",
                         help="the guidance weight stored with the guide, 1-10 (default 2 for a new guide; "
                              "'sample --guidance' overrides it)")
    cascade.add_argument("--guidance-from", type=int, default=None, metavar="T",
                         help="the guide acts on the steps at timestep T or above, 0-1000 (default 30 for a "
                              "new guide; 'sample --guidance-from' overrides it)")
    cascade.add_argument("--guided-bands", choices=GUIDED_BANDS, default=None,
                         help="the subbands the guide acts on: detail (default for a new guide: the low-pass band "
                              "from the first stage alone) or all; 'sample --guided-bands' overrides it")
    cascade.add_argument("--weights", choices=sorted(WEIGHT_DTYPES), default="fp32",
                         help="store the weights in fp32 (default), fp16 (half the file) or int8 (a quarter: "
                              "kernels in 8 bits, one scale per output channel)")
    cascade.add_argument("--out", required=True, help="the joined checkpoint to write (.pt)")
    cascade.set_defaults(func=_cascade)


def _init(args: argparse.Namespace) -> int:
    path = initial_checkpoint(args.out, args.preset, seed=args.seed, modality=args.modality)
    print(f"wrote an untrained {args.preset} checkpoint to {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    config, payload = read_checkpoint(args.checkpoint)
    card = config.card()
    card["parameters"] = count_parameters(OutpaintUNet(config.network, config.diffusion))
    refiner = refiner_of(payload, config, Path(args.checkpoint).name)
    if refiner is not None:
        card["refine"] = refiner.card()
        card["refine"]["parameters"] = count_parameters(OutpaintUNet(refiner.network, refiner.diffusion))
    detailer = detailer_of(payload, config, Path(args.checkpoint).name)
    if detailer is not None:
        card["detail"] = detailer.card()
        card["detail"]["parameters"] = count_parameters(OutpaintUNet(detailer.network, detailer.diffusion))
    expert = expert_of(payload, config, Path(args.checkpoint).name)
    if expert is not None:
        card["expert"] = expert.card()
        card["expert"]["parameters"] = count_parameters(OutpaintUNet(expert.network, expert.diffusion))
    guide = guide_of(payload, config, Path(args.checkpoint).name)
    if guide is not None:
        card["guide"] = guide.config.card()
        card["guide"]["parameters"] = count_parameters(OutpaintUNet(guide.config.network, guide.config.diffusion))
        card["guide"]["weight"] = guide.weight
        card["guide"]["from_timestep"] = guide.from_timestep
        card["guide"]["bands"] = guide.bands
    if args.json:
        print(json.dumps(card))
    else:
        for key, value in card.items():
            print(f"{key:>12}: {value}")
    return 0


def strip_checkpoint(source: str | Path, destination: str | Path, weights: str = "fp32") -> Path:
    """Copy ``source`` to ``destination`` without its training state; returns the new path.

    ``weights`` "fp16" stores every stage's weights in half precision, "int8" in 8 bits.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists() and destination.resolve() == source.resolve():
        raise PowdrError("--out must differ from --checkpoint; the training checkpoint is kept as it is")
    config, payload = read_checkpoint(source)
    kept = {name: stored_section(payload[name], weights) for name in STAGE_SECTIONS if name in payload}
    return save_checkpoint(destination, config, payload["weights"], kept or None, weights_dtype=weights)


def _cascade(args: argparse.Namespace) -> int:
    path = save_cascade(
        args.first, args.refine, args.out, expert_path=args.expert, weights=args.weights,
        guide_path=args.guide, guidance=args.guidance, guidance_from=args.guidance_from,
        guided_bands=args.guided_bands, detail_path=args.detail,
    )
    print(f"wrote the cascade {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _strip(args: argparse.Namespace) -> int:
    before = Path(args.checkpoint).stat().st_size
    path = strip_checkpoint(args.checkpoint, args.out, weights=args.weights)
    after = path.stat().st_size
    print(f"wrote {path} ({after / 2**20:.1f} MiB, was {before / 2**20:.1f} MiB)")
    return 0
