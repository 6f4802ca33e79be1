"""The QA report: one PNG a person looks at first.

Six columns (condition, original, sample 1, sample 2, mean, std) by three rows (axial,
coronal and sagittal planes through the lesion's centre of mass). Volumes are shown
in RAS orientation, neurological convention (patient right on the right of axial
and coronal views; anterior on the right of sagittal views), with the voxel spacing
as aspect ratio. Every panel draws the lesion outline; the std map uses the Inferno
colour map with its own colour bar; titles carry the key numbers.

A run of several sequences gets one row per sequence instead (:func:`write_sequences_report`):
the same six columns in the axial plane through the lesion's centre, each row titled with
its sequence and drawn with its own grey window and std colour bar, since every sequence
has its own intensity scale. The figure grows with the number of sequences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..imaging.atomic import atomic_target

PLANES = ("axial", "coronal", "sagittal")
PANELS = ("Condition", "Original", "Sample 1", "Sample 2", "Mean", "Std")
OUTLINE_COLOUR = "#00e5ff"


def _to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder and flip array axes so that they run along R, A and S."""
    import nibabel as nib

    current = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    return nib.orientations.apply_orientation(volume, nib.orientations.ornt_transform(current, target))


def _ras_spacing(affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    order = nib.orientations.io_orientation(affine)[:, 0].astype(int)
    ras = np.empty(3)
    ras[order] = spacing
    return ras


def lesion_centre(lesion: np.ndarray) -> tuple[int, int, int]:
    """Voxel index of the lesion's centre of mass (rounded), or the volume centre if empty."""
    if not lesion.any():
        return tuple(int(s // 2) for s in lesion.shape)
    centre = np.argwhere(lesion).mean(axis=0)
    return tuple(int(round(c)) for c in centre)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the box around ``mask`` grown by ``margin`` voxels (the whole volume if empty)."""
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)
    index = np.argwhere(mask)
    low = np.maximum(index.min(axis=0) - margin, 0)
    high = np.minimum(index.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _plane(volume: np.ndarray, plane: str, centre: Sequence[int]) -> np.ndarray:
    """A 2-D slice, rows running upwards (use origin='lower')."""
    i, j, k = centre
    if plane == "axial":
        return volume[:, :, k].T
    if plane == "coronal":
        return volume[:, j, :].T
    return volume[i, :, :].T


def _aspect(spacing: np.ndarray, plane: str) -> float:
    horizontal, vertical = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}[plane]
    return float(spacing[vertical] / spacing[horizontal])


def format_number(value: Any, digits: int = 3) -> str:
    """A metric for a title or table: fixed digits, n/a for missing, compact when large."""
    if value is None:
        return "n/a"
    value = float(value)
    if np.isnan(value):
        return "n/a"
    if np.isinf(value):
        return "inf"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _titles(metrics: dict[str, Any], sample_names: Sequence[str]) -> list[str]:
    per_sample = metrics.get("per_sample", [])
    lesion = metrics.get("lesion", {})
    diversity = metrics.get("diversity", {})
    std = metrics.get("std_map", {})
    titles = [
        f"Condition\nlesion {lesion.get('voxels', 0):,} voxels",
        "Original",
    ]
    for index in range(2):
        if index < len(per_sample):
            entry = per_sample[index]
            titles.append(
                f"{sample_names[index] if index < len(sample_names) else f'Sample {index + 1}'}\n"
                f"SSIM out {format_number(entry['ssim']['outside'])} · MS-SSIM out {format_number(entry['ms_ssim']['outside'])}\n"
                f"max|Δ| in lesion {format_number(entry['max_abs_diff_lesion'], 4)}"
            )
        else:
            titles.append(f"Sample {index + 1}\n(not available)")
    # Diversity is None for a single sample: there is no pair to compare.
    cosine = diversity.get("cosine") or {}
    kl = diversity.get("kl") or {}
    spread = (
        f"cosine {format_number(cosine.get('mean'), 4)} ± {format_number(cosine.get('std'), 4)} · "
        f"KL {format_number(kl.get('mean'), 4)}" if cosine else "diversity needs 2 samples"
    )
    titles.append(f"Mean of {metrics.get('samples', '?')}\n{spread}")
    titles.append(
        "Std (intensity units)\n"
        f"mean in {format_number(std.get('inside', {}).get('mean'))} · out {format_number(std.get('outside', {}).get('mean'))}"
    )
    return titles


def _grey_window(original: np.ndarray, background: float) -> tuple[float, float]:
    """One grey window for every image panel of a sequence, from its original's foreground,
    so that differences between samples are not hidden by per-panel scaling."""
    foreground = original[original > background]
    if foreground.size:
        low, high = (float(v) for v in np.percentile(foreground, [0.5, 99.5]))
    else:
        low, high = background, float(original.max())
    low = min(low, background)
    if not high > low:
        high = low + 1.0
    return low, high


def _std_high(std: np.ndarray) -> float:
    return float(np.percentile(std[std > 0], 99.5)) if np.any(std > 0) else 1.0


def _style(ax: Any) -> None:
    ax.set_facecolor("black")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#3a3a3a")


def _show(
    ax: Any, image: np.ndarray, outline: np.ndarray, is_std: bool, window: tuple[float, float], std_high: float,
    aspect: float,
) -> Any:
    """Draw one 2-D panel (rows upwards) with the lesion outline; returns the image artist."""
    low, high = window
    artist = ax.imshow(
        image,
        cmap="inferno" if is_std else "gray",
        vmin=0.0 if is_std else low,
        vmax=std_high if is_std else high,
        origin="lower",
        aspect=aspect,
        interpolation="nearest",
    )
    if outline.any():
        ax.contour(outline.astype(np.float32), levels=[0.5], colors=OUTLINE_COLOUR, linewidths=0.7)
    return artist


def _colour_bar(fig: Any, artist: Any, axes: Any, label: str, fontsize: float | None = None) -> None:
    import matplotlib.pyplot as plt

    bar = fig.colorbar(artist, ax=axes, fraction=0.08, pad=0.01, shrink=0.8)
    bar.set_label(label, color="white", fontsize=fontsize)
    bar.ax.yaxis.set_tick_params(color="white", labelsize=fontsize)
    plt.setp(bar.ax.get_yticklabels(), color="white")


def _save(fig: Any, path: str | os.PathLike, title: str, description: str, dpi: int) -> Path:
    """Write the figure as PNG, atomically; its text chunks name the layout, so programs can
    check it without a viewer."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        metadata = {
            "Title": title or "PowdrOutpaint QA report",
            "Description": description,
            "Software": "powdr-outpaint evaluate",
        }
        with atomic_target(path, suffix=".part.png") as temporary:
            fig.savefig(temporary, dpi=dpi, facecolor=fig.get_facecolor(), metadata=metadata)
    finally:
        plt.close(fig)
    return path


def write_report(
    path: str | os.PathLike,
    original: np.ndarray,
    lesion: np.ndarray,
    samples: Sequence[np.ndarray],
    mean: np.ndarray,
    std: np.ndarray,
    affine: np.ndarray,
    metrics: dict[str, Any],
    title: str = "",
    sample_names: Sequence[str] = ("Sample 1", "Sample 2"),
    dpi: int = 110,
) -> dict[str, Any]:
    """Draw the QA figure and write it to ``path`` (PNG, written atomically).

    Args:
        original, mean, std: (X, Y, Z) volumes on one grid, intensity units.
        lesion: (X, Y, Z) bool, the kept lesion.
        samples: one or more sample volumes; the first two are shown.
        affine: voxel -> RAS (4, 4) of that grid, for orientation and aspect.
        metrics: the evaluation dictionary (see ``evaluate_cli.evaluate``); its numbers
            go into the titles.
    Returns:
        {"path", "panels" (the six column titles' first lines), "planes", "centre_voxel"}.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    background = float(original.min())
    condition = np.where(lesion, original, background)
    columns = [condition, original]
    columns += [samples[i] if i < len(samples) else None for i in range(2)]
    columns += [mean, std]
    ras = [None if c is None else _to_ras(np.asarray(c), affine) for c in columns]
    lesion_ras = _to_ras(lesion.astype(np.uint8), affine) > 0
    # Crop every panel to the head (the original's foreground and the lesion) so the
    # anatomy fills the panels; the empty field of view around it says nothing.
    box = _bounding_box(_to_ras(original > background, affine) | lesion_ras, margin=6)
    ras = [None if v is None else v[box] for v in ras]
    lesion_ras = lesion_ras[box]
    spacing = _ras_spacing(affine)
    centre = lesion_centre(lesion_ras)

    low, high = _grey_window(original, background)
    std_high = _std_high(std)

    titles = _titles(metrics, sample_names)
    extent_mm = np.asarray(lesion_ras.shape) * spacing
    heights = [extent_mm[1], extent_mm[2], extent_mm[2]]  # axial, coronal, sagittal rows
    widths = [extent_mm[0]] * len(PANELS)
    panel_width = 2.6
    fig_height = panel_width * sum(heights) / max(widths[0], extent_mm[1]) + 1.6
    fig, axes = plt.subplots(
        len(PLANES), len(PANELS), figsize=(panel_width * len(PANELS) + 1.4, fig_height),
        facecolor="black", squeeze=False, layout="constrained",
        gridspec_kw={"height_ratios": heights},
    )
    std_image = None
    for column, (volume, column_title) in enumerate(zip(ras, titles)):
        for row, plane in enumerate(PLANES):
            ax = axes[row, column]
            _style(ax)
            if row == 0:
                ax.set_title(column_title, color="white", fontsize=8.5)
            if column == 0:
                ax.set_ylabel(plane, color="white", fontsize=10)
            if volume is None:
                ax.text(0.5, 0.5, "no sample", color="grey", ha="center", va="center", transform=ax.transAxes)
                continue
            is_std = column == len(PANELS) - 1
            image = _show(
                ax, _plane(volume, plane, centre), _plane(lesion_ras, plane, centre), is_std, (low, high), std_high,
                _aspect(spacing, plane),
            )
            if is_std:
                std_image = image
    if std_image is not None:
        _colour_bar(fig, std_image, axes[:, -1].tolist(), "voxel-wise std (intensity units)")
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    fig.supxlabel(
        "Planes through the lesion centre, RAS, neurological view (patient right on the right). "
        f"Cyan: lesion outline. Grey window {low:.4g}..{high:.4g} (all grey panels).",
        color="#bbbbbb", fontsize=8,
    )

    description = "panels: " + " | ".join(PANELS) + "; planes: " + " | ".join(PLANES)
    path = _save(fig, path, title, description, dpi)
    return {
        "path": str(path),
        "panels": [t.split("\n")[0] for t in titles],
        "planes": list(PLANES),
        "centre_voxel_ras": list(centre),
    }


@dataclass
class SequenceRow:
    """One sequence's row of the multi-sequence report, reduced to what is drawn.

    Panels are 2-D slices (rows running upwards, origin='lower') through the lesion's
    centre, cropped to the head, in RAS orientation; intensities in the sequence's units.
    """

    name: str
    panels: list[np.ndarray | None]  # PANELS order; None for a missing second sample
    outline: np.ndarray  # 2-D bool, the lesion on the same slice
    aspect: float  # vertical / horizontal voxel size of the slice
    extent_mm: tuple[float, float]  # (width, height) of the cropped slice in mm
    window: tuple[float, float]  # grey window of the image panels, intensity units
    std_high: float  # top of the std colour map, intensity units
    titles: list[str]  # one per panel, key numbers included
    centre_voxel_ras: list[int]
    plane: str = "axial"


def _row_titles(metrics: dict[str, Any], sample_names: Sequence[str]) -> list[str]:
    """Panel titles of one sequence's row: the column name, then that sequence's numbers."""
    titles = _titles(metrics, sample_names)
    realism = metrics.get("realism", {})
    pairs = realism.get("pairwise_difference_pct") or {}
    spread = f"\npairs differ ≥ {format_number(pairs.get('min'), 2)} %" if pairs else ""
    titles[1] = (
        f"Original\nsamples' HF ratio {format_number(realism.get('high_frequency_ratio'))} · "
        f"hist. dist. {format_number(realism.get('histogram_distance'))}{spread}"
    )
    titles[-1] = titles[-1].replace("Std (intensity units)", "Std")
    return titles


def sequence_row(
    name: str,
    original: np.ndarray,
    lesion: np.ndarray,
    samples: Sequence[np.ndarray],
    mean: np.ndarray,
    std: np.ndarray,
    affine: np.ndarray,
    metrics: dict[str, Any],
    sample_names: Sequence[str] = ("Sample 1", "Sample 2"),
    plane: str = "axial",
) -> SequenceRow:
    """Cut one sequence's panels for :func:`write_sequences_report`.

    Args:
        original, mean, std: (X, Y, Z) volumes on the sequence's own grid, intensity units.
        lesion: (X, Y, Z) bool, the kept lesion on that grid.
        samples: one or more sample volumes; the first two are shown.
        affine: voxel -> RAS (4, 4) of that grid.
        metrics: the sequence's evaluation dictionary (its numbers go into the titles).
        plane: which plane through the lesion's centre.
    """
    background = float(original.min())
    condition = np.where(lesion, original, background)
    volumes = [condition, original, *(samples[i] if i < len(samples) else None for i in range(2)), mean, std]
    lesion_ras = _to_ras(lesion.astype(np.uint8), affine) > 0
    box = _bounding_box(_to_ras(original > background, affine) | lesion_ras, margin=6)
    lesion_ras = lesion_ras[box]
    centre = lesion_centre(lesion_ras)
    spacing = _ras_spacing(affine)
    panels = [None if v is None else np.ascontiguousarray(_plane(_to_ras(np.asarray(v), affine)[box], plane, centre))
              for v in volumes]
    outline = _plane(lesion_ras, plane, centre)
    horizontal, vertical = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}[plane]
    extent = np.asarray(lesion_ras.shape) * spacing
    return SequenceRow(
        name=name,
        panels=panels,
        outline=outline,
        aspect=_aspect(spacing, plane),
        extent_mm=(float(extent[horizontal]), float(extent[vertical])),
        window=_grey_window(original, background),
        std_high=_std_high(std),
        titles=_row_titles(metrics, sample_names),
        centre_voxel_ras=[int(c) for c in centre],
        plane=plane,
    )


def write_sequences_report(
    path: str | os.PathLike, rows: Sequence[SequenceRow], title: str = "", dpi: int = 110
) -> dict[str, Any]:
    """Draw the QA figure of a multi-sequence run, one row per sequence, to ``path`` (PNG).

    The height grows with the number of rows (about 3.5 inches each); every row carries its
    sequence's name, its numbers, its own grey window and its own std colour bar.
    Returns:
        {"path", "rows" (sequence names, top to bottom), "panels" (column names), "planes",
        "centre_voxel_ras" ({sequence: RAS voxel index in the cropped volume})}.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("a sequences report needs at least one row")
    panel_width = 2.6  # inches, as in the single-sequence report
    title_space = 0.75  # inches of panel titles (three lines) above each row
    ratios = [row.extent_mm[1] / row.extent_mm[0] for row in rows]
    fig_height = sum(panel_width * r + title_space for r in ratios) + 1.3  # suptitle and footnote
    fig, axes = plt.subplots(
        len(rows), len(PANELS), figsize=(panel_width * len(PANELS) + 1.8, fig_height),
        facecolor="black", squeeze=False, layout="constrained",
        gridspec_kw={"height_ratios": ratios},
    )
    for r, row in enumerate(rows):
        std_image = None
        for column, (panel, panel_title) in enumerate(zip(row.panels, row.titles)):
            ax = axes[r, column]
            _style(ax)
            ax.set_title(panel_title, color="white", fontsize=8.5)
            if column == 0:
                # The sequence's name leads its row, larger than anything else but the title.
                ax.set_ylabel(row.name, color="white", fontsize=16, fontweight="bold", labelpad=10, rotation=0,
                              ha="right", va="center")
            if panel is None:
                # An empty panel the size of the others, so the row keeps its shape.
                height, width = row.outline.shape
                ax.set_xlim(-0.5, width - 0.5)
                ax.set_ylim(-0.5, height - 0.5)
                ax.set_aspect(row.aspect)
                ax.text(0.5, 0.5, "no sample", color="grey", ha="center", va="center", transform=ax.transAxes)
                continue
            is_std = column == len(PANELS) - 1
            image = _show(ax, panel, row.outline, is_std, row.window, row.std_high, row.aspect)
            if is_std:
                std_image = image
        if std_image is not None:
            _colour_bar(fig, std_image, axes[r, -1], f"{row.name} std", fontsize=8)
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    planes = list(dict.fromkeys(row.plane for row in rows))
    fig.supxlabel(
        f"{' and '.join(planes).capitalize()} planes through the lesion centre, RAS, neurological view "
        "(patient right on the right); "
        "one row per sequence, each with its own grey window (the original's 0.5-99.5th percentiles) and std scale. "
        "Cyan: lesion outline.",
        color="#bbbbbb", fontsize=8.5,
    )
    description = (
        f"rows: {' | '.join(row.name for row in rows)}; panels: {' | '.join(PANELS)}; planes: {' | '.join(planes)}"
    )
    path = _save(fig, path, title, description, dpi)
    return {
        "path": str(path),
        "rows": [row.name for row in rows],
        "panels": [t.split("\n")[0] for t in rows[0].titles],
        "planes": planes,
        "centre_voxel_ras": {row.name: row.centre_voxel_ras for row in rows},
    }
