"""Voxel-wise mean and standard deviation accumulated one volume at a time."""

from __future__ import annotations

import numpy as np


class RunningStats:
    """Welford's algorithm in float64: memory is two volumes, whatever the number of samples.

    Identical inputs at a voxel give a standard deviation of exactly 0 there.
    """

    def __init__(self, shape: tuple[int, ...]):
        self.count = 0
        self.mean = np.zeros(shape, dtype=np.float64)
        self._m2 = np.zeros(shape, dtype=np.float64)

    def add(self, volume: np.ndarray) -> None:
        if volume.shape != self.mean.shape:
            raise ValueError(f"volume shape {volume.shape} differs from {self.mean.shape}")
        self.count += 1
        delta = volume - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (volume - self.mean)

    def std(self, ddof: int = 0) -> np.ndarray:
        """Population standard deviation (ddof=0) by default."""
        if self.count - ddof <= 0:
            return np.zeros_like(self.mean)
        return np.sqrt(np.maximum(self._m2, 0.0) / (self.count - ddof))
