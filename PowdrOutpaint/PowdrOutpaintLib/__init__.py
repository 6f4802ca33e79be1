"""PowdrOutpaint module library: logic, worker process and dependency handling (no Qt)."""

from .logic import (
    DEVICES,
    PRESERVE_MODES,
    SAMPLERS,
    OutpaintProgress,
    PowdrOutpaintError,
    PowdrOutpaintJob,
    PowdrOutpaintLogic,
    PowdrOutpaintResult,
    defaultCheckpointPath,
)
from .process import WorkerProcess, killProcessTree

__all__ = [
    "PowdrOutpaintLogic",
    "PowdrOutpaintResult",
    "PowdrOutpaintJob",
    "PowdrOutpaintError",
    "OutpaintProgress",
    "WorkerProcess",
    "killProcessTree",
    "SAMPLERS",
    "DEVICES",
    "PRESERVE_MODES",
    "defaultCheckpointPath",
]
