"""Sample held-out BraTS cases with a checkpoint's defaults, evaluate them, print a table.

Each case runs ``powdr-outpaint sample`` (in its own process, timed from start to exit) and
``powdr-outpaint evaluate``; the realism figures and the paper's figures of every case are
printed as one Markdown table and written as JSON.

Usage:
    python Testing/Benchmarks/evaluate_holdout.py --checkpoint CKPT --out runs/holdout \
        ../shared/data/brats18/Brats18_TCIA10_628_1 ../shared/data/brats18/Brats18_TCIA10_639_1

``--seeds 0,1,2`` runs each case once per seed and adds a mean column per case.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "powdr_outpaint", *map(str, args)], check=True)


def evaluate_figures(image: Path, mask: Path, out: Path) -> dict:
    """``powdr-outpaint evaluate`` on the run in ``out``; the figures these benchmarks report."""
    run("evaluate", "--original", image, "--mask", mask, "--samples", out, "--json", out / "qa_metrics.json",
        "--report", out / "qa_report.png", "--progress", "none")
    metrics = json.loads((out / "qa_metrics.json").read_text())
    realism = metrics["realism"]
    return {
        "pairwise_min_pct": realism["pairwise_difference_pct"]["min"],
        "pairwise_median_pct": realism["pairwise_difference_pct"]["median"],
        "high_frequency_ratio": realism["high_frequency_ratio"],
        "histogram_distance": realism["histogram_distance"],
        "ssim_out": metrics["fidelity_mean"]["ssim"]["outside"],
        "ms_ssim_out": metrics["fidelity_mean"]["ms_ssim"]["outside"],
        "cosine": metrics["diversity"]["cosine"]["mean"],
        "lesion_max_abs_diff": metrics["lesion"]["max_abs_diff"],
        "std_outside_mean": metrics["std_map"]["outside"]["mean"],
    }


def case_table(rows: dict[str, dict[str, float]], number_format: str = ".4g") -> str:
    """{case: {figure: value}} as a Markdown table, one column per case, one row per figure."""
    names = list(rows)
    lines = ["| | " + " | ".join(n.replace("Brats18_", "") for n in names) + " |", "| --- |" + " --- |" * len(names)]
    for key in next(iter(rows.values())):
        lines.append(f"| {key} | " + " | ".join(format(rows[n][key], number_format) for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", help="BraTS case folders (CASE/CASE_t1.nii.gz, CASE_seg.nii.gz)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seeds", type=lambda text: [int(v) for v in text.split(",")], default=[0],
                        help="one run per seed; with several, a mean column per case too (4-sample figures of "
                             "one seed are noisy: on 639 the histogram distance was 0.105, 0.079, 0.079)")
    parser.add_argument("--modality", default="t1")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more options for sample")
    args = parser.parse_args()

    rows = {}
    for folder in map(Path, args.cases):
        image = folder / f"{folder.name}_{args.modality}.nii.gz"
        mask = folder / f"{folder.name}_seg.nii.gz"
        per_seed = []
        for seed in args.seeds:
            name = folder.name if len(args.seeds) == 1 else f"{folder.name} seed {seed}"
            out = Path(args.out) / (folder.name if len(args.seeds) == 1 else f"{folder.name}_seed{seed}")
            started = time.perf_counter()
            run("sample", "--image", image, "--mask", mask, "--checkpoint", args.checkpoint, "--samples",
                args.samples, "--seed", seed, "--progress", "none", "--out", out, *args.extra)
            seconds = time.perf_counter() - started
            rows[name] = {"sample_s": round(seconds, 1), **evaluate_figures(image, mask, out)}
            per_seed.append(rows[name])
        if len(per_seed) > 1:
            rows[f"{folder.name} mean"] = {key: float(np.mean([r[key] for r in per_seed])) for key in per_seed[0]}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "holdout.json").write_text(json.dumps(rows, indent=1))
    print(case_table(rows))


if __name__ == "__main__":
    main()
