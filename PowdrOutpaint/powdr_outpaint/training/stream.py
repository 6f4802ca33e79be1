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

from ..imaging.masks import dilate, random_mask
from .augment import random_warp, warp, warp_case
from .data import CaseStore, PreparedCase

# Purposes of the derived random streams (any distinct constants).
STREAM_ORDER, STREAM_ITEM, STREAM_NOISE, STREAM_DROPOUT, STREAM_WARP, STREAM_CROP = 11, 23, 37, 41, 53, 59


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
    augment: float


class TrainingItems(Dataset):
    """Item ``k`` of the endless training stream: (image, mask), each (1, X, Y, Z) float32.

    The stream visits the cases epoch by epoch, each epoch in its own random order;
    item ``k`` is case ``order(k // N)[k % N]`` with its own random choices, so it is
    the same whichever process, worker or resumed run produces it.
    """

    def __init__(
        self,
        store: CaseStore,
        settings: MaskSettings,
        target_volumes: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        patch: tuple[int, ...] = (),
    ):
        self.store = store
        self.patch = tuple(int(p) for p in patch)
        self.spacing = tuple(float(s) for s in spacing)
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

    def case_for(self, k: int) -> PreparedCase:
        """The case of item ``k``, warped when the run augments (see augment.py)."""
        case = self.store.get(self.case_index(k))
        if self.settings.augment > 0:
            rng = np.random.default_rng(stream_seed(self.settings.seed, k, STREAM_WARP))
            if rng.random() < self.settings.augment:
                case = warp_case(case, random_warp(case.lesion.shape, self.spacing, rng))
        return case

    def block_for(self, case: PreparedCase, mask: np.ndarray, k: int) -> tuple[slice, slice, slice]:
        """Where item ``k``'s training block lies: centred on a brain voxel, or half the time
        on a voxel of the mask, so blocks with and without a kept region both occur."""
        rng = np.random.default_rng(stream_seed(self.settings.seed, k, STREAM_CROP))
        pick = mask if mask.any() and rng.random() < 0.5 else case.foreground
        voxels = np.flatnonzero(pick)
        shape = np.array(case.lesion.shape)
        size = np.array(self.patch)
        if voxels.size:
            centre = np.array(np.unravel_index(voxels[rng.integers(voxels.size)], case.lesion.shape))
        else:
            centre = shape // 2
        low = np.clip(centre - size // 2, 0, shape - size)
        return tuple(slice(int(a), int(a + b)) for a, b in zip(low, size))  # type: ignore[return-value]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Item ``k``: image (S, X, Y, Z) in [-1, 1], conditioning mask and brain (1, X, Y, Z) in {0, 1}."""
        if self.patch:
            image, mask, brain = self.block_item(k)
        else:
            case = self.case_for(k)
            image, mask, brain = case.image, self.mask_for(case, k), case.foreground
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        # (S, X, Y, Z) for several sequences, (X, Y, Z) for one: always channels first.
        return (
            image if image.dim() == 4 else image[None],
            torch.from_numpy(mask.astype(np.float32))[None],
            torch.from_numpy(brain.astype(np.float32))[None],
        )

    def block_item(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item ``k`` of a patch-trained run: one block of a case (image, mask, brain).

        The mask and the block are chosen on the case as it is; a warp, when drawn, is
        applied to the block alone (about its own centre), which costs a block's worth of
        interpolation instead of a whole volume's.
        """
        case = self.store.get(self.case_index(k))
        mask = self.mask_for(case, k)
        block = self.block_for(case, mask, k)
        if self.settings.augment > 0:
            rng = np.random.default_rng(stream_seed(self.settings.seed, k, STREAM_WARP))
            if rng.random() < self.settings.augment:
                coords = random_warp(self.patch, self.spacing, rng)
                coords += np.array([b.start for b in block], dtype=np.float32)[:, None, None, None]
                return (
                    warp(case.image, coords, 1, -1.0),
                    warp(mask.astype(np.uint8), coords, 0, 0) > 0,
                    warp(case.foreground.astype(np.uint8), coords, 0, 0) > 0,
                )
        return case.image[(..., *block)], mask[block], case.foreground[block]


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
