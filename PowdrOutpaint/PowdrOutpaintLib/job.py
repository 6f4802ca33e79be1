"""A run in progress: the worker's messages turned into progress, a result, an error or a cancel."""

from __future__ import annotations

import logging
import shutil
import time
from typing import TYPE_CHECKING, Any

from .process import WorkerProcess
from .progress import OutpaintProgress, PowdrOutpaintError

if TYPE_CHECKING:
    from .logic import PowdrOutpaintLogic
    from .results import PowdrOutpaintResult

__all__ = ["PowdrOutpaintJob"]


class PowdrOutpaintJob:
    """A run in progress. Drive it with :meth:`poll` (from a timer) or block with :meth:`wait`.

    ``state`` is ``"running"``, ``"completed"``, ``"failed"`` or ``"cancelled"``; when the run
    completed, :attr:`result` holds the :class:`PowdrOutpaintResult`, when it failed,
    :attr:`error` the :class:`PowdrOutpaintError`.
    """

    def __init__(self, logic: PowdrOutpaintLogic, worker: WorkerProcess, temporaryDirectory: str,
                 request: dict[str, Any], progressCallback=None, logCallback=None, completedCallback=None):
        self.logic = logic
        self.worker = worker
        self.temporaryDirectory = temporaryDirectory
        self.request = request
        self.progressCallback = progressCallback
        self.logCallback = logCallback
        self.completedCallback = completedCallback
        self.state = "running"
        self.result: PowdrOutpaintResult | None = None
        self.error: PowdrOutpaintError | None = None
        self.progress = OutpaintProgress()
        self._doneEvent: dict | None = None
        self._errorMessage: str | None = None
        self.startTime = time.monotonic()

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def log(self) -> str:
        return self.worker.logText

    def _reportProgress(self, progress: OutpaintProgress) -> None:
        self.progress = progress
        if self.progressCallback is not None:
            try:
                self.progressCallback(progress)
            except Exception:  # noqa: BLE001 - a faulty display must not stop the run
                logging.exception("PowdrOutpaint progress callback failed")

    def poll(self) -> bool:
        """Handle what the worker reported since the last call; return True once the run is over."""
        if self.finished:
            return True
        for message in self.worker.poll():
            if message.kind == "event":
                event = message.value
                kind = event.get("event")
                if kind == "progress":
                    self._reportProgress(OutpaintProgress.fromEvent(event, self.progress))
                elif kind == "done":
                    self._doneEvent = event
                elif kind == "error":
                    self._errorMessage = str(event.get("message") or "").strip() or None
            elif message.kind == "log":
                if self.logCallback is not None:
                    try:
                        self.logCallback(message.value)
                    except Exception:  # noqa: BLE001
                        logging.exception("PowdrOutpaint log callback failed")
            elif message.kind == "exit":
                self._finish(message.value)
                break
        return self.finished

    def _failureMessage(self, returnCode: int) -> str:
        if self._errorMessage:
            message = self._errorMessage
            message = message[0].upper() + message[1:]
            return message if message.endswith(".") else message + "."
        # No error event: the worker crashed (missing package, out of memory, ...)
        lines = [line.strip() for line in self.worker.logLines if line.strip()]
        last = lines[-1] if lines else ""
        if returnCode < 0 or returnCode in (137, -9):
            return (f"The outpainting worker was stopped by the system (exit code {returnCode}); "
                    "it may have run out of memory: try fewer samples, a smaller batch size or the CPU device.")
        if "out of memory" in last.lower() or "MemoryError" in last:
            return (f"The outpainting worker ran out of memory ({last}); lower the batch size, "
                    "generate fewer samples at a time or use the CPU device.")
        if "No module named" in last:
            return f"The outpainting worker could not start ({last}); install the module's dependencies."
        detail = f" ({last})" if last else ""
        return f"The outpainting worker failed with exit code {returnCode}{detail}."

    def _finish(self, returnCode: int) -> None:
        try:
            if self.worker.cancelled:
                self.state = "cancelled"
                return
            if returnCode == 0 and self._doneEvent is not None:
                self._reportProgress(OutpaintProgress(stage="importing", fraction=1.0,
                                                      message="Loading results into Slicer"))
                try:
                    self.result = self.logic._importResults(self.request, self._doneEvent, self.log)
                    self.result.seconds = time.monotonic() - self.startTime
                    self.state = "completed"
                except PowdrOutpaintError as error:
                    error.log = error.log or self.log
                    self.error = error
                    self.state = "failed"
                except Exception as error:  # noqa: BLE001 - reported as a failed run with the log
                    logging.exception("PowdrOutpaint could not load the results")
                    self.error = PowdrOutpaintError(f"The results could not be loaded ({error}).", self.log, returnCode)
                    self.state = "failed"
            else:
                if returnCode == 0:
                    message = "The outpainting worker ended without reporting its results."
                else:
                    message = self._failureMessage(returnCode)
                self.error = PowdrOutpaintError(message, self.log, returnCode)
                self.state = "failed"
        finally:
            self._cleanup()
            if self.state == "failed":
                logging.error(f"PowdrOutpaint: {self.error}")
            if self.completedCallback is not None:
                try:
                    self.completedCallback(self)
                except Exception:  # noqa: BLE001
                    logging.exception("PowdrOutpaint completion callback failed")

    def _cleanup(self) -> None:
        if self.logic.currentJob is self:
            self.logic.currentJob = None
        if self.temporaryDirectory and not self.logic.keepTemporaryFiles:
            shutil.rmtree(self.temporaryDirectory, ignore_errors=True)

    def wait(self, timeout: float | None = None, pollInterval: float = 0.1) -> PowdrOutpaintResult | None:
        """Block until the run ends; return the result, raise :class:`PowdrOutpaintError` if it failed.

        Returns None when the run was cancelled. Ctrl+C (KeyboardInterrupt) cancels the run.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.poll():
                if deadline is not None and time.monotonic() > deadline:
                    self.cancel()
                    raise PowdrOutpaintError(f"The run did not finish within {timeout:g} s and was cancelled.",
                                             self.log)
                time.sleep(pollInterval)
        except KeyboardInterrupt:
            self.cancel()
            raise
        if self.state == "failed":
            raise self.error
        return self.result

    def cancel(self) -> None:
        """Stop the worker and every process it started; no nodes are added."""
        if self.finished:
            return
        self.worker.cancel()
        self.state = "cancelled"
        self._cleanup()
        if self.completedCallback is not None:
            try:
                self.completedCallback(self)
            except Exception:  # noqa: BLE001
                logging.exception("PowdrOutpaint completion callback failed")
