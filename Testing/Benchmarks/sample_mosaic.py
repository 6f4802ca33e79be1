"""Side-by-side planes of an original and of the samples of one or more runs, for looking at anatomy.

Rows: the original, then the first N samples (``*_s00.nii.gz``, ...) of each run folder; columns:
two axial planes (61 % and 45 % of the height: above and through the lateral ventricles on a
BraTS or MNI grid), a coronal and a sagittal plane. Every panel shares one grey window, the 1st
to 99.5th percentile of the original's foreground, so brightness and contrast compare directly.

Usage:
    python Testing/Benchmarks/sample_mosaic.py OUT.png ORIGINAL.nii.gz RUN_DIR[:LABEL] ... [--samples 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def planes(volume: np.ndarray) -> list[np.ndarray]:
    """Two axial planes, one coronal and one sagittal of a (x, y, z) volume, for display."""
    x, y, z = volume.shape
    return [volume[:, :, int(0.61 * z)].T, volume[:, :, int(0.45 * z)].T,
            volume[:, y // 2, :].T, volume[int(0.42 * x), :, :].T]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("original")
    parser.add_argument("runs", nargs="+", help="sample output folders, each optionally with :LABEL")
    parser.add_argument("--samples", type=int, default=2, help="samples shown per run (default 2)")
    args = parser.parse_args()

    original = np.asarray(nib.load(args.original).dataobj, dtype=np.float32)
    rows = [("original", original)]
    for run in args.runs:
        folder, _, label = run.partition(":")
        for path in sorted(Path(folder).glob("*_s[0-9][0-9].nii.gz"))[: args.samples]:
            name = f"{label or Path(folder).name} {path.name[-9:-7]}"
            rows.append((name, np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)))
    low, high = np.percentile(original[original > 0], [1, 99.5])

    figure, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for row, (name, volume) in enumerate(rows):
        for column, image in enumerate(planes(volume)):
            axes[row, column].imshow(image, cmap="gray", vmin=low, vmax=high, origin="lower")
            axes[row, column].axis("off")
        axes[row, 0].set_title(name, fontsize=9, loc="left")
    figure.tight_layout()
    figure.savefig(args.out, dpi=70)
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
