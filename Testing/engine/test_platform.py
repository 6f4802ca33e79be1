"""The engine on other platforms: no Unix-only modules, and paths with spaces and non-ASCII.

Windows has no ``resource``, ``fcntl``, ``pwd``, ``grp`` or ``termios``, and no POSIX-only
``os`` functions such as ``os.killpg`` or ``os.getuid``. The tests here cannot run on Windows
itself, so they run the engine's command line in a child process in which those modules
cannot be imported and those functions are gone (:data:`WINDOWS_BOOTSTRAP`), exactly the way
the Slicer module's worker calls it: ``--help``, ``init-checkpoint``, ``info`` and ``sample``
on a real BraTS case.

Paths: Slicer users keep data in folders such as ``Patient Ö 1 – T1`` on every platform. The
second group of tests copies a BraTS T1 and its segmentation into such folders and runs
``sample`` on them, directly and through the Slicer module's own worker runner
(``PowdrOutpaintLib.process.WorkerProcess``), which decodes the worker's pipes itself.

Also here: peak memory without ``resource``, a console that cannot encode a path (legacy
Windows code pages), and a torch built for NumPy 1 beside NumPy 2.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "PowdrOutpaint"

#: Modules that exist only on Unix-like systems.
UNIX_ONLY_MODULES = ("resource", "fcntl", "pwd", "grp", "termios")
#: Attributes of ``os`` and ``signal`` that Windows lacks (``os.uname`` too, but numpy calls it when
#: imported on Linux, so it stays).
POSIX_ONLY_OS = ("killpg", "getpgid", "setsid", "fork", "getuid", "geteuid", "getgid", "getegid")
POSIX_ONLY_SIGNALS = ("SIGKILL", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGQUIT")

#: Run in the child with ``python -c``: hide the Unix-only modules and functions, then run
#: ``python -m powdr_outpaint ARGS`` (the worker's command line) via runpy.
WINDOWS_BOOTSTRAP = textwrap.dedent(
    f"""
    import os, runpy, signal, sys

    BLOCKED = {UNIX_ONLY_MODULES!r}

    class _UnixOnly:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (hidden: Windows has none)", name=name)
            return None

    sys.meta_path.insert(0, _UnixOnly())
    for _name in list(sys.modules):
        if _name.partition(".")[0] in BLOCKED:
            del sys.modules[_name]
    for _name in {POSIX_ONLY_OS!r}:
        if hasattr(os, _name):
            delattr(os, _name)
    for _name in {POSIX_ONLY_SIGNALS!r}:
        if hasattr(signal, _name):
            delattr(signal, _name)
    sys.argv = ["powdr-outpaint", *sys.argv[1:]]
    runpy.run_module("powdr_outpaint", run_name="__main__", alter_sys=True)
    """
)


def engine_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(MODULE_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_windows_like(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m powdr_outpaint ARGS`` without the Unix-only modules; output decoded as UTF-8."""
    return subprocess.run(
        [sys.executable, "-c", WINDOWS_BOOTSTRAP, *map(str, args)],
        capture_output=True, text=True, encoding="utf-8", errors="strict",
        env=engine_env(), cwd=str(MODULE_DIR), timeout=timeout,
    )


def run_engine(*args: object, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m powdr_outpaint ARGS``, plainly, output decoded as UTF-8."""
    return subprocess.run(
        [sys.executable, "-m", "powdr_outpaint", *map(str, args)],
        capture_output=True, text=True, encoding="utf-8", errors="strict",
        env=engine_env(**env), cwd=str(MODULE_DIR), timeout=timeout,
    )


def json_events(stdout: str) -> list[dict]:
    """Every stdout line of a ``--progress json`` run must be a JSON object with an event."""
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert events and all(isinstance(e, dict) and "event" in e for e in events), stdout
    return events


def assert_lesion_kept(samples: list[str | Path], image: Path, mask: Path) -> None:
    original = np.asanyarray(nib.load(str(image)).dataobj)
    lesion = np.asanyarray(nib.load(str(mask)).dataobj) > 0
    assert lesion.any()
    for path in samples:
        sample = np.asanyarray(nib.load(str(path)).dataobj)
        assert sample.shape == original.shape, path
        assert np.array_equal(sample[lesion], original[lesion]), path


SUBCOMMANDS = ("sample", "init-checkpoint", "info", "strip", "cascade", "bench", "train", "evaluate", "generate", "export", "demo")


# ---------------------------------------------------------------------------------------------
# (a) no Unix-only modules


def test_the_bootstrap_really_hides_the_unix_only_modules():
    code = WINDOWS_BOOTSTRAP.replace(
        'runpy.run_module("powdr_outpaint", run_name="__main__", alter_sys=True)',
        textwrap.dedent("""
            hidden = []
            for name in BLOCKED:
                try:
                    __import__(name)
                except ImportError:
                    hidden.append(name)
            print(",".join(hidden), hasattr(os, "killpg"), hasattr(signal, "SIGKILL"))
        """),
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [",".join(UNIX_ONLY_MODULES), "False", "False"]


def test_help_without_unix_only_modules():
    result = run_windows_like("--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout, name
    assert "synthesise N volumes" in result.stdout  # each command's one-line help is listed


def test_every_subcommand_help_without_unix_only_modules():
    # One child process for all of them (each --help imports only its own command's module).
    code = WINDOWS_BOOTSTRAP.replace(
        'runpy.run_module("powdr_outpaint", run_name="__main__", alter_sys=True)',
        textwrap.dedent(f"""
            import contextlib, importlib, io
            from powdr_outpaint.commands.cli import main
            for command in {SUBCOMMANDS!r}:
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    try:
                        main([command, "--help"])
                    except SystemExit as exit:
                        assert exit.code == 0, (command, exit.code)
                print("=== " + command)
                print(out.getvalue())
            # and every other module of the engine imports without them too
            import pkgutil, powdr_outpaint
            names = [m.name for m in pkgutil.walk_packages(powdr_outpaint.__path__, "powdr_outpaint.")
                     if m.name != "powdr_outpaint.__main__"]
            for name in names:
                importlib.import_module(name)
            print("IMPORTED", len(names))
        """),
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                            env=engine_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    # every module and sub-package of the engine, all but its own __init__ and __main__
    modules = len(list((MODULE_DIR / "powdr_outpaint").rglob("*.py"))) - 2
    assert f"IMPORTED {modules}" in result.stdout
    helps = dict(part.split("\n", 1) for part in result.stdout.split("=== ")[1:])
    assert set(helps) == set(SUBCOMMANDS)
    expected_options = {
        "sample": ("--image", "--mask", "--checkpoint", "--out", "--samples", "--steps", "--progress"),
        "init-checkpoint": ("--preset", "--out", "--seed", "--modality"),
        "info": ("--checkpoint", "--json"),
        "strip": ("--checkpoint", "--out"),
        "bench": ("--preset", "--image-shape", "--repeats", "--compile"),
        "train": ("--data", "--iterations", "--resume", "--out", "--compile"),
        "evaluate": ("--original", "--mask", "--samples"),
        "generate": ("--cases", "--checkpoint", "--per-case", "--out"),
        "export": ("--from", "--dataset-id", "--name", "--out"),
        "demo": ("--out",),
    }
    for command, options in expected_options.items():
        assert helps[command].startswith(f"usage: powdr-outpaint {command}"), helps[command][:200]
        for option in options:
            assert option in helps[command], (command, option)


def test_bench_reports_peak_memory_without_resource():
    result = run_windows_like("bench", "--preset", "tiny", "--image-shape", "32", "32", "32",
                              "--repeats", "1", "--warmup", "0", "--device", "cpu", "--threads", "1")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("peak memory"))
    # Linux without ``resource`` still knows the peak (/proc/self/status); the figure is real.
    assert "GiB" in line and "n/a" not in line, line


def test_worker_commands_without_unix_only_modules(brats_case, tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    result = run_windows_like("init-checkpoint", "--preset", "tiny", "--out", checkpoint)
    assert result.returncode == 0, result.stderr
    assert checkpoint.is_file()

    result = run_windows_like("info", "--checkpoint", checkpoint, "--json")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["parameters"] > 0

    out = tmp_path / "out"
    result = run_windows_like(
        "sample", "--image", brats_case["image"], "--mask", brats_case["mask"], "--checkpoint", checkpoint,
        "--out", out, "--samples", 2, "--steps", 2, "--device", "cpu", "--progress", "json",
    )
    assert result.returncode == 0, result.stderr
    events = json_events(result.stdout)
    steps = [e for e in events if e["event"] == "progress" and "step" in e]
    assert steps and steps[-1]["fraction"] == 1.0 and steps[-1]["samples"] == 2
    assert events[-1]["event"] == "done", events[-1]
    samples = events[-1]["outputs"]["samples"]
    assert len(samples) == 2 and all(Path(p).is_file() for p in samples)
    assert_lesion_kept(samples, brats_case["image"], brats_case["mask"])


def test_the_command_registry_matches_the_modules():
    """Each module registers exactly its registry entries, with the registry's help line."""
    import argparse
    import importlib

    from powdr_outpaint.commands.cli import COMMANDS, build_parser, command_in

    assert tuple(COMMANDS) == SUBCOMMANDS
    for module in sorted({entry.module for entry in COMMANDS.values()}):
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"powdr_outpaint.commands.{module}").register(subparsers)
        assert set(subparsers.choices) == {n for n, e in COMMANDS.items() if e.module == module}, module
        helps = {action.dest: action.help for action in subparsers._choices_actions}
        assert helps == {n: e.help for n, e in COMMANDS.items() if e.module == module}, module
    assert command_in(["--version"]) is None and command_in(["-h", "sample"]) == "sample"
    assert set(build_parser("info")._subparsers._group_actions[0].choices) == set(SUBCOMMANDS)


def test_peak_memory_sources(monkeypatch):
    import types

    from powdr_outpaint.commands import bench as memory  # peak memory lives beside the benchmark

    measured = memory.peak_rss_bytes()
    assert measured and measured > 10 * 2**20  # this process holds numpy and torch
    if sys.platform.startswith("linux"):  # /proc (used without resource) agrees with getrusage
        assert memory._from_proc_status() == pytest.approx(memory._from_resource(), rel=0.05)

    # Windows' psutil reports the peak working set; elsewhere psutil has no peak figure
    fake = types.SimpleNamespace(Process=lambda: types.SimpleNamespace(
        memory_info=lambda: types.SimpleNamespace(rss=1, peak_wset=3 * 2**30)))
    monkeypatch.setitem(sys.modules, "psutil", fake)
    assert memory._from_psutil() == 3 * 2**30
    assert memory._from_windows_api() is None or os.name == "nt"

    def broken():
        raise OSError("no such thing here")

    monkeypatch.setattr(memory, "SOURCES", (broken, lambda: None, memory._from_psutil))
    assert memory.peak_rss_gib() == 3.0 and memory.format_gib(3.0) == "3.00 GiB"
    monkeypatch.setattr(memory, "SOURCES", (broken, lambda: None))
    assert memory.peak_rss_bytes() is None and memory.peak_rss_gib() is None
    assert memory.format_gib(None) == "n/a"


# ---------------------------------------------------------------------------------------------
# (b) paths with spaces and non-ASCII characters

PATIENT_FOLDER = ("Patient Ö 1 – T1", "résumé ünd 東京")
OUTPUT_FOLDER = "sorties été"


@pytest.fixture(scope="module")
def unicode_case(brats_case, tmp_path_factory) -> dict[str, Path]:
    """A BraTS T1 and its segmentation, copied into a folder whose names have spaces and non-ASCII."""
    root = tmp_path_factory.mktemp("unicode")
    try:
        folder = root.joinpath(*PATIENT_FOLDER)
        folder.mkdir(parents=True)
    except (OSError, UnicodeEncodeError) as error:  # a file system that cannot hold such names
        pytest.skip(f"this file system cannot hold non-ASCII folder names ({error})")
    image = folder / "T1 – Ö é.nii.gz"
    mask = folder / "Läsion (seg) ü.nii.gz"
    shutil.copyfile(brats_case["image"], image)
    shutil.copyfile(brats_case["mask"], mask)
    from powdr_outpaint.model.checkpoint import initial_checkpoint

    checkpoint = initial_checkpoint(root / "modèle tiny" / "tiny ö.pt", "tiny", seed=0)
    return {"root": root, "image": image, "mask": mask, "checkpoint": checkpoint}


def check_outputs(done: dict, out: Path, case: dict[str, Path]) -> None:
    outputs = done["outputs"]
    stem = "T1 – Ö é"
    expected = [out / f"{stem}_outpaint_s00.nii.gz"]
    assert [Path(p) for p in outputs["samples"]] == expected
    for key in ("mean", "std", "lesion", "metadata"):
        assert Path(outputs[key]).parent == out, (key, outputs[key])
    every = [Path(p) for p in outputs["samples"]] + [Path(outputs[k]) for k in ("mean", "std", "lesion", "metadata")]
    for path in every:
        assert path.is_file(), path
    assert {p.name for p in out.iterdir()} == {p.name for p in every}  # nothing else, no mangled names
    metadata = json.loads(Path(outputs["metadata"]).read_text(encoding="utf-8"))
    assert metadata["image"] == str(case["image"].resolve())
    assert metadata["mask"] == str(case["mask"].resolve())
    assert_lesion_kept(outputs["samples"], case["image"], case["mask"])


def sample_args(case: dict[str, Path], out: Path) -> list[str]:
    return [
        "sample", "--image", str(case["image"]), "--mask", str(case["mask"]),
        "--checkpoint", str(case["checkpoint"]), "--out", str(out),
        "--samples", "1", "--steps", "1", "--device", "cpu", "--progress", "json",
    ]


def test_non_ascii_paths_through_the_command_line(unicode_case):
    out = unicode_case["root"] / "cli" / OUTPUT_FOLDER
    result = run_engine(*sample_args(unicode_case, out))
    assert result.returncode == 0, result.stderr
    events = json_events(result.stdout)
    assert events[-1]["event"] == "done"
    check_outputs(events[-1], out, unicode_case)

    result = run_engine("info", "--checkpoint", unicode_case["checkpoint"])  # text output, non-ASCII path
    assert result.returncode == 0, result.stderr


@contextlib.contextmanager
def slicer_free_library():
    """The Slicer module's Qt- and Slicer-free modules ``engine`` and ``process``.

    ``PowdrOutpaintLib/__init__.py`` imports the scene logic (and so ``slicer``); importing
    ``slicer`` (slicer-core) from here would also import every ``Testing/slicer`` file as a
    ``slicer.*`` module (slicer-core extends its package path with any ``slicer`` folder on
    ``sys.path``). So, unless the package is already loaded, its two modules are loaded under
    a bare package, which is removed again afterwards.
    """
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    loaded = sys.modules.get("PowdrOutpaintLib")
    if loaded is not None and hasattr(loaded, "WorkerProcess"):  # the real package, fully imported
        yield importlib.import_module("PowdrOutpaintLib.engine"), importlib.import_module("PowdrOutpaintLib.process")
        return

    def ours(name: str) -> bool:
        return name == "PowdrOutpaintLib" or name.startswith("PowdrOutpaintLib.")

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    folder = MODULE_DIR / "PowdrOutpaintLib"
    package = importlib.util.module_from_spec(
        importlib.machinery.ModuleSpec("PowdrOutpaintLib", None, is_package=True))
    package.__path__ = [str(folder)]
    sys.modules["PowdrOutpaintLib"] = package
    try:
        yield importlib.import_module("PowdrOutpaintLib.engine"), importlib.import_module("PowdrOutpaintLib.process")
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_non_ascii_paths_through_the_slicer_worker_runner(unicode_case):
    with slicer_free_library() as (engine, process):
        run_through_worker_runner(unicode_case, engine.EngineRunner, process.WorkerProcess)


def run_through_worker_runner(unicode_case, EngineRunner, WorkerProcess):
    out = unicode_case["root"] / "worker" / OUTPUT_FOLDER
    runner = EngineRunner(sys.executable)  # the module's own command line and environment
    worker = WorkerProcess(runner.command(*sample_args(unicode_case, out)), env=runner.environment(),
                           cwd=str(MODULE_DIR)).start()
    messages = worker.wait(timeout=300)
    assert worker.returnCode == 0, worker.logText
    events = [m.value for m in messages if m.kind == "event"]
    assert not [e for e in events if e["event"] == "error"], events
    done = [e for e in events if e["event"] == "done"]
    assert len(done) == 1, worker.logText
    check_outputs(done[0], out, unicode_case)
    assert "\ufffd" not in worker.logText  # nothing the runner could not decode


def test_a_console_that_cannot_encode_the_path(tmp_path):
    """A Windows console or pipe in a legacy code page cannot print "東京": the command still succeeds."""
    checkpoint = tmp_path / "東京 été" / "tiny.pt"
    result = run_engine("init-checkpoint", "--preset", "tiny", "--out", checkpoint, PYTHONIOENCODING="ascii")
    assert result.returncode == 0, result.stderr
    assert checkpoint.is_file()
    assert "\\u6771\\u4eac \\xe9t\\xe9" in result.stdout  # escaped, not a UnicodeEncodeError


def test_a_torch_built_for_numpy_1_beside_numpy_2_gets_one_sentence(monkeypatch):
    """torch < 2.3 with NumPy 2 (possible in a Slicer whose NumPy is 2.x): a clear error, not a traceback."""
    import torch

    from powdr_outpaint.errors import PowdrError
    from powdr_outpaint.model.runtime import resolve_device

    assert resolve_device("cpu").type == "cpu"

    def unavailable(array):
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch, "from_numpy", unavailable)
    with pytest.raises(PowdrError, match="install torch 2.3 or newer, or numpy<2"):
        resolve_device("cpu")
