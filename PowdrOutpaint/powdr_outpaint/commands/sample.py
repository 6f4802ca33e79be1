"""``powdr-outpaint sample``: outpaint one image around its lesion."""

from __future__ import annotations

import argparse

from ..model.checkpoint import GUIDED_BANDS
from ..model.samplers import SAMPLERS
from ..outpainting.outpaint import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    PRESERVE_MODES,
    REFINE_TILINGS,
    TISSUE_LEVELS,
    OutpaintOptions,
    run_outpaint,
)
from ..progress import Progress
from .cli import command_help, named_files


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help=command_help("sample"),
        description="Synthesise N volumes around a kept lesion. Outputs are on the input's grid.",
    )
    parser.add_argument(
        "--image", required=True, action="append", metavar="[SEQUENCE=]FILE",
        help="MRI volume (.nii, .nii.gz or .nrrd); for a model of several sequences one per sequence, "
        "e.g. --image t1=A.nii.gz --image t1ce=B.nii.gz --image t2=C.nii.gz --image flair=D.nii.gz",
    )
    parser.add_argument("--mask", required=True, help="lesion mask or label map (any grid; resampled if needed)")
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (.pt)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--samples", type=int, default=3, help="number of volumes (default 3)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"denoising steps K (1..1000, default {DEFAULT_STEPS})")
    parser.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                        help=f"default {DEFAULT_SAMPLER} (DPM-Solver++(2M)); ddpm is ancestral, ddim deterministic")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (default 0)")
    add_refine_options(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--batch-size", type=int, default=1, help="volumes denoised together (default 1)")
    parser.add_argument("--labels", default=None, help="lesion labels, e.g. 1,2,4 (default: all > 0)")
    parser.add_argument("--preserve", choices=PRESERVE_MODES, default="exact",
                        help="exact: lesion voxels copied from the input (default); model: raw network output")
    parser.add_argument("--tissue-level", choices=TISSUE_LEVELS, default="input",
                        help="input: each sample's new tissue scaled by one factor to the input's tissue level "
                        "(its 90th percentile outside the lesion; default); model: as the model drew it")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 on CUDA and on CPUs where it is faster (AMX, AMD with AVX512-BF16), else fp32")
    parser.add_argument("--progress", choices=("text", "json", "none"), default="text",
                        help="text: a progress bar; json: one JSON object per line on stdout")
    parser.set_defaults(func=_run)


def add_refine_options(parser: argparse.ArgumentParser) -> None:
    """The options of a cascade's later stages (sample and generate)."""
    parser.add_argument("--refine-sampler", choices=SAMPLERS, default="dpm++2m",
                        help="sampler of a cascade's refine stage (default dpm++2m)")
    parser.add_argument("--refine-steps", type=int, default=5,
                        help="steps of a cascade's refine stage (default 5; ignored for single models)")
    parser.add_argument("--refine-tiling", choices=REFINE_TILINGS, default="whole",
                        help="whole: a cascade's refine stage on its whole grid in one pass (default); "
                             "blocks: on overlapping blocks of its training patch (less memory)")
    parser.add_argument("--no-expert", action="store_true",
                        help="run the first stage's last steps with the first stage itself, not with the expert "
                             "for the last steps the checkpoint holds (for comparisons)")
    parser.add_argument("--guidance", type=float, default=None, metavar="W",
                        help="autoguidance weight for a checkpoint that holds a guide (default: the weight "
                             "stored with it; 1: the first stage alone; higher: more contrast and structure, "
                             "too high: blotchy)")
    parser.add_argument("--guidance-from", type=int, default=None, metavar="T",
                        help="guide only the steps at timestep T or above (default: the start stored with the "
                             "guide; 0: every step); the last, nearly clean steps below T run the first stage "
                             "alone, since guiding them draws blotches")
    parser.add_argument("--guided-bands", choices=GUIDED_BANDS, default=None,
                        help="the subbands the guide acts on (default: those stored with it); detail: the seven "
                             "detail subbands, the low-pass band (tissue level, coarse layout) from the first "
                             "stage alone; all: every subband, which can brighten or darken whole regions")


def _run(args: argparse.Namespace) -> int:
    options = OutpaintOptions(
        samples=args.samples,
        steps=args.steps,
        sampler=args.sampler,
        eta=args.eta,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        labels=args.labels,
        preserve=args.preserve,
        precision=args.precision,
        refine_steps=args.refine_steps,
        refine_sampler=args.refine_sampler,
        refine_tiling=args.refine_tiling,
        expert=not args.no_expert,
        guidance=args.guidance,
        guidance_from=args.guidance_from,
        guided_bands=args.guided_bands,
        tissue_level=args.tissue_level,
    )
    progress = Progress(args.progress, min_interval_s=0.2)
    run_outpaint(named_files(args.image, "--image"), args.mask, args.checkpoint, args.out, options, progress)
    return 0
