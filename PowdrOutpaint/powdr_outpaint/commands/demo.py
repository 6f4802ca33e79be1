"""``powdr-outpaint demo``: outpaint the MNI152 template with the bundled demo model.

Everything is offline: the template ships inside the nilearn wheel, the kept region is
drawn by the project's own random 6-connected mask generator at a fixed seed, and the
demo checkpoint is part of the repository (``Resources/Models``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np

from ..errors import PowdrError
from ..imaging.masks import random_mask
from ..imaging.volume_io import load_volume, save_nifti
from ..outpainting.outpaint import DEFAULT_STEPS, OutpaintOptions, run_outpaint
from ..progress import Progress
from .cli import command_help

DEMO_CHECKPOINT_NAME = "powdr_demo_brain_t1.pt"
TEMPLATE_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
DEMO_MASK_SEED = 2024
DEMO_MASK_VOXELS = 40_000  # 40 ml at 1 mm, a mid-sized glioma

#: Printed after a demo run with the bundled model: what it is good for, plainly.
BUNDLED_MODEL_NOTE = (
    "About the bundled model: a CPU-sized demonstration trained on 10 BraTS 2018 glioma cases (T1). "
    "It shows the method working on a laptop: brain-like anatomy around the kept region that differs "
    "from sample to sample, with the region copied exactly: a midline, lateral ventricles, and sulci as dark "
    "folds all round the surface. Its anatomy is simplified and unlike a real scan in plain ways (grey matter "
    "is hardly darker than white matter, so the cortical ribbon and the grey/white boundary are faint or "
    "missing over most of the brain; the tissue is mottled; a faint rim at the brain's outline), and it has "
    "seen very few brains, so use it to try the workflow and to test pipelines, not to train or evaluate a "
    "model meant for patients. Its model card: Resources/Models/MODEL_CARD.md."
)


def demo_checkpoint_path() -> Path:
    """The bundled demo model: $POWDR_DEMO_CHECKPOINT, the source tree or a built Slicer extension."""
    override = os.environ.get("POWDR_DEMO_CHECKPOINT")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parents[1]  # powdr_outpaint/, above commands/
    candidates = [
        package.parents[1] / "Resources" / "Models" / DEMO_CHECKPOINT_NAME,  # repository root
        package.parent / "Resources" / "Models" / DEMO_CHECKPOINT_NAME,  # built Slicer module
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise PowdrError(
        "the demo checkpoint was not found (looked in "
        + ", ".join(str(c.parent) for c in candidates)
        + "); set POWDR_DEMO_CHECKPOINT or pass --checkpoint"
    )


def template_path() -> Path:
    """The MNI152 2009 T1 template (1 mm, skull-stripped) inside the installed nilearn package."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise PowdrError("the demo needs the nilearn package for its MNI152 template: pip install nilearn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / TEMPLATE_NAME
    if not path.is_file():
        raise PowdrError(f"nilearn is installed but its MNI152 template {TEMPLATE_NAME} is missing")
    return path


def make_demo_inputs(folder: Path, seed: int = DEMO_MASK_SEED, voxels: int = DEMO_MASK_VOXELS) -> tuple[Path, Path]:
    """Copy the template into ``folder`` and draw the region to keep; returns (image, mask) paths."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / "mni152_t1.nii.gz"
    shutil.copyfile(template_path(), image_path)
    image = load_volume(image_path)
    mask = random_mask(image.data > 0, voxels, seed)
    mask_path = save_nifti(folder / "mni152_t1_keep.nii.gz", mask.astype(np.uint8), image.affine)
    return image_path, mask_path


def run_demo(
    out_dir: str | os.PathLike = "outputs/demo",
    samples: int = 4,
    steps: int = DEFAULT_STEPS,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, object]:
    """Run the whole demo; returns paths and timings."""
    from ..qa.evaluate import evaluate, write_metrics_json

    progress = progress or Progress("text")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    checkpoint = Path(checkpoint) if checkpoint else demo_checkpoint_path()
    image_path, mask_path = make_demo_inputs(out_dir / "inputs")
    options = OutpaintOptions(samples=samples, steps=steps, seed=seed, device=device)
    metadata = run_outpaint(image_path, mask_path, checkpoint, out_dir / "samples", options, progress)
    sampled = time.perf_counter()
    progress.stage("evaluating", "Computing the QA metrics and drawing the report")
    report_path = out_dir / "qa_report.png"
    metrics = evaluate(image_path, mask_path, out_dir / "samples", report_path=report_path)
    metrics_path = out_dir / "qa_metrics.json"
    write_metrics_json(metrics_path, metrics)
    total = time.perf_counter() - started
    return {
        "report": str(report_path),
        "metrics": str(metrics_path),
        "samples": metadata["outputs"],
        "inputs": {"image": str(image_path), "mask": str(mask_path)},
        "checkpoint": str(checkpoint),
        "sampling_s": sampled - started,
        "total_s": total,
        "metric_summary": metrics,
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help=command_help("demo"),
        description="Offline demonstration: MNI152 template, a random kept region, the bundled demo model.",
    )
    parser.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    parser.add_argument("--samples", type=int, default=4, help="number of samples (default 4)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"denoising steps (default {DEFAULT_STEPS})")
    parser.add_argument("--checkpoint", default=None, help="another checkpoint instead of the demo model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..qa.evaluate import format_table

    result = run_demo(args.out, args.samples, args.steps, args.checkpoint, args.device, args.seed)
    print(format_table(result["metric_summary"]))
    print(f"Demo finished in {result['total_s']:.0f} s ({result['sampling_s']:.0f} s loading and sampling).")
    print(f"  samples, mean, std: {Path(result['samples']['mean']).parent}")
    print(f"  QA metrics:         {result['metrics']}")
    print(f"  QA report:          {result['report']}   <- open this first")
    if not args.checkpoint:
        print()
        print(textwrap.fill(BUNDLED_MODEL_NOTE, width=100))
    return 0
