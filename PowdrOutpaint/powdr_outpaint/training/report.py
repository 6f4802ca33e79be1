"""Reporting a training run: ``train_log.csv``, the progress bar or JSON lines, stop requests."""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

LOG_FIELDS = ("step", "loss", "lr", "time")


class TrainLog:
    """``train_log.csv``: one row per iteration (step, loss, lr, time in seconds)."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.rows: list[list[str]] = []
        if resume_step is None or not path.is_file():
            self._rewrite([])
        else:
            # Rows after the saved step belong to iterations that will be run again.
            with open(path, newline="") as handle:
                kept = [row for row in list(csv.reader(handle))[1:] if row and int(row[0]) <= resume_step]
            self._rewrite(kept)

    def _rewrite(self, rows: list[list[str]]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.part")
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(LOG_FIELDS)
            writer.writerows(rows)
        temporary.replace(self.path)

    def add(self, step: int, loss: float, lr: float, seconds: float) -> None:
        self.rows.append([str(step), f"{loss:.6g}", f"{lr:.6g}", f"{seconds:.3f}"])

    def flush(self) -> None:
        if self.rows:
            with open(self.path, "a", newline="") as handle:
                csv.writer(handle).writerows(self.rows)
            self.rows = []


def read_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``train_log.csv`` as dicts of numbers."""
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


class Reporter:
    """Progress for people (a bar with loss and it/s) or programs (JSON lines), main process only."""

    def __init__(self, mode: str, enabled: bool, start: int, total: int):
        self.mode = mode if enabled else "none"
        self.start, self.total = start, total
        self.started = time.perf_counter()
        self.last_json = 0.0
        self.smoothed: float | None = None
        self.bar = None

    def begin(self) -> None:
        """Start the clock (and the bar) when the first iteration is about to run."""
        self.started = time.perf_counter()
        if self.mode == "text":
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.start, desc="training", unit="it", file=sys.stderr,
                            dynamic_ncols=True)

    def message(self, text: str) -> None:
        """Messages (cases skipped, run summary) are shown in every mode; JSON mode wraps them."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.mode == "json":
            print(json.dumps({"event": "message", "message": text}), flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, step: int, loss: float) -> None:
        self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.smoothed:.4f}", refresh=False)
            self.bar.update(1)
        elif self.mode == "json":
            now = time.perf_counter()
            if now - self.last_json >= 1.0 or step == self.total:
                self.last_json = now
                rate = (step - self.start) / max(now - self.started, 1e-9)
                print(json.dumps({
                    "event": "progress", "stage": "training", "step": step, "total": self.total,
                    "loss": round(self.smoothed, 6), "it_per_s": round(rate, 3),
                    "eta_s": round((self.total - step) / rate, 1) if rate > 0 else None,
                }), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def stop_requests() -> Iterator[dict[str, bool]]:
    """SIGINT/SIGTERM set a flag so the loop can save and stop between iterations."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
