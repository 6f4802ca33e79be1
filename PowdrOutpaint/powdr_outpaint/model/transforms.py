"""Between the normalised image and what the diffusion model sees.

The model grid image y lies in [-1, 1]. Its wavelet subbands are the diffusion
target, with the LLL band divided by ``lll`` (the orthonormal LLL band spans
2*sqrt(2) times the image range, so dividing by 3 brings every band near [-1, 1])
and the seven detail bands multiplied by ``detail`` (1 in the paper). The noise
is the same in every band, so a band is drawn at the timesteps where its signal
rises out of the noise. On the demo grid (RMS of the scaled low-pass band 0.88, of
the detail bands 0.13, BraTS T1) with the linear 1000-step schedule, the low-pass
band's signal-to-noise ratio climbs from 0.1 to 10 between t = 461 and 82, the
detail bands' (``detail`` 1) only between t = 120 and 9; ``detail`` 4 moves them to
t = 357..47, so they are drawn on more steps and together with the layout.
The condition is the wavelet transform of the lesion-only image: the [0, 1]
intensity inside the lesion and 0 elsewhere, so "no information" is 0.

A model of S sequences sees S image channels; their subbands are band-major
(the S LLL bands first, then the S LLH bands, ...), as :func:`wavelets.dwt3d`
lays them out, so the first S channels are the scaled LLL bands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from .wavelets import dwt3d, idwt3d

#: Subbands of the 3-D Haar transform: what the network denoises and predicts.
SUBBANDS = 8


@dataclass(frozen=True)
class SubbandScale:
    """What the diffusion sees of the orthonormal subbands: LLL / ``lll``, the others * ``detail``."""

    lll: float = 3.0
    detail: float = 1.0


#: A plain number is an LLL divisor with unscaled detail bands (every model before detail scaling).
Scale = Union[SubbandScale, float]


def subband_scale(scale: Scale) -> SubbandScale:
    """``scale`` as a :class:`SubbandScale`."""
    return scale if isinstance(scale, SubbandScale) else SubbandScale(lll=float(scale))


def image_to_wavelet(image: torch.Tensor, scale: Scale) -> torch.Tensor:
    """(B, S, X, Y, Z) image of S sequences -> (B, 8 S, X/2, Y/2, Z/2) scaled subbands."""
    scale = subband_scale(scale)
    coefficients = dwt3d(image)
    count = image.shape[1]
    detail = coefficients[:, count:] if scale.detail == 1.0 else coefficients[:, count:] * scale.detail
    return torch.cat([coefficients[:, :count] / scale.lll, detail], dim=1)


def wavelet_to_image(coefficients: torch.Tensor, scale: Scale) -> torch.Tensor:
    """Inverse of :func:`image_to_wavelet`: (B, 8 S, X, Y, Z) -> (B, S, 2X, 2Y, 2Z)."""
    scale = subband_scale(scale)
    count = coefficients.shape[1] // SUBBANDS
    detail = coefficients[:, count:] if scale.detail == 1.0 else coefficients[:, count:] / scale.detail
    return idwt3d(torch.cat([coefficients[:, :count] * scale.lll, detail], dim=1))


def condition_image(image: torch.Tensor, lesion: torch.Tensor) -> torch.Tensor:
    """The lesion-only image in [0, 1]: ((y + 1) / 2) * mask; (B, S, X, Y, Z) and (B, 1, X, Y, Z)."""
    return (image + 1.0) * 0.5 * lesion.to(image.dtype)


def make_condition(
    image: torch.Tensor, lesion: torch.Tensor, scale: Scale, brain: torch.Tensor | None = None
) -> torch.Tensor:
    """Condition subbands c = DWT(y * mask): (B, S, X, Y, Z) -> (B, 8 S, X/2, Y/2, Z/2).

    With ``brain`` (B, 1, X, Y, Z), for a first stage trained with the outline, the outline
    (:func:`outline_of`) follows as one more channel: (B, 8 S + 1, X/2, Y/2, Z/2).
    """
    condition = image_to_wavelet(condition_image(image, lesion), scale)
    if brain is None:
        return condition
    return torch.cat([condition, outline_of(brain.to(condition.device))], dim=1)


def clip_in_image_space(x0: torch.Tensor, scale: Scale) -> torch.Tensor:
    """Clamp a predicted x0 to the valid image range [-1, 1] and return its subbands."""
    return image_to_wavelet(wavelet_to_image(x0, scale).clamp_(-1.0, 1.0), scale)


#: A first stage trained with the outline sees it as one more channel on the wavelet grid.
OUTLINE_CHANNELS = 1


def outline_of(foreground: torch.Tensor) -> torch.Tensor:
    """The brain's outline as a condition: (B, 1, X, Y, Z) bool -> (B, 1, X/2, Y/2, Z/2) in [-1, 1].

    Each value is the share of its 2x2x2 block inside the brain, mapped to [-1, 1] like an image,
    so the outline is placed to half a wavelet voxel.
    """
    return torch.nn.functional.avg_pool3d(foreground.float() * 2.0 - 1.0, 2)


# ------------------------------------------------------------------ cascade (refine stage)

#: The first stage's image enters the second stage as one channel on the wavelet grid.
COARSE_CHANNELS = 1


def coarse_of(image: torch.Tensor) -> torch.Tensor:
    """The image at half resolution: (B, 1, X, Y, Z) -> (B, 1, X/2, Y/2, Z/2) block means.

    This is what a first stage on a grid twice as coarse provides; it is the Haar LLL band
    divided by 2 * sqrt(2), so it lies in [-1, 1] like the image.
    """
    return torch.nn.functional.avg_pool3d(image, 2)


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (1, 1, X, Y, Z) with ``sigma`` voxels (edges replicated)."""
    if sigma <= 0:
        return volume
    kernel = _gaussian_kernel(sigma, volume.device)
    radius = (kernel.numel() - 1) // 2
    out = volume
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = torch.nn.functional.conv3d(torch.nn.functional.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out


#: The refine stage's default conditioning augmentation (``train --coarse-blur/--coarse-noise``):
#: the largest Gaussian blur, in coarse voxels, and the largest noise std, in model intensities.
COARSE_BLUR = 1.0
COARSE_NOISE = 0.03


def degrade_coarse(
    coarse: torch.Tensor, generator: torch.Generator, max_blur: float = COARSE_BLUR, max_noise: float = COARSE_NOISE
) -> torch.Tensor:
    """A true half-resolution image made as imperfect as a first stage's output.

    Each batch element gets a Gaussian blur of U(0, max_blur) coarse voxels and Gaussian
    noise of std U(0, max_noise), so the second stage learns to trust the first stage's
    layout without copying its blur (noise-conditioning augmentation of cascaded diffusion).
    """
    out = []
    for index in range(coarse.shape[0]):
        draws = torch.rand(2, generator=generator, device=coarse.device)
        blurred = blur(coarse[index : index + 1], float(draws[0]) * max_blur)
        noise = torch.randn(blurred.shape, generator=generator, device=coarse.device)
        out.append(blurred + float(draws[1]) * max_noise * noise)
    return torch.cat(out).clamp_(-1.0, 1.0)
