"""The worker process runner (no Slicer, no Qt): JSON lines, logs, exit codes, tree cancel."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from PowdrOutpaintLib.logic import OutpaintProgress
from PowdrOutpaintLib.process import WorkerProcess, describeCommand, killProcessTree


def pythonCommand(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def collect(worker: WorkerProcess, timeout: float = 60):
    messages = worker.wait(timeout=timeout)
    return ([m.value for m in messages if m.kind == "event"], [m.value for m in messages if m.kind == "log"])


def test_json_lines_logs_and_exit_code():
    worker = WorkerProcess(pythonCommand("""
        import json, sys
        print(json.dumps({"event": "progress", "stage": "loading", "fraction": None, "message": "Loading"}), flush=True)
        print("not json on stdout", flush=True)
        print("{broken json", flush=True)
        print("a log line", file=sys.stderr, flush=True)
        print(json.dumps({"event": "progress", "stage": "sampling", "sample": 1, "samples": 2, "step": 3,
                          "total": 4, "fraction": 0.375, "eta_s": 65.0, "message": "x"}), flush=True)
        print(json.dumps({"event": "done", "outputs": {"samples": []}, "seconds": 1.5}), flush=True)
    """)).start()
    events, logs = collect(worker)
    assert worker.finished and worker.returnCode == 0 and not worker.cancelled
    assert [event["event"] for event in events] == ["progress", "progress", "done"]
    assert "not json on stdout" in logs and "{broken json" in logs and "a log line" in logs
    assert "a log line" in worker.logText

    progress = OutpaintProgress.fromEvent(events[1])
    assert progress.text() == "Sampling: sample 1/2, step 3/4 - about 1 min 05 s left"
    assert progress.fraction == pytest.approx(0.375)
    loading = OutpaintProgress.fromEvent(events[0])
    assert loading.fraction is None and loading.text() == "Loading the model"


def test_error_event_and_exit_code_two():
    worker = WorkerProcess(pythonCommand("""
        import json, sys
        print(json.dumps({"event": "error", "message": "the checkpoint is damaged"}), flush=True)
        print("powdr-outpaint sample: error: the checkpoint is damaged", file=sys.stderr)
        sys.exit(2)
    """)).start()
    events, logs = collect(worker)
    assert worker.returnCode == 2
    assert events == [{"event": "error", "message": "the checkpoint is damaged"}]
    assert any("damaged" in line for line in logs)


def test_poll_never_blocks():
    worker = WorkerProcess(pythonCommand("import time; time.sleep(5)")).start()
    try:
        started = time.monotonic()
        assert worker.poll() == []
        assert time.monotonic() - started < 0.5
        assert worker.running and not worker.finished
    finally:
        worker.cancel()
    assert worker.finished and worker.cancelled


SPAWNING_WORKER = """
    import json, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    grandchild_code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"
    other = subprocess.Popen([sys.executable, "-c", grandchild_code])
    time.sleep(1.0)
    print(json.dumps({"event": "progress", "stage": "sampling", "message": "children started"}), flush=True)
    time.sleep(120)
"""


def waitForEvent(worker: WorkerProcess, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(message.kind == "event" for message in worker.poll()):
            return
        time.sleep(0.05)
    raise AssertionError("the worker did not report")


@pytest.mark.parametrize("withPsutil", [True, False])
def test_cancel_kills_the_whole_tree(withPsutil, monkeypatch):
    psutil = pytest.importorskip("psutil")
    if not withPsutil and os.name == "nt":
        pytest.skip("the fallback without psutil uses taskkill on Windows")
    worker = WorkerProcess(pythonCommand(SPAWNING_WORKER)).start()
    waitForEvent(worker)
    tree = [psutil.Process(worker.pid)] + psutil.Process(worker.pid).children(recursive=True)
    assert len(tree) >= 4  # worker, child, other, grandchild

    started = time.monotonic()
    with monkeypatch.context() as patch:
        if not withPsutil:
            patch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError in the runner
        worker.cancel()
    assert time.monotonic() - started < 15
    assert worker.finished and worker.cancelled and worker.returnCode is not None
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"still running: {alive}"


def test_kill_process_tree_of_a_finished_process_is_harmless():
    worker = WorkerProcess(pythonCommand("pass")).start()
    worker.wait(timeout=30)
    assert killProcessTree(worker.pid) in ([], [worker.pid])


def test_wait_timeout_cancels():
    worker = WorkerProcess(pythonCommand("import time; time.sleep(60)")).start()
    with pytest.raises(TimeoutError):
        worker.wait(timeout=0.5)
    assert worker.cancelled and worker.finished


def test_describe_command_quotes_arguments():
    text = describeCommand(["python", "-m", "powdr_outpaint", "--image", "/tmp/a b.nrrd"])
    assert "a b.nrrd" in text and text.startswith("python -m powdr_outpaint")
