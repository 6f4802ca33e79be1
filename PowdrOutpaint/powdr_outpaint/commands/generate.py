"""``powdr-outpaint generate``: outpaint many cases in one resumable run (torchrun-aware)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import PowdrError
from ..model.checkpoint import read_checkpoint
from ..model.samplers import SAMPLERS
from ..outpainting.generate import DEFAULT_MASK_GLOBS, discover_cases, distributed_env, run_generate
from ..outpainting.outpaint import DEFAULT_SAMPLER, DEFAULT_STEPS, PRESERVE_MODES, TISSUE_LEVELS, OutpaintOptions
from .cli import command_help
from .sample import add_refine_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help=command_help("generate"),
        description=(
            "Outpaint every case of a CSV file (columns image,mask[,case]) or of a folder with one "
            "subfolder per case, into OUT/CASE/. Cases whose STEM_outpaint.json exists are skipped, "
            "so an interrupted run continues where it stopped. Under torchrun the cases are split "
            "over the processes. A checkpoint of several sequences (e.g. t1,t1ce,t2,flair) needs one "
            "image per sequence and case: in a case folder each is found by its name (CASE_t1ce.nii.gz, "
            "CASE-t1c.nii.gz, ...; BraTS 2018-2021 and 2023 names both work), in a CSV one column per "
            "sequence (t1,t1ce,t2,flair,mask[,case]); a case missing one is reported as failed and the "
            "others are generated."
        ),
    )
    parser.add_argument("--cases", required=True,
                        help="a CSV file (image,mask[,case]; for a checkpoint of several sequences one column "
                             "per sequence instead of image, e.g. t1,t1ce,t2,flair,mask,case) or a folder of "
                             "case folders")
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (.pt)")
    parser.add_argument("--per-case", type=int, default=3, help="samples per case (default 3)")
    parser.add_argument("--out", required=True, help="output folder (one subfolder per case)")
    parser.add_argument("--image-glob", default="*",
                        help="in a case folder, the image's file pattern, e.g. '*_t1.nii.gz' "
                             "(default: the one non-mask file); single-sequence checkpoints only, as a "
                             "checkpoint of several sequences finds each image by its name")
    parser.add_argument("--mask-glob", action="append", default=None,
                        help="in a case folder, the mask's file pattern "
                             f"(repeatable; default {' '.join(DEFAULT_MASK_GLOBS)})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"denoising steps K (default {DEFAULT_STEPS})")
    parser.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER, help=f"default {DEFAULT_SAMPLER}")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (default 0)")
    add_refine_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="combined with each case's name (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun: the local rank's GPU)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--labels", default=None, help="lesion labels kept, e.g. 1,2,4 (default: all > 0)")
    parser.add_argument("--preserve", choices=PRESERVE_MODES, default="exact")
    parser.add_argument("--tissue-level", choices=TISSUE_LEVELS, default="input",
                        help="input: each sample's new tissue scaled by one factor to the input's tissue level "
                        "(its 90th percentile outside the lesion; default); model: as the model drew it")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--progress", choices=("text", "json", "none"), default="text",
                        help="text: one bar for the whole run; json: one JSON object per line")
    parser.set_defaults(func=_run)


def _device(requested: str, world: int, local_rank: int) -> str:
    # Under torchrun every process takes the GPU of its local rank.
    if world > 1 and requested in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{local_rank % torch.cuda.device_count()}"
    return requested


def _run(args: argparse.Namespace) -> int:
    if args.per_case < 1:
        raise PowdrError("--per-case must be at least 1")
    rank, world, local_rank = distributed_env()
    # The checkpoint says which images a case needs (one, or one per sequence).
    config, _ = read_checkpoint(args.checkpoint)
    cases = discover_cases(
        args.cases, args.image_glob, tuple(args.mask_glob or DEFAULT_MASK_GLOBS), sequences=config.sequences
    )
    options = OutpaintOptions(
        samples=args.per_case,
        steps=args.steps,
        sampler=args.sampler,
        eta=args.eta,
        seed=args.seed,
        device=_device(args.device, world, local_rank),
        batch_size=args.batch_size,
        labels=args.labels,
        preserve=args.preserve,
        tissue_level=args.tissue_level,
        precision=args.precision,
        refine_steps=args.refine_steps,
        refine_sampler=args.refine_sampler,
        refine_tiling=args.refine_tiling,
        expert=not args.no_expert,
        guidance=args.guidance,
        guidance_from=args.guidance_from,
        guided_bands=args.guided_bands,
    )
    summary = run_generate(cases, args.checkpoint, args.out, options, args.progress, rank, world)
    prefix = f"[rank {rank}/{world}] " if world > 1 else ""
    if args.progress == "json":
        print(json.dumps({
            "event": "done", "rank": rank, "world": world, "generated": summary.generated,
            "skipped": summary.skipped, "failed": summary.failed, "seconds": round(summary.seconds, 2),
        }), flush=True)
    elif args.progress == "text":
        print(
            f"{prefix}{len(summary.generated)} generated, {len(summary.skipped)} skipped (already complete), "
            f"{len(summary.failed)} failed of {summary.assigned} cases in {summary.seconds:.1f} s; "
            f"outputs in {args.out}",
            file=sys.stderr, flush=True,
        )
    if summary.failed:
        listed = "; ".join(f"{name}: {message}" for name, message in summary.failed.items())
        raise PowdrError(f"{len(summary.failed)} of {summary.assigned} cases failed ({listed})")
    return 0
