"""Orthonormal 3-D Haar wavelet transform and its exact inverse.

The transform works on tensors of shape (B, C, X, Y, Z) with even X, Y and Z and
returns (B, 8 * C, X / 2, Y / 2, Z / 2). Subbands are stored band-major
(channel ``band * C + c``) in the order LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH,
where the first letter refers to the first spatial axis (X). Each 1-D step maps a
pair (a, b) to ((a + b) / sqrt(2), (a - b) / sqrt(2)), which is the convention of
``pywt.dwtn(x, "haar")``; the transform is orthonormal, so it preserves energy and
its inverse is its transpose.

Only reshapes, additions and one scaling are used, so the inverse reproduces the
input to float32 round-off and any even shape works (depth larger than width
included).
"""

from __future__ import annotations

import math

import torch

SUBBANDS: tuple[str, ...] = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _check_even(shape: torch.Size) -> None:
    spatial = tuple(shape[-3:])
    if any(s % 2 for s in spatial):
        raise ValueError(
            f"The Haar transform needs even sizes along every spatial axis; got {spatial}."
        )


def _analyse(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
    a, b = pairs.unbind(dim + 1)
    return (a + b) * _INV_SQRT2, (a - b) * _INV_SQRT2


def _synthesise(low: torch.Tensor, high: torch.Tensor, dim: int) -> torch.Tensor:
    a = (low + high) * _INV_SQRT2
    b = (low - high) * _INV_SQRT2
    return torch.stack((a, b), dim=dim + 1).flatten(dim, dim + 1)


def dwt3d(x: torch.Tensor) -> torch.Tensor:
    """One level of the 3-D Haar DWT.

    Args:
        x: (B, C, X, Y, Z) tensor, X, Y, Z even.

    Returns:
        (B, 8 * C, X/2, Y/2, Z/2) tensor of subbands, band-major, order ``SUBBANDS``.
    """
    if x.dim() != 5:
        raise ValueError(f"dwt3d expects a (B, C, X, Y, Z) tensor; got shape {tuple(x.shape)}.")
    _check_even(x.shape)
    bands = [x]
    for dim in (2, 3, 4):
        bands = [half for band in bands for half in _analyse(band, dim)]
    return torch.cat(bands, dim=1)


def idwt3d(coefficients: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`dwt3d`.

    Args:
        coefficients: (B, 8 * C, X/2, Y/2, Z/2) tensor, band-major.

    Returns:
        (B, C, X, Y, Z) tensor.
    """
    if coefficients.dim() != 5 or coefficients.shape[1] % 8:
        raise ValueError(
            "idwt3d expects a (B, 8 * C, X, Y, Z) tensor; "
            f"got shape {tuple(coefficients.shape)}."
        )
    bands = list(coefficients.chunk(8, dim=1))
    for dim in (4, 3, 2):
        bands = [_synthesise(bands[i], bands[i + 1], dim) for i in range(0, len(bands), 2)]
    return bands[0]
