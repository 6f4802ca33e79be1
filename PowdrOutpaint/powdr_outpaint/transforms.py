"""Between the normalised image and what the diffusion model sees.

The model grid image y lies in [-1, 1]. Its wavelet subbands are the diffusion
target, with the LLL band divided by ``lll_scale`` (the orthonormal LLL band spans
2*sqrt(2) times the image range, so dividing by 3 brings every band near [-1, 1]).
The condition is the wavelet transform of the lesion-only image: the [0, 1]
intensity inside the lesion and 0 elsewhere, so "no information" is 0.
"""

from __future__ import annotations

import torch

from .wavelets import dwt3d, idwt3d


def image_to_wavelet(image: torch.Tensor, lll_scale: float) -> torch.Tensor:
    """(B, 1, X, Y, Z) image -> (B, 8, X/2, Y/2, Z/2) scaled subbands."""
    coefficients = dwt3d(image)
    return torch.cat([coefficients[:, :1] / lll_scale, coefficients[:, 1:]], dim=1)


def wavelet_to_image(coefficients: torch.Tensor, lll_scale: float) -> torch.Tensor:
    """Inverse of :func:`image_to_wavelet`."""
    return idwt3d(torch.cat([coefficients[:, :1] * lll_scale, coefficients[:, 1:]], dim=1))


def condition_image(image: torch.Tensor, lesion: torch.Tensor) -> torch.Tensor:
    """The lesion-only image in [0, 1]: ((y + 1) / 2) * mask, shapes (B, 1, X, Y, Z)."""
    return (image + 1.0) * 0.5 * lesion.to(image.dtype)


def make_condition(image: torch.Tensor, lesion: torch.Tensor, lll_scale: float) -> torch.Tensor:
    """Condition subbands c = DWT(y * mask): (B, 1, X, Y, Z) -> (B, 8, X/2, Y/2, Z/2)."""
    return image_to_wavelet(condition_image(image, lesion), lll_scale)


def clip_in_image_space(x0: torch.Tensor, lll_scale: float) -> torch.Tensor:
    """Clamp a predicted x0 to the valid image range [-1, 1] and return its subbands."""
    return image_to_wavelet(wavelet_to_image(x0, lll_scale).clamp_(-1.0, 1.0), lll_scale)
