"""How few-step samplers compare with 1000-step DDPM on real cases: statistics and time.

For every case and every sampler setting (``NAME:K``), ``powdr-outpaint sample`` runs in its own
process with the same seed and sample count (timed from start to exit), then ``evaluate``. The
settings alternate within each case, so a slow phase of the machine hits all of them alike.
Against the reference setting (the first one, 1000-step DDPM by default) each setting gets:

- the evaluate figures (pairwise difference, high-frequency ratio, histogram distance to the
  original, SSIM outside the lesion, cosine, std outside the lesion);
- ``std_ratio``: mean of the std map over the brain outside the lesion, relative to the reference's;
- ``std_corr``: Pearson correlation of its std map with the reference's over that region
  (where the samples vary, not only how much);
- ``hist_to_ref``: 1-D Wasserstein distance between the pooled intensities of its samples and
  the reference's samples, over that region, in units of the original's 1st-99th percentile range.

Usage (an otherwise idle machine; the table gives the mean over the cases)::

    python Testing/Benchmarks/compare_samplers.py --checkpoint Resources/Models/powdr_demo_brain_t1.pt \
        --out runs/samplers ../shared/data/brats18/Brats18_CBICA_ABM_1 ../shared/data/brats18/Brats18_TCIA02_135_1
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from powdr_outpaint.imaging.preprocess import lesion_on_image_grid, parse_labels
from powdr_outpaint.imaging.volume_io import load_volume
from powdr_outpaint.qa import metrics as m
from powdr_outpaint.qa.evaluate import find_run

DEFAULT_SETTINGS = "ddpm:1000,ddpm:100,dpm++2m:50,dpm++2m:20,dpm++2m:10"


# This script's folder is on sys.path when it runs: the figures are evaluate_holdout's.
from evaluate_holdout import evaluate_figures, run  # noqa: E402


def sample_and_evaluate(folder: Path, setting: str, args: argparse.Namespace) -> dict:
    sampler, steps = setting.split(":")
    image = folder / f"{folder.name}_{args.modality}.nii.gz"
    mask = folder / f"{folder.name}_seg.nii.gz"
    out = Path(args.out) / folder.name / setting.replace(":", "-").replace("+", "p")
    started = time.perf_counter()
    run("sample", "--image", image, "--mask", mask, "--checkpoint", args.checkpoint, "--samples", args.samples,
        "--seed", 0, "--progress", "none", "--sampler", sampler, "--steps", steps, "--out", out, *args.extra)
    seconds = time.perf_counter() - started
    return {"out": out, "sample_s": seconds, **evaluate_figures(image, mask, out)}


def against_reference(folder: Path, out: Path, reference: Path, args: argparse.Namespace) -> dict:
    """std-map agreement and pooled-histogram distance of one setting's samples to the reference's."""
    original_volume = load_volume(folder / f"{folder.name}_{args.modality}.nii.gz", "original")
    original = np.asarray(original_volume.data, dtype=np.float32)
    lesion = lesion_on_image_grid(load_volume(folder / f"{folder.name}_seg.nii.gz", "mask"), original_volume,
                                  parse_labels(None))
    outside = m.regions_of(original, lesion)["outside"]
    scale = m.intensity_range(original, original > original.min())

    def load(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        found = find_run(run_dir)
        samples = np.stack([np.asarray(load_volume(p, "sample").data, dtype=np.float32)[outside]
                            for p in found["samples"]])
        std = np.asarray(load_volume(found["std"], "std").data, dtype=np.float32)[outside]
        return samples, std

    samples, std = load(out)
    ref_samples, ref_std = load(reference)
    pooled = samples.ravel()
    ref_pooled = ref_samples.ravel()
    return {
        "std_ratio": float(std.mean() / ref_std.mean()),
        "std_corr": float(np.corrcoef(std, ref_std)[0, 1]),
        "hist_to_ref": m.histogram_distance(pooled, ref_pooled, np.ones(pooled.shape, bool), scale)
        if pooled.shape == ref_pooled.shape else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", help="BraTS case folders (CASE/CASE_t1.nii.gz, CASE_seg.nii.gz)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--modality", default="t1")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="SAMPLER:K,... the first is the reference")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more options for sample")
    args = parser.parse_args()
    settings = args.settings.split(",")

    rows: dict[str, dict[str, dict]] = {s: {} for s in settings}
    for folder in map(Path, args.cases):
        for setting in settings:
            rows[setting][folder.name] = sample_and_evaluate(folder, setting, args)
            print(f"{folder.name} {setting}: {rows[setting][folder.name]['sample_s']:.1f} s", file=sys.stderr,
                  flush=True)
        reference = rows[settings[0]][folder.name]["out"]
        for setting in settings:
            row = rows[setting][folder.name]
            row.update(against_reference(folder, row["out"], reference, args))
            row["out"] = str(row["out"])

    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "samplers.json").write_text(json.dumps(rows, indent=1))
    keys = [k for k in next(iter(rows[settings[0]].values())) if k != "out"]
    print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{len(args.cases)} cases x {args.samples} samples, mean over cases")
    print("| | " + " | ".join(settings) + " |")
    print("| --- |" + " --- |" * len(settings))
    for key in keys:
        cells = [f"{np.mean([r[key] for r in rows[s].values()]):.4g}" for s in settings]
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
