"""Random anatomical variation of training cases: a smooth warp of image, lesion and brain.

With a dozen training brains a diffusion model learns to recall them: a sample snaps to the
training brain that best fits the kept lesion, and every seed gives that same brain (see
``Testing/Benchmarks/diagnose_diversity.py``). Warping each training item by its own random,
smooth, anatomically mild deformation -- a left-right mirror, a rotation of a few degrees,
a few per cent of scaling, a few millimetres of shift and of elastic displacement -- turns
each case into a continuum of plausible brains the network cannot memorise.

All arrays are on the model grid (X, Y, Z), axes in RAS order; X is left-right.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import ndimage

from ..imaging.masks import foreground_depth


@dataclass(frozen=True)
class WarpSettings:
    """How far a warp may go (each drawn uniformly up to these bounds)."""

    rotation_deg: float = 6.0  # about each axis
    scale: float = 0.06  # relative, per axis
    shift_mm: float = 4.0  # per axis
    elastic_mm: float = 3.0  # standard deviation of the displacement at the control points
    elastic_points: int = 4  # control points per axis of the elastic field
    mirror: bool = True  # left-right, with probability 1/2


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_warp(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    settings: WarpSettings = WarpSettings(),
) -> np.ndarray:
    """Source coordinates (3, X, Y, Z), in voxels, of every voxel of the warped volume.

    The warp is x -> c + A (x - c) + s + d(x) around the grid centre c, with A a mirror,
    rotation and scaling, s a shift and d a smooth elastic field (trilinear interpolation of
    Gaussian displacements at a coarse lattice of control points), all in millimetres
    converted to voxels of ``spacing``.
    """
    shape_a = np.asarray(shape)
    spacing_a = np.asarray(spacing, dtype=np.float64)
    angles = np.deg2rad(rng.uniform(-settings.rotation_deg, settings.rotation_deg, 3))
    scales = 1.0 + rng.uniform(-settings.scale, settings.scale, 3)
    mirror = np.array([-1.0 if settings.mirror and rng.random() < 0.5 else 1.0, 1.0, 1.0])
    # In millimetres: rotate and scale physical offsets, then back to voxels.
    matrix_mm = _rotation(angles) @ np.diag(scales * mirror)
    matrix = np.diag(1.0 / spacing_a) @ matrix_mm @ np.diag(spacing_a)
    shift = rng.uniform(-settings.shift_mm, settings.shift_mm, 3) / spacing_a
    centre = (shape_a - 1) / 2.0
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    offset = (grid - centre[:, None]).astype(np.float64)
    coords = (matrix @ offset + centre[:, None] + shift[:, None]).reshape(3, *shape).astype(np.float32)
    if settings.elastic_mm > 0 and settings.elastic_points >= 2:
        points = settings.elastic_points
        lattice = rng.normal(0.0, 1.0, (1, 3) + (points,) * 3) * (settings.elastic_mm / spacing_a)[None, :, None, None, None]
        # Trilinear interpolation between the control points (corners on the grid's corners).
        field = torch.nn.functional.interpolate(
            torch.from_numpy(lattice.astype(np.float32)), size=tuple(shape), mode="trilinear", align_corners=True
        )[0].numpy()
        coords += field
    return coords.astype(np.float32)


def warp(volume: np.ndarray, coords: np.ndarray, order: int, fill: float) -> np.ndarray:
    """``volume`` (X, Y, Z), or (S, X, Y, Z) sequences, sampled at ``coords`` (3, ...) (linear for
    images, nearest for masks)."""
    if volume.ndim == 4:
        return np.stack([warp(channel, coords, order, fill) for channel in volume])
    out = ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=fill, prefilter=False)
    return out.astype(volume.dtype, copy=False)


def warp_case(case, coords: np.ndarray):
    """A :class:`~powdr_outpaint.training.data.PreparedCase` warped by ``coords`` (image, lesion, brain, depth)."""
    image = warp(case.image.astype(np.float32), coords, 1, -1.0)
    lesion = warp(case.lesion.astype(np.uint8), coords, 0, 0) > 0
    foreground = warp(case.foreground.astype(np.uint8), coords, 0, 0) > 0
    return replace(
        case,
        image=image,
        lesion=lesion,
        foreground=foreground,
        depth=foreground_depth(foreground),
        lesion_voxels=int(lesion.sum()) if lesion.any() else case.lesion_voxels,
    )
