"""The training stream: which case, which mask and which item numbers each iteration uses.

The stream is endless: item ``k`` is case ``order(k // N)[k % N]`` of the N training
cases, where every epoch has its own random order, and it has its own random mask
choices. Everything random about item ``k`` is derived from the run's seed and ``k``,
so an item is the same whichever process, loader worker or resumed run produces it.
Process ``r`` of ``W`` takes items ``(s * W + r) * B`` to ``(s * W + r + 1) * B - 1``
at iteration ``s``, so processes never share an item.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import CaseStore, PreparedCase
from .masks import dilate, random_mask

# Purposes of the derived random streams (any distinct constants).
STREAM_ORDER, STREAM_ITEM, STREAM_NOISE, STREAM_DROPOUT = 11, 23, 37, 41


def stream_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, step, rank, purpose, ...)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts] + [len(parts)])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


class MaskSettings(Protocol):
    """The run settings the stream needs (see ``train.RunSettings``)."""

    seed: int
    condition: str
    p_random: float
    dilate: int


class TrainingItems(Dataset):
    """Item ``k`` of the endless training stream: (image, mask), each (1, X, Y, Z) float32.

    The stream visits the cases epoch by epoch, each epoch in its own random order;
    item ``k`` is case ``order(k // N)[k % N]`` with its own random choices, so it is
    the same whichever process, worker or resumed run produces it.
    """

    def __init__(self, store: CaseStore, settings: MaskSettings, target_volumes: np.ndarray):
        self.store = store
        self.settings = settings
        self.target_volumes = np.asarray(target_volumes, dtype=np.int64)
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        """The case order of an epoch: a permutation of 0..N-1."""
        if epoch not in self._orders:
            rng = np.random.default_rng(stream_seed(self.settings.seed, epoch, STREAM_ORDER))
            self._orders = {epoch: rng.permutation(len(self.store))}
        return self._orders[epoch]

    def case_index(self, k: int) -> int:
        epoch, position = divmod(int(k), len(self.store))
        return int(self.order(epoch)[position])

    def mask_for(self, case: PreparedCase, k: int) -> np.ndarray:
        """The conditioning mask of item ``k``: the tumour or a random blob (dilated)."""
        rng = np.random.default_rng(stream_seed(self.settings.seed, k, STREAM_ITEM))
        settings = self.settings
        use_random = settings.condition == "random" or (
            settings.condition == "mixed" and rng.random() < settings.p_random
        )
        if not use_random:
            return case.lesion
        target = int(self.target_volumes[rng.integers(len(self.target_volumes))])
        target = max(1, min(target, int(case.foreground.sum())))
        blob = random_mask(case.foreground, target, rng, depth=case.depth)
        return dilate(blob, settings.dilate)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        case = self.store.get(self.case_index(k))
        mask = self.mask_for(case, k)
        image = torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32))[None]
        return image, torch.from_numpy(mask.astype(np.float32))[None]


class StepBatches:
    """Batch sampler: for every step, this process's ``batch`` item numbers of the stream."""

    def __init__(self, start: int, stop: int, batch: int, rank: int, world: int):
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            first = (step * self.world + self.rank) * self.batch
            yield list(range(first, first + self.batch))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
