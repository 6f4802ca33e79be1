"""Random lesion-shaped masks for training strategy B, and spherical dilation.

A random mask is a single 6-connected blob of (almost exactly) a requested number
of voxels, grown inside a foreground mask from a seed voxel. Growth follows a
priority flood: the voxel added next is always the lowest-priority voxel that
touches the blob through a face, so the blob stays one 6-connected component by
construction. The priority is an ellipsoidal distance from the seed (random axes
and orientation) plus smooth random noise, which gives compact, irregular shapes
rather than cubes or fractals. Everything random comes from one seed, so the same
seed on the same foreground always gives the same mask.

All arrays are (X, Y, Z) voxel grids; volumes are voxel counts.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from scipy import ndimage

from .resample import resample

# Face neighbours: the 6-connectivity used for labelling and growth.
SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)
# Amplitude of the smooth noise relative to the ellipsoid radius: large enough to
# make the outline irregular, small enough to keep the blob compact.
NOISE_AMPLITUDE = 0.35
# Random Fourier components that make up the smooth noise.
NOISE_COMPONENTS = 8
# Largest ratio between the ellipsoid's longest and shortest axis.
MAX_ELONGATION = 2.0


def ball(radius: int) -> np.ndarray:
    """Spherical structuring element: voxels with i^2 + j^2 + k^2 <= radius^2, (2r+1)^3 bool."""
    if radius < 0:
        raise ValueError("the dilation radius must be >= 0")
    r = int(radius)
    grid = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (grid**2).sum(axis=0) <= r * r


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a boolean mask by a ball of ``radius`` voxels (radius 0 returns a copy).

    Uses a Euclidean distance transform, which equals dilation by :func:`ball` and
    costs the same whatever the radius.
    """
    mask = np.asarray(mask, dtype=bool)
    if radius < 0:
        raise ValueError("the dilation radius must be >= 0")
    if radius == 0 or not mask.any():
        return mask.copy()
    r = int(radius)
    # Only the bounding box grown by r can change, which keeps large grids cheap.
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - r, 0)
    hi = np.minimum(idx.max(axis=0) + r + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    distance = ndimage.distance_transform_edt(~mask[box])
    out = np.zeros_like(mask)
    out[box] = distance <= r
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (empty in, empty out)."""
    labels, count = ndimage.label(mask, structure=SIX_CONNECTED)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def foreground_depth(foreground: np.ndarray) -> np.ndarray:
    """Distance in voxels from each foreground voxel to the background, clipped to 255 (uint8).

    Used to place random masks away from the edge of the anatomy; computed once per case.
    """
    foreground = np.asarray(foreground, dtype=bool)
    if not foreground.any():
        return np.zeros(foreground.shape, dtype=np.uint8)
    padded = np.pad(foreground, 1)
    depth = ndimage.distance_transform_edt(padded)[1:-1, 1:-1, 1:-1]
    return np.clip(np.floor(depth), 0, 255).astype(np.uint8)


def equivalent_radius(voxels: int) -> float:
    """Radius (voxels) of the sphere holding ``voxels`` voxels."""
    return (3.0 * max(voxels, 1) / (4.0 * math.pi)) ** (1.0 / 3.0)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _priority(
    shape: tuple[int, int, int],
    centre: np.ndarray,
    radius: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Growth priority on a box of ``shape`` around ``centre`` (box coordinates), float32.

    Ellipsoidal distance from the centre in units of ``radius`` plus smooth noise.
    Built from broadcast 1-D axes, so no (X, Y, Z, 3) coordinate array is needed.
    """
    # Axis lengths with product 1 (volume-preserving), at most MAX_ELONGATION apart.
    log_axes = rng.uniform(0.0, math.log(MAX_ELONGATION), size=3)
    axes = np.exp(log_axes - log_axes.mean())
    rotation = _random_rotation(rng)
    # Quadratic form of the ellipsoid in box coordinates: d^2 = o^T Q o.
    quadratic = rotation @ np.diag(1.0 / axes**2) @ rotation.T / radius**2
    o = [
        (np.arange(s, dtype=np.float32) - np.float32(c)).reshape([-1 if i == k else 1 for i in range(3)])
        for k, (s, c) in enumerate(zip(shape, centre))
    ]
    squared = np.zeros(shape, dtype=np.float32)
    for i in range(3):
        for j in range(i, 3):
            weight = np.float32(quadratic[i, j] * (1.0 if i == j else 2.0))
            squared += weight * (o[i] * o[j])
    priority = np.sqrt(np.maximum(squared, 0.0))
    # Smooth noise: a sum of random plane waves with wavelengths around the blob's size.
    # cos(k.o + phase) is the real part of a product of three 1-D complex exponentials.
    scale = np.float32(NOISE_AMPLITUDE * math.sqrt(2.0 / NOISE_COMPONENTS))
    for _ in range(NOISE_COMPONENTS):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        wavevector = direction * rng.uniform(0.5, 2.0) * math.pi / radius
        phase = rng.uniform(0.0, 2.0 * math.pi)
        factors = [np.exp(1j * (wavevector[k] * o[k])).astype(np.complex64) for k in range(3)]
        factors[0] = factors[0] * np.complex64(np.exp(1j * phase))
        priority += scale * ((factors[0] * factors[1]) * factors[2]).real
    return priority


def _grow(allowed: np.ndarray, priority: np.ndarray, seed: tuple[int, int, int], target: int) -> np.ndarray:
    """Priority flood from ``seed`` inside ``allowed`` until ``target`` voxels (or no more).

    Every voxel joins through a face of a voxel already in the blob, so the result is
    one 6-connected component. Ties are broken by voxel index, so growth is deterministic.
    """
    # A one-voxel border of forbidden voxels means neighbour indices never wrap around.
    allowed = np.pad(allowed, 1)
    priority = np.pad(priority, 1)
    sx, sy, sz = allowed.shape
    strides = (sy * sz, sz, 1)
    neighbours = (strides[0], -strides[0], strides[1], -strides[1], 1, -1)
    free = bytearray(allowed.ravel().astype(np.uint8).tobytes())
    values = priority.ravel().tolist()
    start = ((seed[0] + 1) * sy + seed[1] + 1) * sz + seed[2] + 1
    free[start] = 0
    heap = [(values[start], start)]
    chosen: list[int] = []
    while heap and len(chosen) < target:
        _, index = heapq.heappop(heap)
        chosen.append(index)
        for step in neighbours:
            other = index + step
            if free[other]:
                free[other] = 0
                heapq.heappush(heap, (values[other], other))
    blob = np.zeros(allowed.size, dtype=bool)
    blob[np.asarray(chosen, dtype=np.int64)] = True
    return blob.reshape(allowed.shape)[1:-1, 1:-1, 1:-1]


def random_mask(
    foreground: np.ndarray,
    target_voxels: int,
    seed: int | np.random.Generator,
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """A random 6-connected blob of ``target_voxels`` voxels inside ``foreground``.

    Args:
        foreground: (X, Y, Z) bool, where the blob may lie (the anatomy).
        target_voxels: requested volume in voxels (>= 1).
        seed: an integer seed or a NumPy generator; the same seed gives the same mask.
        depth: optional :func:`foreground_depth` of ``foreground`` (saves recomputing it).

    Returns:
        (X, Y, Z) bool mask: one 6-connected component, inside ``foreground``, with
        exactly ``target_voxels`` voxels.

    Raises:
        ValueError: if the largest foreground component is smaller than the target.
    """
    foreground = np.asarray(foreground, dtype=bool)
    if foreground.ndim != 3:
        raise ValueError(f"the foreground must be a 3-D mask; got shape {foreground.shape}")
    target = int(target_voxels)
    if target < 1:
        raise ValueError("the target volume must be at least one voxel")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if depth is None:
        depth = foreground_depth(foreground)
    radius = equivalent_radius(target)
    # Grow within a box a few radii wide, which keeps large grids cheap.
    half = int(math.ceil(2.5 * radius)) + 2

    seed_voxel = _pick_seed(depth, radius, rng)
    blob, box = _grow_in_box(foreground, seed_voxel, half, target, rng)
    if int(blob.sum()) < target:
        # The anatomy near the seed is too thin or too small: start again in the
        # largest component and allow the whole grid.
        region = largest_component(foreground)
        if int(region.sum()) < target:
            raise ValueError(
                f"the largest foreground component holds {int(region.sum())} voxels, "
                f"fewer than the requested {target}"
            )
        seed_voxel = _pick_seed(np.where(region, depth, 0).astype(np.uint8), radius, rng)
        blob, box = _grow_in_box(region, seed_voxel, max(foreground.shape), target, rng)
    mask = np.zeros(foreground.shape, dtype=bool)
    mask[box] = blob
    return mask


def _pick_seed(depth: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """A random voxel at least ``radius`` deep in the anatomy (or as deep as there is)."""
    wanted = max(min(int(math.ceil(radius)), int(depth.max())), 1)
    candidates = np.flatnonzero(depth.ravel() >= wanted)
    if candidates.size == 0:
        raise ValueError("the foreground is empty")
    return np.array(np.unravel_index(candidates[rng.integers(candidates.size)], depth.shape))


def _grow_in_box(
    allowed: np.ndarray,
    seed_voxel: np.ndarray,
    half: int,
    target: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Grow a blob in the box of half-width ``half`` around the seed; returns (blob, box)."""
    lo = np.maximum(seed_voxel - half, 0)
    hi = np.minimum(seed_voxel + half + 1, allowed.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    inside = allowed[box]
    priority = _priority(inside.shape, seed_voxel - lo, equivalent_radius(target), rng)
    blob = _grow(inside, priority, tuple(int(v) for v in seed_voxel - lo), target)
    return blob, box


def model_foreground(data: np.ndarray, model_to_input: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """The anatomy on the model grid, (X, Y, Z) bool like ``lesion``.

    Input voxels above the background value, resampled (nearest) onto the model grid,
    holes filled, lesion included, largest 6-connected component kept.
    """
    above = (data > data.min()).astype(np.uint8)
    foreground = resample(above, model_to_input, lesion.shape, order=0, cval=0) > 0
    foreground = ndimage.binary_fill_holes(foreground | lesion)
    return largest_component(foreground)
