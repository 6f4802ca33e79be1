"""The realism figures that real brains get: other patients put in a held-out case's place.

``evaluate`` scores samples against the original they were made from (README, "Reading the
figures"). This script gives those figures a scale: each other case of the data folder that lies
on the same grid as the held-out case (BraTS cases are all registered to one atlas) stands in for
a sample. It is treated as ``sample`` treats its output: its brain is scaled by one factor to the
held-out case's tissue level and the held-out lesion is copied in. The factor follows
``imaging.preprocess.match_tissue_level`` (the 90th percentile of the brain outside the lesion,
about the background) without its limits: a sample is already in the input's units when it is
matched, another patient's scan is in its own scanner's, so one factor does both steps here.
Then the same functions as ``evaluate`` give every stand-in's high-frequency ratio and histogram
distance, and every pair's mean |difference| over the brain outside the lesion.

Usage:
    python Testing/Benchmarks/real_brain_reference.py ../shared/data/brats18/Brats18_TCIA10_628_1 \
        ../shared/data/brats18/Brats18_TCIA10_639_1 [--sequence t1] [--json runs/real_reference.json]

The other cases are the held-out cases' sibling folders (the held-out cases themselves excluded);
``--others`` names them instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from powdr_outpaint.imaging.preprocess import TISSUE_LEVEL_PERCENTILE
from powdr_outpaint.imaging.volume_io import load_volume
from powdr_outpaint.qa import metrics as m


def case_file(folder: Path, suffix: str) -> Path:
    found = sorted(folder.glob(f"*_{suffix}.nii.gz"))
    if not found:
        raise SystemExit(f"{folder} has no *_{suffix}.nii.gz")
    return found[0]


def stand_in(other: np.ndarray, original: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Another patient's image as ``sample`` would hand it over in the original's place."""
    outside = ~lesion
    background, own_background = float(original.min()), float(other.min())
    reference = original[(original > background) & outside]
    own = other[(other > own_background) & outside]
    factor = (np.percentile(reference, TISSUE_LEVEL_PERCENTILE) - background) / (
        np.percentile(own, TISSUE_LEVEL_PERCENTILE) - own_background
    )
    scaled = background + (other.astype(np.float64) - own_background) * factor
    return np.where(lesion, original, scaled)


def figures(case: Path, others: list[Path], sequence: str) -> dict:
    original_volume = load_volume(case_file(case, sequence))
    original = np.asarray(original_volume.data, dtype=np.float64)
    lesion = np.asarray(load_volume(case_file(case, "seg")).data) > 0
    regions = m.regions_of(original, lesion)
    outside = regions["outside"]
    scale = m.intensity_range(original, original > original.min())
    reference_hf = m.high_frequency_energy(original, outside)
    names, stand_ins, skipped = [], [], []
    for other in others:
        volume = load_volume(case_file(other, sequence))
        if volume.data.shape != original.shape or not np.allclose(volume.affine, original_volume.affine, atol=1e-3):
            skipped.append(other.name)
            continue
        names.append(other.name)
        stand_ins.append(stand_in(np.asarray(volume.data, dtype=np.float64), original, lesion))
    if len(stand_ins) < 2:
        raise SystemExit(f"fewer than two other cases lie on {case.name}'s grid")
    hf = [m.high_frequency_ratio(s, original, outside, reference=reference_hf) for s in stand_ins]
    hist = [m.histogram_distance(s, original, outside, scale) for s in stand_ins]
    pairs = m.pairwise_mean_abs_difference(stand_ins, outside, scale).values
    return {
        "case": case.name, "others": names, "skipped_other_grid": skipped,
        "high_frequency_ratio": hf, "histogram_distance": hist, "pairwise_difference_pct": list(pairs),
    }


def spread(values: list[float], digits: int) -> str:
    return (f"{min(values):.{digits}f} / {float(np.median(values)):.{digits}f} / {max(values):.{digits}f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", type=Path, help="held-out case folders")
    parser.add_argument("--others", nargs="*", type=Path, default=None, help="the stand-ins' case folders")
    parser.add_argument("--sequence", default="t1")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    held = {c.resolve() for c in args.cases}
    results = []
    for case in args.cases:
        others = args.others or sorted(p for p in case.parent.iterdir() if p.is_dir() and p.resolve() not in held)
        results.append(figures(case, others, args.sequence))
    print("| case | stand-ins | high-frequency ratio (min / median / max) | histogram distance | "
          "pair difference % | stand-ins over 0.10 histogram distance |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        over = sum(h >= 0.10 for h in r["histogram_distance"])
        print(f"| {r['case']} | {len(r['others'])} | {spread(r['high_frequency_ratio'], 3)} | "
              f"{spread(r['histogram_distance'], 3)} | {spread(r['pairwise_difference_pct'], 1)} | "
              f"{over} of {len(r['others'])} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
