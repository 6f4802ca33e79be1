"""Training previews: three orthogonal slices of condition, sample and original as one PNG.

Rows are condition (the lesion-only image the model is given), sample (what the
current EMA model outpaints) and original; columns are axial, coronal and sagittal
slices through the lesion's centre. Volumes are (X, Y, Z) on the model grid in RAS,
so every slice is shown with anterior or superior at the top.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..imaging.atomic import atomic_target

ROWS = ("condition", "sample", "original")
COLUMNS = ("axial", "coronal", "sagittal")
# Panels are enlarged (nearest neighbour) to at least this many pixels on their long side.
MIN_PANEL_PIXELS = 160
LABEL_WIDTH = 80
TITLE_HEIGHT = 22


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices (rows top to bottom) through ``centre``."""
    x, y, z = centre
    axial = volume[:, :, z].T[::-1]  # rows: anterior at the top; columns: left to right in x
    coronal = volume[:, y, :].T[::-1]  # superior at the top
    sagittal = volume[x, :, :].T[::-1]  # superior at the top, posterior to anterior
    return [axial, coronal, sagittal]


def _to_pixels(values: np.ndarray, low: float, high: float, scale: int) -> Image.Image:
    grey = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
    image = Image.fromarray(np.ascontiguousarray(grey.astype(np.uint8)))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def render_preview(
    condition: np.ndarray,
    sample: np.ndarray,
    original: np.ndarray,
    lesion: np.ndarray,
    title: str = "",
) -> Image.Image:
    """Compose the 3 x 3 preview.

    Args:
        condition: (X, Y, Z) lesion-only image in [0, 1].
        sample, original: (X, Y, Z) images in [-1, 1].
        lesion: (X, Y, Z) bool; the slices pass through its centre (the volume's centre if empty).
        title: text written above the panels.
    """
    if lesion.any():
        centre = tuple(int(round(c)) for c in np.argwhere(lesion).mean(axis=0))
    else:
        centre = tuple(s // 2 for s in lesion.shape)
    scale = max(1, -(-MIN_PANEL_PIXELS // max(lesion.shape)))
    rows = [
        [_to_pixels(s, 0.0, 1.0, scale) for s in _slices(condition, centre)],
        [_to_pixels(s, -1.0, 1.0, scale) for s in _slices(sample, centre)],
        [_to_pixels(s, -1.0, 1.0, scale) for s in _slices(original, centre)],
    ]
    widths = [max(row[c].width for row in rows) for c in range(len(COLUMNS))]
    heights = [max(panel.height for panel in row) for row in rows]
    gap = 4
    canvas = Image.new(
        "L",
        (LABEL_WIDTH + sum(widths) + gap * len(widths), TITLE_HEIGHT + 14 + sum(heights) + gap * len(heights)),
        color=0,
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=255)
    x = LABEL_WIDTH
    for name, width in zip(COLUMNS, widths):
        draw.text((x + 2, TITLE_HEIGHT), name, fill=200)
        x += width + gap
    y = TITLE_HEIGHT + 14
    for label, row, height in zip(ROWS, rows, heights):
        draw.text((4, y + height // 2 - 6), label, fill=200)
        x = LABEL_WIDTH
        for panel, width in zip(row, widths):
            canvas.paste(panel, (x, y))
            x += width + gap
        y += height + gap
    return canvas


def save_preview(path: str | os.PathLike, image: Image.Image) -> Path:
    """Write a PNG atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_target(path, suffix=".part.png") as temporary:
        image.save(temporary, format="PNG")
    return path
