"""The second stage of a cascade: detail on a finer grid, block by block.

A first ("outpaint") stage makes the anatomy on a coarse grid, where a whole brain fits a
CPU's budget. The refine stage works on a grid twice as fine. It sees, besides the noisy
subbands and the kept lesion, the first stage's image on its own wavelet grid (the grid of
its LLL band, one voxel per 2x2x2 block of fine voxels), and it was trained on blocks of
``config.grid.patch`` voxels. It therefore runs on overlapping blocks of exactly that size:
every block's x0 prediction is blended with tent weights into one prediction for the whole
grid, and the sampler steps the whole grid at once, so blocks cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..imaging.preprocess import Prepared
from ..imaging.resample import resample
from ..model.samplers import Sampler
from ..model.transforms import SUBBANDS, Scale, image_to_wavelet, wavelet_to_image


def block_starts(size: int, block: int, min_overlap: int) -> list[int]:
    """Start indices of blocks of ``block`` voxels covering ``size`` with at least ``min_overlap``."""
    if size <= block:
        return [0]
    count = math.ceil((size - block) / max(1, block - min_overlap)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - block, count)})


def tent(block: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Separable blending weights of a block: highest in its middle, small but positive at its faces."""
    weight = torch.ones(block, device=device)
    for axis, size in enumerate(block):
        ramp = torch.minimum(torch.arange(size, device=device) + 1.0, size - torch.arange(size, device=device).float())
        shape = [1, 1, 1]
        shape[axis] = size
        weight = weight * ramp.view(shape)
    return weight


def denoise_in_blocks(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    condition: torch.Tensor,
    sampler: Sampler,
    generators: list[torch.Generator],
    scale: Scale,
    block: tuple[int, int, int],
    on_step: Callable[[int], None] | None = None,
    blocks_per_call: int = 4,
) -> torch.Tensor:
    """The reverse process of a patch-trained network on a grid larger than its patch.

    Args:
        forward: network call (x (N, C, ...), t (N,)) -> x0 (N, 8, ...).
        condition: (B, 9, X, Y, Z) on the wavelet grid: lesion subbands and the first stage.
        block: the block on the wavelet grid (half the training patch).
    Returns:
        (B, 1, 2X, 2Y, 2Z) images in [-1, 1].
    """
    device = condition.device
    spatial = tuple(condition.shape[2:])
    starts = [block_starts(s, b, b // 2) for s, b in zip(spatial, block)]
    corners = [(i, j, k) for i in starts[0] for j in starts[1] for k in starts[2]]
    weight = tent(block, device)
    total = torch.zeros(spatial, device=device)
    for i, j, k in corners:
        total[i : i + block[0], j : j + block[1], k : k + block[2]] += weight

    def blockwise(inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network on every block of ``inputs`` (B, 17, X, Y, Z), blended into one x0."""
        out = torch.zeros((inputs.shape[0], SUBBANDS, *spatial), device=device, dtype=inputs.dtype)
        windows = [
            (b, (slice(i, i + block[0]), slice(j, j + block[1]), slice(k, k + block[2])))
            for b in range(inputs.shape[0])
            for i, j, k in corners
        ]
        for first in range(0, len(windows), blocks_per_call):
            chunk = windows[first : first + blocks_per_call]
            batch = torch.stack([inputs[b][(slice(None), *where)] for b, where in chunk])
            predicted = forward(batch, torch.stack([t[b] for b, _ in chunk]))
            for (b, where), value in zip(chunk, predicted):
                out[b][(slice(None), *where)] += value * weight
        return out / total

    # The chain itself is the one-pass chain; only the x0 prediction is block-wise. (Imported
    # here: outpaint imports this module.)
    from .outpaint import denoise

    return denoise(blockwise, condition, sampler, generators, scale, on_step)


def coarse_on_fine(coarse_image: np.ndarray, coarse: Prepared, fine: Prepared) -> np.ndarray:
    """A first-stage image (coarse model grid, [-1, 1]) on the refine stage's wavelet grid.

    The wavelet grid has one voxel at the centre of every 2x2x2 block of the fine grid, so
    its affine is the fine one with twice the spacing, shifted by half a fine voxel.
    """
    fine_affine = fine.model_affine
    wavelet_affine = fine_affine.copy()
    wavelet_affine[:3, :3] = fine_affine[:3, :3] * 2.0
    wavelet_affine[:3, 3] = fine_affine[:3, 3] + 0.5 * fine_affine[:3, :3].sum(axis=1)
    shape = tuple(s // 2 for s in fine.model_image.shape)
    to_coarse = np.linalg.solve(coarse.model_affine, wavelet_affine)
    return resample(coarse_image.astype(np.float32), to_coarse, shape, order=1, cval=-1.0).astype(np.float32)


def octave_finer_affine(coarse_affine: np.ndarray) -> np.ndarray:
    """The voxel -> RAS affine of a grid one octave finer whose wavelet grid is ``coarse_affine``'s.

    The inverse of the placement in :func:`coarse_on_fine`: half the spacing, shifted back by
    half a fine voxel, so the coarse stage's image reaches the finer stage with no interpolation
    (grids planned on their own snap to the input's voxels and differ by up to a millimetre).
    """
    fine = coarse_affine.copy()
    fine[:3, :3] = coarse_affine[:3, :3] / 2.0
    fine[:3, 3] = coarse_affine[:3, 3] - 0.5 * fine[:3, :3].sum(axis=1)
    return fine


#: A first-stage value at or below this (model range [-1, 1]) is background: nothing there.
BACKGROUND_LEVEL = -0.99


#: Where the whole-range network's x0 falls from this level to BACKGROUND_LEVEL, the expert's
#: steps blend from its drawing into the whole-range network's air (model range [-1, 1]).
#: Brain tissue lies above it (0.35 % and 0.01 % of the voxels 7 mm inside the brain of the
#: held-out BraTS T1 cases on the 3.6 mm grid lie below); the ramp's gentle slope keeps a
#: rounding of the whole-range network from moving the result much more than itself.
OUTLINE_BLEND_FROM = -0.8


def keep_main_background(main_x0: torch.Tensor, expert_x0: torch.Tensor, scale: Scale) -> torch.Tensor:
    """The expert's x0 inside the head, the whole-range network's outside it.

    Both (B, 8 S, X, Y, Z) subbands. The whole-range network has placed the outline of the head
    long before the expert's steps and leaves clean air around it; the expert only adds detail
    and is not asked to redraw the outline. Every voxel (image space, model grid) where the
    whole-range prediction is background (at or below BACKGROUND_LEVEL) keeps that prediction;
    between that and OUTLINE_BLEND_FROM the two blend linearly, so the edge has no seam and a
    rounding of either network moves the result by as little.
    """
    main_image = wavelet_to_image(main_x0, scale)
    air = ((OUTLINE_BLEND_FROM - main_image) / (OUTLINE_BLEND_FROM - BACKGROUND_LEVEL)).clamp_(0.0, 1.0)
    # A correction where there is air only, so the expert's subbands stay untouched to the last
    # bit wherever the whole-range network sees the head.
    correction = air * (main_image - wavelet_to_image(expert_x0, scale))
    return expert_x0 + image_to_wavelet(correction, scale)


def keep_first_stage_background(refined: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The refined image (fine grid) with background wherever the first stage put background.

    The first stage decides where the anatomy is; the refine stage adds detail to it and is
    not asked to redraw the outline: every 2x2x2 block of fine voxels whose first-stage value
    (``first``, on the wavelet grid) is background becomes background (-1).
    """
    empty = first <= BACKGROUND_LEVEL
    empty_fine = np.repeat(np.repeat(np.repeat(empty, 2, axis=0), 2, axis=1), 2, axis=2)
    return np.where(empty_fine, np.float32(-1.0), refined).astype(np.float32)
