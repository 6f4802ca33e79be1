"""Progress reporting for long commands: a bar for people, JSON lines for programs.

JSON mode prints one object per line on stdout, flushed at once::

    {"event": "progress", "stage": "sampling", "sample": 2, "samples": 3,
     "step": 4, "total": 5, "fraction": 0.53, "eta_s": 12.5, "message": "..."}
    {"event": "done", "outputs": {...}, "seconds": 31.2}
    {"event": "error", "message": "..."}
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Progress:
    """Reports stages and step counts; estimates the remaining time from the work done."""

    def __init__(self, mode: str = "text", stream: TextIO | None = None, min_interval_s: float = 0.0):
        if mode not in ("text", "json", "none"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.stream = stream
        self.started = time.perf_counter()
        self.min_interval_s = min_interval_s
        self._bar = None
        self._last_emit = 0.0
        self._work_started: float | None = None
        self._work_done_at_start = 0.0

    def _json(self, payload: dict[str, Any]) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps(payload) + "\n")
        stream.flush()

    def stage(self, stage: str, message: str = "") -> None:
        if self.mode == "json":
            self._json({"event": "progress", "stage": stage, "fraction": None, "eta_s": None, "message": message})
        elif self.mode == "text" and message:
            self._close_bar()
            print(message, file=self.stream or sys.stderr, flush=True)

    def start_work(self, total_units: int, description: str) -> None:
        """Begin a counted phase of ``total_units`` equal units (e.g. denoising steps)."""
        self.total_units = max(1, total_units)
        self._work_started = time.perf_counter()
        if self.mode == "text":
            from tqdm import tqdm

            self._bar = tqdm(total=total_units, desc=description, file=self.stream or sys.stderr, unit="step")

    def advance(self, done_units: int, **fields: Any) -> None:
        """``done_units`` of the phase are complete; ``fields`` go into the JSON line."""
        now = time.perf_counter()
        fraction = done_units / self.total_units
        elapsed = now - (self._work_started or now)
        eta = elapsed / done_units * (self.total_units - done_units) if done_units else None
        if self.mode == "text" and self._bar is not None:
            self._bar.n = done_units
            self._bar.set_postfix_str(
                f"sample {fields.get('sample', '?')}/{fields.get('samples', '?')}", refresh=False
            )
            self._bar.refresh()
        elif self.mode == "json":
            if now - self._last_emit < self.min_interval_s and done_units < self.total_units:
                return
            self._last_emit = now
            payload = {"event": "progress", "fraction": round(fraction, 4), "eta_s": None if eta is None else round(eta, 1)}
            payload.update(fields)
            self._json(payload)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def done(self, outputs: dict[str, Any], message: str = "") -> None:
        self._close_bar()
        seconds = time.perf_counter() - self.started
        if self.mode == "json":
            self._json({"event": "done", "outputs": outputs, "seconds": round(seconds, 2)})
        elif self.mode == "text" and message:
            print(message, file=self.stream or sys.stderr, flush=True)
