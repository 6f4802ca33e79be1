"""Run the outpainting engine in a separate process and follow its progress.

The worker is an ordinary command line (``python -m powdr_outpaint sample ... --progress json``).
Its standard output carries one JSON object per line; everything else it prints goes to the
log. Two reader threads move lines into a queue, and the caller drains that queue from its
own thread (the Slicer widget does so from a ``qt.QTimer``; batch code simply loops), so the
application never blocks on a pipe and nothing here needs Qt or Slicer.

Cancelling kills the whole process tree (the worker and anything it started), using
``psutil`` when it is available and the process group (POSIX) or ``taskkill`` (Windows)
otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Any

__all__ = ["WorkerProcess", "WorkerMessage", "killProcessTree", "describeCommand"]

# Kinds of items a WorkerProcess hands out from poll()
EVENT = "event"  # a JSON object from the worker's standard output (dict)
LOG = "log"  # one line of log text (str)
EXIT = "exit"  # the worker has ended and both pipes are closed (return code, int)


class WorkerMessage:
    """One item read from the worker: ``kind`` is ``"event"``, ``"log"`` or ``"exit"``."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: Any):
        self.kind = kind
        self.value = value

    def __repr__(self) -> str:
        return f"WorkerMessage({self.kind!r}, {self.value!r})"


def killProcessTree(pid: int, timeout: float = 5.0) -> list[int]:
    """Kill process ``pid`` and all its descendants; return the process ids that were signalled.

    Descendants are collected before anything is killed, so children that get re-parented
    when their parent dies are not missed.
    """
    try:
        import psutil
    except ImportError:
        psutil = None

    if psutil is not None:
        try:
            parent = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return []
        try:
            processes = parent.children(recursive=True)
        except psutil.Error:
            processes = []
        processes.append(parent)
        killed = []
        for process in processes:
            try:
                process.kill()
                killed.append(process.pid)
            except psutil.NoSuchProcess:
                pass
            except psutil.Error as error:  # e.g. access denied: report, keep going
                logging.warning(f"Could not stop process {process.pid}: {error}")
        psutil.wait_procs(processes, timeout=timeout)
        return killed

    # Without psutil: the worker was started as the leader of its own process group (POSIX)
    # or can be stopped with its tree by taskkill (Windows).
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return [pid]
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return []
    return [pid]


class WorkerProcess:
    """A command running in the background whose JSON-lines output is read without blocking.

    Typical use::

        worker = WorkerProcess([python, "-m", "powdr_outpaint", "sample", ...])
        worker.start()
        while True:
            for message in worker.poll():
                ...  # message.kind is "event", "log" or "exit"
            if worker.finished:
                break
            time.sleep(0.1)

    :param args: the command line.
    :param env: environment of the worker (default: this process's environment).
    :param cwd: working folder of the worker.
    :param maxLogLines: how many log lines are kept for :attr:`logText`.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 maxLogLines: int = 5000):
        self.args = [str(arg) for arg in args]
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.returnCode: int | None = None
        self.cancelled = False
        self.startTime: float | None = None
        self._queue: queue.Queue = queue.Queue()
        self._logLines: deque[str] = deque(maxlen=maxLogLines)
        self._logLock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._exitPosted = False
        self._finished = False

    # ------------------------------------------------------------------ starting
    def start(self) -> WorkerProcess:
        """Start the command; raise ``OSError`` when it cannot be started."""
        if self.process is not None:
            raise RuntimeError("The worker has already been started.")
        options: dict[str, Any] = {}
        if os.name == "nt":
            # No console window; a process group of its own so Ctrl+C in Slicer does not reach it
            options["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000) | getattr(
                subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
        else:
            options["start_new_session"] = True
        self.startTime = time.monotonic()
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            **options,
        )
        stdoutThread = threading.Thread(target=self._readStdout, name="PowdrOutpaint-stdout", daemon=True)
        stderrThread = threading.Thread(target=self._readStderr, name="PowdrOutpaint-stderr", daemon=True)
        self._threads = [stdoutThread, stderrThread]
        for thread in self._threads:
            thread.start()
        threading.Thread(target=self._waitForExit, name="PowdrOutpaint-wait", daemon=True).start()
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    # ------------------------------------------------------------------ reader threads
    @staticmethod
    def _decode(raw: bytes) -> str:
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")

    def _addLog(self, line: str) -> None:
        with self._logLock:
            self._logLines.append(line)
        self._queue.put(WorkerMessage(LOG, line))

    def _readStdout(self) -> None:
        for raw in iter(self.process.stdout.readline, b""):
            line = self._decode(raw)
            if not line.strip():
                continue
            event = None
            if line.lstrip().startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
            if isinstance(event, dict) and "event" in event:
                self._queue.put(WorkerMessage(EVENT, event))
                if event.get("event") == "error" and event.get("message"):
                    self._addLog(f"error: {event['message']}")
            else:
                self._addLog(line)
        self.process.stdout.close()

    def _readStderr(self) -> None:
        for raw in iter(self.process.stderr.readline, b""):
            line = self._decode(raw)
            if line.strip():
                self._addLog(line)
        self.process.stderr.close()

    def _waitForExit(self) -> None:
        returnCode = self.process.wait()
        for thread in self._threads:
            thread.join()
        self._queue.put(WorkerMessage(EXIT, returnCode))

    # ------------------------------------------------------------------ polling
    def poll(self) -> list[WorkerMessage]:
        """Return the messages that arrived since the last call (never blocks)."""
        messages = []
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                break
            if message.kind == EXIT:
                self.returnCode = message.value
                self._finished = True
            messages.append(message)
        return messages

    @property
    def finished(self) -> bool:
        """True once the exit message has been handed out by :meth:`poll`."""
        return self._finished

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def logText(self) -> str:
        with self._logLock:
            return "\n".join(self._logLines)

    @property
    def logLines(self) -> list[str]:
        with self._logLock:
            return list(self._logLines)

    def wait(self, timeout: float | None = None, pollInterval: float = 0.05) -> list[WorkerMessage]:
        """Block until the worker has ended; return all messages not yet polled.

        Raises ``TimeoutError`` (after cancelling the worker) when ``timeout`` seconds pass.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        messages = []
        while not self._finished:
            messages.extend(self.poll())
            if self._finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                messages.extend(self.poll())
                raise TimeoutError(f"The worker did not finish within {timeout:g} s and was stopped.")
            time.sleep(pollInterval)
        return messages

    # ------------------------------------------------------------------ cancelling
    def cancel(self, timeout: float = 10.0) -> None:
        """Kill the worker and every process it started; wait until the pipes are closed."""
        if self.process is None:
            return
        self.cancelled = True
        if self.process.poll() is None:
            killProcessTree(self.process.pid)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logging.warning(f"Worker process {self.process.pid} did not stop within {timeout:g} s")
        # Drain remaining output so the exit message arrives and threads end
        deadline = time.monotonic() + timeout
        while not self._finished and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.01)


def describeCommand(args: list[str]) -> str:
    """The command as one line a user can paste into a shell (for logs)."""
    if os.name == "nt":
        return subprocess.list2cmdline([str(arg) for arg in args])
    import shlex

    return " ".join(shlex.quote(str(arg)) for arg in args)

