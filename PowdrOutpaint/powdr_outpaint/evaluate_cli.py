"""``powdr-outpaint evaluate``: quality metrics and the QA report of one outpainting run.

Reads the original image, its lesion mask and the folder written by ``sample`` (or one
case folder of ``generate``), computes the metrics of :mod:`powdr_outpaint.metrics`,
prints a short table, and optionally writes the metrics as JSON and the QA PNG.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as m
from .atomic import write_json_atomic
from .cli import command_help
from .errors import PowdrError
from .preprocess import lesion_on_image_grid, parse_labels
from .progress import Progress
from .report import format_number
from .volume_io import Volume, load_volume, stem_of

SAMPLE_PATTERN = re.compile(r"^(?P<stem>.+)_outpaint_s(?P<index>\d+)\.nii(\.gz)?$")


def find_run(samples_dir: str | Path, stem: str | None = None) -> dict[str, Any]:
    """The files of one outpainting run in ``samples_dir``.

    Args:
        stem: the image stem (file name without extension); None picks the only one there.
    Returns:
        {"stem", "samples" (sorted paths), "mean", "std", "lesion", "metadata" (paths or None)}.
    """
    folder = Path(samples_dir)
    if not folder.is_dir():
        raise PowdrError(f"--samples {folder} is not a folder")
    runs: dict[str, list[tuple[int, Path]]] = {}
    for path in folder.iterdir():
        match = SAMPLE_PATTERN.match(path.name)
        if match and path.is_file():
            runs.setdefault(match["stem"], []).append((int(match["index"]), path))
    if not runs:
        raise PowdrError(f"no outpainted samples (*_outpaint_sNN.nii.gz) were found in {folder}")
    if stem is None or stem not in runs:
        if len(runs) > 1:
            raise PowdrError(
                f"{folder} holds samples of several images ({', '.join(sorted(runs))}); choose one with --stem"
            )
        stem = next(iter(runs))

    def optional(suffix: str) -> Path | None:
        for ending in (".nii.gz", ".nii"):
            candidate = folder / f"{stem}_outpaint_{suffix}{ending}"
            if candidate.is_file():
                return candidate
        return None

    metadata = folder / f"{stem}_outpaint.json"
    return {
        "stem": stem,
        "samples": [path for _, path in sorted(runs[stem])],
        "mean": optional("mean"),
        "std": optional("std"),
        "lesion": optional("lesion"),
        "metadata": metadata if metadata.is_file() else None,
    }


def _load_on_grid(path: Path, reference: Volume, what: str) -> np.ndarray:
    volume = load_volume(path, what)
    if volume.data.shape != reference.data.shape or not np.allclose(volume.affine, reference.affine, atol=1e-3):
        raise PowdrError(
            f"the {what} {path.name} is not on the original image's grid "
            f"(shape {volume.data.shape} vs {reference.data.shape}); evaluate it against the image it was made from"
        )
    return np.asarray(volume.data, dtype=np.float32)


def evaluate(
    original_path: str | Path,
    mask_path: str | Path,
    samples_dir: str | Path,
    labels: str | None = None,
    stem: str | None = None,
    report_path: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compute every metric of a run; optionally draw the QA report.

    All sample volumes are held in memory as float32 (N x the image size x 4 bytes),
    since the pairwise metrics need every pair.

    Args:
        labels: lesion labels such as "1,2,4"; None takes those of the run's metadata
            when present, else every label > 0.
    Returns:
        The metrics dictionary (JSON-serialisable), described in the module
        :mod:`powdr_outpaint.metrics` and the README.
    """
    progress = progress or Progress("none")
    run = find_run(samples_dir, stem or stem_of(original_path))
    run_metadata: dict[str, Any] = {}
    if run["metadata"] is not None:
        try:
            run_metadata = json.loads(Path(run["metadata"]).read_text())
        except (OSError, ValueError):
            run_metadata = {}
    if labels is None and isinstance(run_metadata.get("labels"), list):
        labels = ",".join(str(v) for v in run_metadata["labels"])

    progress.stage("loading", f"Loading the original, the mask and {len(run['samples'])} samples")
    original_volume = load_volume(original_path, "original image")
    lesion = lesion_on_image_grid(load_volume(mask_path, "mask"), original_volume, parse_labels(labels))
    original = np.asarray(original_volume.data, dtype=np.float32)
    samples = [_load_on_grid(p, original_volume, "sample") for p in run["samples"]]
    regions = m.regions_of(original, lesion)
    data_range = float(original.max() - original.min())
    if not data_range > 0:
        raise PowdrError("the original image is constant, so SSIM has no intensity range to work with")

    per_sample = []
    for index, (path, sample) in enumerate(zip(run["samples"], samples), start=1):
        progress.stage("evaluating", f"SSIM and MS-SSIM of sample {index} of {len(samples)}")
        ssim = m.ssim_regions(sample, original, regions, data_range)
        ms_ssim, scales = m.ms_ssim_regions(sample, original, regions, data_range)
        per_sample.append(
            {
                "file": Path(path).name,
                "ssim": ssim,
                "ms_ssim": ms_ssim,
                "max_abs_diff_lesion": m.max_abs_difference(sample, original, lesion),
            }
        )

    progress.stage("evaluating", "Realism of the new tissue")
    brain = original > original.min()
    scale = m.intensity_range(original, brain)
    outside = regions["outside"]
    reference_hf = m.high_frequency_energy(original, outside)
    for entry, sample in zip(per_sample, samples):
        entry["high_frequency_ratio"] = m.high_frequency_ratio(sample, original, outside, reference=reference_hf)
        entry["histogram_distance"] = m.histogram_distance(sample, original, outside, scale)
    realism: dict[str, Any] = {
        "intensity_range": scale,
        "high_frequency_ratio": float(np.mean([e["high_frequency_ratio"] for e in per_sample])),
        "histogram_distance": float(np.mean([e["histogram_distance"] for e in per_sample])),
        "high_frequency_sigma_voxels": m.HIGH_FREQUENCY_SIGMA,
    }
    if len(samples) >= 2:
        pairs = m.pairwise_mean_abs_difference(samples, outside, scale)
        realism["pairwise_difference_pct"] = {
            **pairs.as_dict(),
            "min": min(pairs.values),
            "median": float(np.median(pairs.values)),
        }
    else:
        realism["pairwise_difference_pct"] = None

    progress.stage("evaluating", "Diversity and the std map")
    if len(samples) >= 2:
        diversity = {
            "cosine": m.pairwise_cosine(samples).as_dict(),
            "kl": m.pairwise_kl(samples).as_dict(),
        }
    else:
        diversity = {"cosine": None, "kl": None, "note": "diversity needs at least 2 samples"}

    if run["std"] is not None:
        std = _load_on_grid(run["std"], original_volume, "std map")
        std_source = Path(run["std"]).name
    else:
        std = np.std(np.stack(samples), axis=0) if len(samples) > 1 else np.zeros_like(original)
        std_source = "computed from the samples"
    mean = (
        _load_on_grid(run["mean"], original_volume, "mean map")
        if run["mean"] is not None
        else np.mean(np.stack(samples), axis=0)
    )

    def average(key: str, region: str) -> float:
        return float(np.mean([entry[key][region] for entry in per_sample]))

    options = run_metadata.get("options", {}) if isinstance(run_metadata.get("options"), dict) else {}
    result: dict[str, Any] = {
        "original": str(Path(original_path).resolve()),
        "mask": str(Path(mask_path).resolve()),
        "samples_dir": str(Path(samples_dir).resolve()),
        "stem": run["stem"],
        "samples": len(samples),
        "preserve": options.get("preserve"),
        "shape": list(original.shape),
        "spacing_mm": [float(v) for v in original_volume.spacing],
        "lesion": {
            "voxels": int(lesion.sum()),
            "labels": labels or "all > 0",
            "max_abs_diff": max(entry["max_abs_diff_lesion"] for entry in per_sample),
        },
        "regions": {
            "inside": "the lesion",
            "outside": "voxels above the original's minimum (the head) outside the lesion",
            "outside_voxels": int(regions["outside"].sum()),
        },
        "settings": {
            "ssim_window": m.SSIM_WINDOW,
            "ssim_window_kind": "uniform, sample covariance, K1=0.01, K2=0.03",
            "ms_ssim_scales": scales,
            "ms_ssim_weights": list(m.MS_SSIM_WEIGHTS[:scales]),
            "histogram_bins": m.HISTOGRAM_BINS,
            "kl_epsilon": m.KL_EPSILON,
            "data_range": data_range,
        },
        "diversity": diversity,
        "realism": realism,
        "fidelity_mean": {
            "ssim": {r: average("ssim", r) for r in ("inside", "outside")},
            "ms_ssim": {r: average("ms_ssim", r) for r in ("inside", "outside")},
        },
        "per_sample": per_sample,
        "std_map": {"source": std_source, **m.std_map_stats(std, lesion, regions["outside"])},
    }
    if report_path is not None:
        progress.stage("report", f"Drawing the QA report {report_path}")
        info = _draw(report_path, original_volume, original, lesion, samples, run, mean, std, result)
        result["report"] = info
    return result


def _draw(report_path, original_volume, original, lesion, samples, run, mean, std, result) -> dict[str, Any]:
    from .report import write_report

    names = [f"Sample {i + 1} ({_short(p)})" for i, p in enumerate(run["samples"][:2])]
    preserve = f", preserve {result['preserve']}" if result.get("preserve") else ""
    title = (
        f"{result['stem']}: {result['samples']} samples{preserve}; "
        f"lesion {result['lesion']['voxels']:,} voxels, max |sample - original| in lesion "
        f"{result['lesion']['max_abs_diff']:.4g}"
    )
    return write_report(
        report_path, original, lesion, samples[:2], mean, std, original_volume.affine, result, title, names
    )


def _short(path: str | Path) -> str:
    """'CASE_t1_outpaint_s01.nii.gz' -> 's01'."""
    return Path(path).name.split("_outpaint_")[-1].split(".")[0]


def _num(value: Any, digits: int = 3) -> str:
    return format_number(value, digits)


def format_table(result: dict[str, Any]) -> str:
    """A short plain-text summary of :func:`evaluate`'s result."""
    lines = [
        f"{result['stem']}: {result['samples']} samples, lesion {result['lesion']['voxels']:,} voxels "
        f"(SSIM window {result['settings']['ssim_window']}^3, MS-SSIM {result['settings']['ms_ssim_scales']} scales)",
        f"{'':<12}{'SSIM in':>9}{'SSIM out':>10}{'MS-SSIM in':>12}{'MS-SSIM out':>13}{'max|Δ| lesion':>15}",
    ]
    for entry in result["per_sample"]:
        label = _short(entry["file"])
        lines.append(
            f"{label:<12}{_num(entry['ssim']['inside']):>9}{_num(entry['ssim']['outside']):>10}"
            f"{_num(entry['ms_ssim']['inside']):>12}{_num(entry['ms_ssim']['outside']):>13}"
            f"{entry['max_abs_diff_lesion']:>15.4g}"
        )
    fid = result["fidelity_mean"]
    lines.append(
        f"{'mean':<12}{_num(fid['ssim']['inside']):>9}{_num(fid['ssim']['outside']):>10}"
        f"{_num(fid['ms_ssim']['inside']):>12}{_num(fid['ms_ssim']['outside']):>13}"
        f"{result['lesion']['max_abs_diff']:>15.4g}"
    )
    cosine, kl = result["diversity"].get("cosine"), result["diversity"].get("kl")
    if cosine:
        lines.append(
            f"diversity over {cosine['pairs']} pairs: cosine {_num(cosine['mean'], 4)} ± {_num(cosine['std'], 4)}, "
            f"KL {kl['mean']:.3g} ± {kl['std']:.3g} nats (lower cosine, higher KL: more diverse)"
        )
    else:
        lines.append("diversity: needs at least 2 samples")
    realism = result.get("realism")
    if realism:
        pairs = realism.get("pairwise_difference_pct")
        spread = (
            f"pairwise |difference| smallest {pairs['min']:.2f} %, median {pairs['median']:.2f} % of the "
            f"intensity range; " if pairs else ""
        )
        lines.append(
            f"realism: {spread}high-frequency ratio {_num(realism['high_frequency_ratio'])} "
            f"(1 = as detailed as the original); histogram distance {_num(realism['histogram_distance'])} "
            f"(0 = same intensities)"
        )
    std = result["std_map"]
    lines.append(
        f"std map: inside mean {_num(std['inside']['mean'])} (max {_num(std['inside']['max'])}); "
        f"outside mean {_num(std['outside']['mean'])} "
        f"(p95 {_num(std['outside']['p95'])}, max {_num(std['outside']['max'])})"
    )
    if "report" in result:
        lines.append(f"report: {result['report']['path']}")
    return "\n".join(lines)


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinite floats replaced by None, so any JSON parser reads it."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_metrics_json(path: Path, payload: dict[str, Any]) -> None:
    """The metrics as strict JSON (NaN and infinity become null), written atomically."""
    write_json_atomic(path, strict_json(payload), allow_nan=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=command_help("evaluate"),
        description=(
            "Diversity (pairwise cosine similarity and histogram KL divergence), fidelity "
            "(3-D SSIM and MS-SSIM inside and outside the lesion), lesion preservation "
            "(max |sample - original| in the lesion) and std-map statistics."
        ),
    )
    parser.add_argument("--original", required=True, help="the image the samples were made from")
    parser.add_argument("--mask", required=True, help="its lesion mask or label map")
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
    result = evaluate(args.original, args.mask, args.samples, args.labels, args.stem, args.report, progress)
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
