"""Where a cascade loses fine detail: each stage measured against a flawless stand-in.

For each case (BraTS folder: CASE_t1.nii.gz, CASE_seg.nii.gz), the high-frequency ratio
(RMS of image minus its 2-voxel Gaussian blur, brain outside the lesion, input grid, over the
original's; the figure ``evaluate`` reports) of:

- ``flawless_coarse``: the original taken to the first stage's grid and back: the best a
  perfect first stage alone could show;
- ``flawless_fine``: the original taken to the refine stage's grid and back: the best a
  perfect cascade could show;
- ``oracle_refine``: the refine stage given the original's own image on the first stage's
  grid (a perfect first stage, the real refine stage);
- ``cascade``: both stages real, as ``sample`` runs them.

Each is mapped back to the input grid both with trilinear interpolation (order 1) and with
cubic B-splines (order 3), so the loss in the last resampling shows too. The difference
between ``oracle_refine`` and ``flawless_fine`` is the refine stage's loss; between
``cascade`` and ``oracle_refine`` the first stage's. ``oracle_refine_pairwise_pct``: how much
the refine stage's output depends on its noise (mean |difference| of two refinements of the same
coarse image, % of the intensity range).

Usage:
    python Testing/Benchmarks/diagnose_cascade.py --checkpoint CKPT --samples 2 \
        ../shared/data/brats18/Brats18_TCIA10_628_1 ../shared/data/brats18/Brats18_TCIA10_639_1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from powdr_outpaint.imaging.preprocess import Prepared, to_input_grid
from powdr_outpaint.model.checkpoint import load_model
from powdr_outpaint.outpainting.outpaint import (
    OutpaintOptions,
    Refiner,
    iter_samples,
    load_case,
    sample_generator,
)
from powdr_outpaint.progress import Progress
from powdr_outpaint.qa import metrics

# This script's folder is on sys.path when it runs: the table is evaluate_holdout's.
from evaluate_holdout import case_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--checkpoint", required=True, help="a cascade checkpoint")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--refine-steps", type=int, default=5)
    parser.add_argument("--refine-sampler", default="dpm++2m")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = load_model(args.checkpoint, "cpu")
    if model.refiner is None:
        parser.error("--checkpoint must be a cascade")
    options = OutpaintOptions(samples=args.samples, refine_steps=args.refine_steps,
                              refine_sampler=args.refine_sampler, precision="fp32")
    device = torch.device("cpu")
    rows: dict[str, dict[str, float]] = {}
    for folder in map(Path, args.cases):
        started = time.perf_counter()
        case = load_case(folder / f"{folder.name}_t1.nii.gz", folder / f"{folder.name}_seg.nii.gz", model, None)
        original = case.final.image.data.astype(np.float64)
        region = metrics.regions_of(original, case.final.lesion)["outside"]
        reference = metrics.high_frequency_energy(original, region)

        def ratio(volume: np.ndarray) -> float:
            return metrics.high_frequency_ratio(volume, original, region, reference=reference)

        candidates: dict[str, list[tuple[np.ndarray, Prepared]]] = {
            "flawless_coarse": [(case.prepared.model_image, case.prepared)],
            "flawless_fine": [(case.fine.model_image, case.fine)],
            "oracle_refine": [],
            "cascade": [],
        }
        refiner = Refiner(case, options, device)
        for index in range(args.samples):
            refined = refiner.refine(case.prepared.model_image, sample_generator(options.seed + 1, index, device),
                                     lambda done: None)
            candidates["oracle_refine"].append((refined, case.fine))
        for _, images in iter_samples(case, options, device, Progress("none"), []):
            candidates["cascade"].append((images[0], case.fine))
        row: dict[str, float] = {}
        for name, items in candidates.items():
            for order in (1, 3):
                row[f"{name}_order{order}"] = float(np.mean([ratio(to_input_grid(m, p, order)) for m, p in items]))
        # The refine stage's own spread: the same coarse image refined with different noise.
        scale = metrics.intensity_range(original, region)
        oracle = [to_input_grid(m, p, 1) for m, p in candidates["oracle_refine"]]
        if len(oracle) > 1:
            row["oracle_refine_pairwise_pct"] = metrics.pairwise_mean_abs_difference(oracle, region, scale).mean
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows[folder.name] = row
        print(folder.name, json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(case_table(rows, ".3f"))


if __name__ == "__main__":
    main()
