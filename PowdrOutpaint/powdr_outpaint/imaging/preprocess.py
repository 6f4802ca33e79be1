"""From a user's image and lesion mask to the model grid, and exactly back.

The model grid is axis-aligned in RAS, with the preset's shape and spacing. It is
placed over the image's foreground and shifted so the whole lesion lies inside it.
Image -> model uses one affine resampling (trilinear; nearest when the grids
coincide up to axis order, flips and whole-voxel shifts, which makes it exact) and
model -> image the inverse one, so every output is on the input's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import PowdrError
from ..model.checkpoint import ModelConfig
from .resample import is_grid_exact, resample
from .volume_io import Volume

# Model intensities below this fraction of the normalised range are the image background.
BACKGROUND_FRACTION = 0.01
# A connected patch of non-background model voxels none of which reaches this fraction is haze,
# not anatomy: the first stage sometimes leaves faint patches in the air (on held-out BraTS T1,
# one sample's patch spanned the whole field of view at a mean of 0.014), which would show as
# grey specks around a skull-stripped brain.
HAZE_PEAK_FRACTION = 0.05
# Inputs with at least this share of voxels exactly at their minimum have a clean background
# (skull-stripped, masked); only then is haze cleared, so that noisy air is left as drawn.
CLEAN_BACKGROUND_SHARE = 0.05


def parse_labels(text: str | None) -> tuple[int, ...] | None:
    """'1,2,4' -> (1, 2, 4); None or '' -> None (every label > 0)."""
    if text is None or not str(text).strip():
        return None
    try:
        labels = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise PowdrError(f"--labels must be comma-separated integers such as 1,2,4; got {text!r}") from None
    if not labels:
        return None
    return labels


def binarise(mask: np.ndarray, labels: tuple[int, ...] | None = None) -> np.ndarray:
    """Lesion mask (bool) from a label image: every label > 0, or only ``labels``."""
    if labels is None:
        return np.asarray(mask) > 0
    return np.isin(np.rint(mask).astype(np.int64), labels)


def lesion_on_image_grid(mask: Volume, image: Volume, labels: tuple[int, ...] | None) -> np.ndarray:
    """The binary lesion on the image's grid; other grids are resampled (nearest, physical space)."""
    lesion = binarise(mask.data, labels)
    if not lesion.any():
        which = f"labels {','.join(map(str, labels))}" if labels else "any voxel > 0"
        raise PowdrError(f"the lesion mask is empty: no voxel has {which}")
    same_grid = mask.data.shape == image.data.shape and np.allclose(mask.affine, image.affine, atol=1e-4)
    if same_grid:
        return lesion
    image_to_mask = np.linalg.solve(mask.affine, image.affine)
    resampled = resample(lesion.astype(np.uint8), image_to_mask, image.data.shape, order=0, cval=0) > 0
    if not resampled.any():
        raise PowdrError(
            "the lesion mask does not overlap the image in physical space "
            "(check that both files come from the same scan and keep their orientation)"
        )
    return resampled


def dilate_lesion(lesion: np.ndarray, spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """Grow a mask by a ball of ``radius_mm`` (physical distance, so anisotropic voxels are fine)."""
    if radius_mm <= 0:
        return lesion
    distance = ndimage.distance_transform_edt(~lesion, sampling=spacing)
    return distance <= radius_mm + 1e-6


@dataclass
class Prepared:
    """An image and lesion on the model grid, with what is needed to map outputs back.

    model_image: (X, Y, Z) float32 in [-1, 1]; model_lesion: (X, Y, Z) bool;
    model_affine: model voxel -> RAS mm; model_to_input: model voxel -> input voxel;
    low/high: the intensity percentiles mapped to -1/1; background: the input's
    background intensity.
    """

    image: Volume
    lesion: np.ndarray
    model_image: np.ndarray
    model_lesion: np.ndarray
    model_affine: np.ndarray
    model_to_input: np.ndarray
    low: float
    high: float
    background: float
    exact: bool


def check_image(image: Volume) -> None:
    data = image.data
    if data.dtype.kind not in "biuf":
        raise PowdrError(f"the image has an unsupported voxel type {data.dtype}")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        count = int(np.count_nonzero(~np.isfinite(data)))
        raise PowdrError(f"the image contains {count} NaN or infinite voxels; fix or mask them first")


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(mask)
    return idx.min(axis=0), idx.max(axis=0)


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])


def plan_model_grid(image: Volume, lesion: np.ndarray, config: ModelConfig) -> np.ndarray:
    """The model grid's voxel -> RAS affine: centred on the foreground, lesion inside."""
    shape = np.array(config.grid.shape, dtype=float)
    spacing = np.array(config.grid.spacing, dtype=float)
    data = image.data
    foreground = data > data.min()
    if not foreground.any():
        raise PowdrError("the image is constant: there is no anatomy to outpaint")
    lo, hi = _bounding_box(foreground)
    centre = image.affine @ np.append((lo + hi) / 2.0, 1.0)
    origin = centre[:3] - spacing * (shape - 1) / 2.0
    # Align model voxel centres with image voxel centres where possible, so that a grid
    # with the image's spacing needs no interpolation.
    index = np.linalg.solve(image.affine, np.append(origin, 1.0))
    origin = (image.affine @ np.append(np.rint(index[:3]), 1.0))[:3]

    lesion_world = (image.affine @ _box_corners(*_bounding_box(lesion)).T).T[:, :3]
    lesion_lo = (lesion_world.min(axis=0) - origin) / spacing
    lesion_hi = (lesion_world.max(axis=0) - origin) / spacing
    extent = lesion_hi - lesion_lo
    if np.any(extent > shape - 1):
        size_mm = extent * spacing
        fov_mm = (shape - 1) * spacing
        raise PowdrError(
            f"the lesion ({' x '.join(f'{v:.0f}' for v in size_mm)} mm) is larger than the model's "
            f"field of view ({' x '.join(f'{v:.0f}' for v in fov_mm)} mm)"
        )
    shift = np.zeros(3)
    shift = np.where(lesion_lo < 0, np.floor(lesion_lo), shift)
    shift = np.where(lesion_hi > shape - 1, np.ceil(lesion_hi - (shape - 1)), shift)
    origin = origin + shift * spacing
    affine = np.diag(np.append(spacing, 1.0))
    affine[:3, 3] = origin
    return affine


def normalise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Intensities -> model range [-1, 1] (low -> -1, high -> 1, clipped)."""
    return (2.0 * np.clip((values - low) / (high - low), 0.0, 1.0) - 1.0).astype(np.float32)


def denormalise(model: np.ndarray, low: float, high: float, background: float) -> np.ndarray:
    """Model range -> intensities; values the model renders as background get ``background``."""
    fraction = (np.asarray(model, dtype=np.float64) + 1.0) / 2.0
    values = low + fraction * (high - low)
    return np.where(fraction < BACKGROUND_FRACTION, background, values)


def clear_haze(model_image: np.ndarray) -> np.ndarray:
    """A model-grid image in [-1, 1] with its haze (see :data:`HAZE_PEAK_FRACTION`) set to -1."""
    fraction = (np.asarray(model_image, dtype=np.float64) + 1.0) / 2.0
    labels, count = ndimage.label(fraction >= BACKGROUND_FRACTION)
    if count == 0:
        return model_image
    peaks = ndimage.maximum(fraction, labels, index=np.arange(1, count + 1))
    haze = np.concatenate([[False], np.asarray(peaks) < HAZE_PEAK_FRACTION])[labels]
    return np.where(haze, -1.0, model_image).astype(model_image.dtype, copy=False)


def has_clean_background(data: np.ndarray) -> bool:
    """True if the image's air is exactly its minimum (skull-stripped or masked images)."""
    return bool(np.mean(data == data.min()) >= CLEAN_BACKGROUND_SHARE)


def prepare(
    image: Volume, lesion: np.ndarray, config: ModelConfig, model_affine: np.ndarray | None = None
) -> Prepared:
    """Map an image and its lesion (on the image grid) onto the model grid.

    ``model_affine`` places the model grid (another sequence of the same case, or a coarser
    stage of a cascade, was placed first); None plans it from this image and lesion.
    """
    check_image(image)
    data = image.data
    background = float(data.min())
    foreground = data[data > background]
    norm = config.normalisation
    low, high = (float(v) for v in np.percentile(foreground, [norm.lower_percentile, norm.upper_percentile]))
    if not high > low:
        raise PowdrError("the image has no intensity contrast in its foreground (percentiles coincide)")

    if model_affine is None:
        model_affine = plan_model_grid(image, lesion, config)
    model_to_input = np.linalg.solve(image.affine, model_affine)
    shape = config.grid.shape
    exact = is_grid_exact(model_to_input[:3, :3], model_to_input[:3, 3])
    model_values = resample(data.astype(np.float32), model_to_input, shape, order=1, cval=background)
    model_lesion = resample(lesion.astype(np.uint8), model_to_input, shape, order=0, cval=0) > 0
    if not model_lesion.any():
        raise PowdrError(
            "the lesion is smaller than one voxel of the model grid "
            f"({' x '.join(f'{s:g}' for s in config.grid.spacing)} mm) and would be lost"
        )
    return Prepared(
        image=image,
        lesion=lesion,
        model_image=normalise(model_values, low, high),
        model_lesion=model_lesion,
        model_affine=model_affine,
        model_to_input=model_to_input,
        low=low,
        high=high,
        background=background,
        exact=exact,
    )


#: Spline order taking a model-grid image to the input grid. Trilinear interpolation damps the
#: finest detail the model drew: on held-out BraTS T1 the original taken to the 1.8 mm grid and
#: back keeps a high-frequency ratio of 0.66 with order 1 and 0.80 with order 3
#: (Testing/Benchmarks/diagnose_cascade.py).
OUTPUT_ORDER = 3


def to_input_grid(model_image: np.ndarray, prepared: Prepared, order: int = OUTPUT_ORDER) -> np.ndarray:
    """A model-grid image in [-1, 1] -> the input's grid and intensity scale (float64).

    ``order``: 1 trilinear, 3 cubic B-splines. Cubic splines overshoot at edges, so their
    values are kept within the model image's range, and voxels whose every model-grid
    neighbour is background stay exactly background (as with trilinear interpolation).
    """
    values = denormalise(model_image, prepared.low, prepared.high, prepared.background)
    input_to_model = np.linalg.inv(prepared.model_to_input)
    shape = prepared.image.data.shape
    out = resample(values, input_to_model, shape, order=order, cval=prepared.background)
    if order <= 1 or prepared.exact:
        return out
    anatomy = resample((values != prepared.background).astype(np.float32), input_to_model, shape, order=1, cval=0.0)
    return np.where(anatomy > 0, np.clip(out, values.min(), values.max()), prepared.background)


#: The new tissue's level is matched to the input's at this percentile of the brain outside the
#: lesion: the bright end of healthy tissue (white matter on T1), unaffected by how much dark
#: CSF or background a sample's different anatomy puts inside the input's outline.
TISSUE_LEVEL_PERCENTILE = 90.0
#: A larger correction than this means the sample or the input is not a brain the model knows;
#: the factor is clamped rather than trusted.
TISSUE_SCALE_LIMITS = (2.0 / 3.0, 1.5)


def match_tissue_level(synthetic: np.ndarray, prepared: Prepared) -> tuple[np.ndarray, float]:
    """Scale a sample's new tissue so that its tissue level is the input's; returns (volume, factor).

    The model works in intensities normalised by the input's 1st-99th percentiles over the
    whole brain, lesion included, and never sees the healthy tissue it replaces, so it cannot
    know where that tissue lies in the normalised range: on the 12 shared BraTS T1 cases the
    median of the brain outside the lesion lies anywhere from 0.54 to 0.78 of it, and the model
    draws a typical level. One factor, applied about the background intensity (MR signal
    scales multiplicatively), puts the sample's :data:`TISSUE_LEVEL_PERCENTILE` of its own brain
    outside the lesion on the input's. Contrast between tissues, anatomy and the lesion stay as
    drawn. ``synthetic``: (X, Y, Z) on the input grid, as :func:`to_input_grid` returns it.
    """
    background = prepared.background
    data = prepared.image.data
    outside = ~prepared.lesion
    reference = data[(data > background) & outside]
    own = synthetic[(synthetic > background) & outside]
    if reference.size == 0 or own.size == 0:
        return synthetic, 1.0
    target = float(np.percentile(reference, TISSUE_LEVEL_PERCENTILE)) - background
    drawn = float(np.percentile(own, TISSUE_LEVEL_PERCENTILE)) - background
    if not (target > 0 and drawn > 0):
        return synthetic, 1.0
    factor = float(np.clip(target / drawn, *TISSUE_SCALE_LIMITS))
    scaled = np.where(outside, background + (synthetic - background) * factor, synthetic)
    return scaled, factor


def blend_weights(lesion: np.ndarray, spacing: np.ndarray, width_mm: float) -> np.ndarray:
    """Weight of the input image: 1 in the lesion, falling linearly to 0 over ``width_mm``."""
    if width_mm <= 0 or not lesion.any():
        return lesion.astype(np.float64)
    # The weights vanish beyond width_mm of the lesion, so the distance transform (seconds on a
    # whole 1 mm head) only needs the lesion's bounding box grown by that width: every lesion
    # voxel lies inside it, so distances within it are exact, and every voxel outside it is
    # farther than width_mm.
    margin = np.ceil(width_mm / np.asarray(spacing, dtype=np.float64)).astype(int) + 1
    box = ndimage.find_objects(lesion.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(box, margin, lesion.shape))
    weights = np.zeros(lesion.shape, dtype=np.float64)
    distance = ndimage.distance_transform_edt(~lesion[box], sampling=spacing)
    weights[box] = np.clip(1.0 - distance / width_mm, 0.0, 1.0)
    return weights


def preserve_lesion(synthetic: np.ndarray, prepared: Prepared, weights: np.ndarray) -> np.ndarray:
    """Lesion voxels copied from the input exactly; a soft seam around them."""
    original = prepared.image.data.astype(np.float64)
    blended = weights * original + (1.0 - weights) * synthetic
    return np.where(prepared.lesion, original, blended)
