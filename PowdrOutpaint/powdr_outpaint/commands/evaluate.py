"""``powdr-outpaint evaluate``: quality metrics and the QA report of one outpainting run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import PowdrError
from ..progress import Progress
from ..qa.evaluate import evaluate, format_table, strict_json, write_metrics_json
from .cli import command_help, named_files


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=command_help("evaluate"),
        description=(
            "Diversity (pairwise cosine similarity and histogram KL divergence), fidelity "
            "(3-D SSIM and MS-SSIM inside and outside the lesion), lesion preservation "
            "(max |sample - original| in the lesion) and std-map statistics. A run of several "
            "sequences is evaluated sequence by sequence, each against its own original."
        ),
    )
    parser.add_argument(
        "--original", action="append", metavar="[SEQUENCE=]FILE",
        help="the image the samples were made from; for a run of several sequences one per sequence, "
        "e.g. --original t1=A.nii.gz --original t1ce=B.nii.gz --original t2=C.nii.gz --original flair=D.nii.gz "
        "(default: the image(s) the run recorded in its metadata)",
    )
    parser.add_argument("--mask", default=None, help="its lesion mask or label map (default: the run's)")
    parser.add_argument("--samples", required=True,
                        help="the folder written by 'sample' (or one 'generate' case folder)")
    parser.add_argument("--labels", default=None,
                        help="lesion labels, e.g. 1,2,4 (default: those of the run, else all > 0)")
    parser.add_argument("--stem", default=None, help="which run, when the folder holds several")
    parser.add_argument("--json", default=None, help="write the metrics to this JSON file ('-' for standard output)")
    parser.add_argument("--report", default=None, help="write the QA report to this PNG")
    parser.add_argument("--progress", choices=("text", "json", "none"), default="text")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.report and not str(args.report).lower().endswith(".png"):
        raise PowdrError("--report must name a .png file")
    progress = Progress(args.progress)
    original = named_files(args.original, "--original")
    result = evaluate(original, args.mask, args.samples, args.labels, args.stem, args.report, progress)
    table_stream = sys.stderr if args.json == "-" else sys.stdout
    if args.progress != "json":
        print(format_table(result), file=table_stream, flush=True)
    if args.json == "-":
        print(json.dumps(strict_json(result), allow_nan=False), flush=True)
    elif args.json:
        write_metrics_json(Path(args.json), result)
    if args.progress == "json":
        progress.done({"json": args.json, "report": args.report})
    return 0
