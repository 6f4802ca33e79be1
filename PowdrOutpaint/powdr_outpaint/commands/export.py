"""``powdr-outpaint export``: outpainted runs -> an nnU-Net v2 raw dataset."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ..outpainting.export import LABEL_VALUE_MODES, export_nnunet, parse_label_names
from .cli import command_help


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help=command_help("export"),
        description=(
            "Collect every run under --from (a 'generate' output folder or a 'sample' output folder) "
            "into OUT/DatasetDDD_NAME with imagesTr, labelsTr and dataset.json. Label files keep the "
            "original label values unless --label-values consecutive is given. Runs of a checkpoint of "
            "several sequences (e.g. t1,t1ce,t2,flair) become multi-channel cases (CASE_0000 ... CASE_0003 "
            "in the checkpoint's order). nnU-Net needs every channel of a case on one grid: a sequence "
            "whose files are on another grid is resampled onto the first sequence's grid (linear "
            "interpolation), and the command says which."
        ),
    )
    parser.add_argument("--from", dest="source", required=True, help="folder of outpainted runs")
    parser.add_argument("--format", choices=("nnunet",), default="nnunet", help="dataset format (nnunet: nnU-Net v2)")
    parser.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset number, 1..999")
    parser.add_argument("--name", required=True, help="dataset name, e.g. BrainOutpaint")
    parser.add_argument("--out", required=True, help="the nnU-Net raw folder (nnUNet_raw)")
    parser.add_argument("--with-real", action="store_true",
                        help="add each case's real image (every sequence of it) beside its synthetic ones")
    parser.add_argument("--label-values", choices=LABEL_VALUE_MODES, default="original",
                        help="original: keep the values (e.g. 0,1,2,4); consecutive: map them to 0,1,2,... "
                             "as nnU-Net v2's integrity check requires")
    parser.add_argument("--label-names", default=None,
                        help="names for dataset.json, e.g. 1=necrosis,2=edema,4=enhancing")
    parser.add_argument("--channel-name", default=None,
                        help="channel names for dataset.json: one, or one per sequence comma-separated, e.g. "
                             "T1,T1CE,T2,FLAIR (default: the checkpoint's sequences in capitals)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export of the same dataset")
    parser.add_argument("--progress", choices=("text", "json", "none"), default="text")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    result = export_nnunet(
        args.source,
        args.out,
        args.dataset_id,
        args.name,
        with_real=args.with_real,
        label_values=args.label_values,
        channel_name=args.channel_name,
        label_names=parse_label_names(args.label_names),
        overwrite=args.overwrite,
        progress=args.progress,
    )
    exported = sorted(result["mapping"].values())
    consecutive = bool(np.all(np.diff(exported) == 1))
    if args.progress == "json":
        payload = {k: v for k, v in result.items() if k != "mapping"}
        print(json.dumps({"event": "done", **payload, "consecutive_labels": consecutive}), flush=True)
    else:
        channels = result["channel_names"]
        print(
            f"wrote {result['numTraining']} training cases ({result['synthetic']} synthetic, {result['real']} real) "
            f"to {result['folder']}; labels {result['labels']}"
            + (f"; {len(channels)} channels {', '.join(channels)}" if len(channels) > 1 else ""),
            file=sys.stderr, flush=True,
        )
        for note in result["notes"]:
            print(f"note: {note}", file=sys.stderr, flush=True)
        if not consecutive:
            print(
                f"note: the label values {exported} are not consecutive; nnU-Net v2's integrity check needs "
                "0, 1, 2, ... (export again with --label-values consecutive before planning)",
                file=sys.stderr, flush=True,
            )
    return 0
