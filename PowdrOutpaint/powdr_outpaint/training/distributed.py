"""Many processes, one training run: torchrun / DistributedDataParallel helpers.

Under ``torchrun`` the environment names this process's RANK, LOCAL_RANK and
WORLD_SIZE; without it the run is a single process and every helper here is a
no-op. GPUs use the NCCL backend (one GPU per process, by local rank); CPUs use
gloo, which is how the multi-process path is tested.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import PowdrError
from ..model.runtime import resolve_device

# Preparing a large data set before the first step can take a while; the default
# collective timeout (10 minutes for NCCL) would abort the other processes meanwhile.
SETUP_TIMEOUT = datetime.timedelta(hours=3)


@dataclass
class DistributedContext:
    """Where this process stands in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over all processes (a copy; input unchanged)."""
        out = values.detach().clone().to(self.device)
        if self.enabled:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise PowdrError(f"the environment variable {name}={value!r} is not an integer") from None


def setup(device_name: str = "auto") -> DistributedContext:
    """Join the process group when launched by torchrun; pick this process's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistributedContext(device=device)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise PowdrError(
                f"process {rank} has local rank {local_rank} but only {torch.cuda.device_count()} GPUs are visible"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=SETUP_TIMEOUT)
    return DistributedContext(
        rank=rank, local_rank=local_rank, world_size=world_size, device=device, backend=backend
    )
