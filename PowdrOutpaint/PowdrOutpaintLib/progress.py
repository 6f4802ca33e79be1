"""What a run reports: its progress, read from the worker's JSON lines, and its errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PowdrOutpaintError", "OutpaintProgress"]

_STAGE_LABELS = {
    "starting": "Starting",
    "loading": "Loading the model",
    "preparing": "Preparing the lesion",
    "sampling": "Sampling",
    "refining": "Adding detail",
    "writing": "Writing results",
    "importing": "Loading results into Slicer",
}


class PowdrOutpaintError(RuntimeError):
    """A run that could not be done: ``str(error)`` is one readable sentence, ``log`` the details."""

    def __init__(self, message: str, log: str = "", returnCode: int | None = None):
        super().__init__(message)
        self.message = message
        self.log = log
        self.returnCode = returnCode


@dataclass
class OutpaintProgress:
    """Where a run stands, from the worker's JSON progress lines."""

    stage: str = "starting"
    sample: int | None = None
    samples: int | None = None
    step: int | None = None
    total: int | None = None
    fraction: float | None = None
    etaSeconds: float | None = None
    message: str = ""

    @classmethod
    def fromEvent(cls, event: dict[str, Any], previous: OutpaintProgress | None = None) -> OutpaintProgress:
        progress = cls(stage=str(event.get("stage") or (previous.stage if previous else "starting")))
        for key, attribute in (("sample", "sample"), ("samples", "samples"), ("step", "step"), ("total", "total")):
            value = event.get(key)
            setattr(progress, attribute, int(value) if isinstance(value, (int, float)) else None)
        fraction = event.get("fraction")
        progress.fraction = float(fraction) if isinstance(fraction, (int, float)) else None
        if progress.fraction is None and previous is not None and previous.stage == progress.stage:
            progress.fraction = previous.fraction
        if progress.fraction is None and progress.stage in ("writing", "importing"):
            progress.fraction = 1.0
        eta = event.get("eta_s")
        progress.etaSeconds = float(eta) if isinstance(eta, (int, float)) else None
        progress.message = str(event.get("message") or "")
        return progress

    @property
    def stageLabel(self) -> str:
        return _STAGE_LABELS.get(self.stage, self.stage.capitalize())

    @staticmethod
    def formatDuration(seconds: float) -> str:
        seconds = max(0, int(round(seconds)))
        if seconds < 60:
            return f"{seconds} s"
        minutes, seconds = divmod(seconds, 60)
        if minutes < 60:
            return f"{minutes} min {seconds:02d} s"
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes:02d} min"

    def text(self) -> str:
        """One line for a status label, e.g. ``Sampling: sample 2/5, step 40/100 - about 1 min 05 s left``."""
        parts = []
        if self.sample is not None and self.samples:
            parts.append(f"sample {self.sample}/{self.samples}")
        if self.step is not None and self.total:
            parts.append(f"step {self.step}/{self.total}")
        text = self.stageLabel + (": " + ", ".join(parts) if parts else "")
        if self.etaSeconds is not None and self.stage in ("sampling", "refining"):
            text += f" - about {self.formatDuration(self.etaSeconds)} left"
        return text
