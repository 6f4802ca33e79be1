"""Where the engine is and how to start it: the Python that runs it, its environment, its command line.

The engine (``powdr_outpaint``) is shipped inside the module folder and run as
``python -m powdr_outpaint COMMAND ...``. By default the Python is Slicer's own
(``PythonSlicer``, which sets up Slicer's environment itself); ``POWDR_OUTPAINT_PYTHON``
names another interpreter, which then gets the environment Slicer was started with, not
Slicer's own ``PYTHONHOME``/``PYTHONPATH``/library paths, which would break it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .dependencies import missingRequirements, pipCommandHint
from .progress import PowdrOutpaintError

__all__ = [
    "MODULE_DIR",
    "ENGINE_PACKAGE",
    "defaultCheckpointPath",
    "EngineRunner",
]

#: Folder of the module (holds PowdrOutpaint.py, PowdrOutpaintLib/ and the engine powdr_outpaint/)
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE_PACKAGE = "powdr_outpaint"
DEMO_CHECKPOINT_NAME = "powdr_demo_brain_t1.pt"


def defaultCheckpointPath() -> str:
    """The bundled demo model: in the module's Resources when built, the repository's when run from source."""
    candidates = [
        os.path.join(MODULE_DIR, "Resources", "Models", DEMO_CHECKPOINT_NAME),
        os.path.join(os.path.dirname(MODULE_DIR), "Resources", "Models", DEMO_CHECKPOINT_NAME),
    ]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return ""


def _slicerApp():
    try:
        from slicer import app  # only inside the Slicer application
    except ImportError:
        return None
    return app


def startupEnvironment() -> dict[str, str]:
    """The environment Slicer was started with (without its own Python and library settings).

    Outside the Slicer application this process's environment is already the user's own.
    """
    if _slicerApp() is not None:
        import slicer.util

        return dict(slicer.util.startupEnvironment())
    return dict(os.environ)


class EngineRunner:
    """Builds and runs engine command lines.

    :param pythonExecutable: the interpreter for the engine; None uses Slicer's own
        (``PythonSlicer`` in Slicer, the running interpreter elsewhere).
    """

    def __init__(self, pythonExecutable: str | None = None):
        self.pythonExecutable = pythonExecutable

    @staticmethod
    def defaultPythonExecutable() -> str:
        """Slicer's ``PythonSlicer`` inside Slicer, else the running interpreter."""
        app = _slicerApp()
        if app is None:
            return sys.executable
        found = shutil.which("PythonSlicer")
        if found:
            return found
        suffix = ".exe" if os.name == "nt" else ""
        candidates = [os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + suffix)]
        slicerHome = getattr(app, "slicerHome", None)
        if slicerHome:
            candidates.append(os.path.join(slicerHome, "bin", "PythonSlicer" + suffix))
        for candidate in candidates:
            if os.path.isfile(candidate):
                return candidate
        raise PowdrOutpaintError("Slicer's Python interpreter (PythonSlicer) was not found.")

    @property
    def usesOtherPython(self) -> bool:
        """True when the engine runs in an interpreter the user chose, not Slicer's own."""
        return bool(self.pythonExecutable)

    def python(self) -> str:
        return self.pythonExecutable or self.defaultPythonExecutable()

    def environment(self) -> dict[str, str]:
        """The worker's environment, with the module folder first on PYTHONPATH (the engine lives there)."""
        # Slicer's own environment points Python at Slicer's files (PYTHONHOME, PYTHONPATH,
        # PYTHONNOUSERSITE, library paths): right for PythonSlicer, fatal for another interpreter.
        environment = startupEnvironment() if self.usesOtherPython else dict(os.environ)
        pythonPath = environment.get("PYTHONPATH", "")
        parts = [MODULE_DIR] + [part for part in pythonPath.split(os.pathsep) if part and part != MODULE_DIR]
        environment["PYTHONPATH"] = os.pathsep.join(parts)
        environment["PYTHONUNBUFFERED"] = "1"
        environment["PYTHONIOENCODING"] = "utf-8"
        return environment

    def command(self, subcommand: str, *arguments) -> list[str]:
        return [self.python(), "-m", ENGINE_PACKAGE, subcommand] + [str(argument) for argument in arguments]

    def run(self, subcommand: str, *arguments, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a short engine command (``init-checkpoint``...) and capture its output as text."""
        options = {"creationflags": 0x08000000} if os.name == "nt" else {}  # no console window
        # cwd: with "python -m", the working folder comes first on sys.path, so the engine is
        # found even where a launcher rewrites PYTHONPATH
        return subprocess.run(self.command(subcommand, *arguments), env=self.environment(), cwd=MODULE_DIR,
                              capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, **options)

    def checkDependencies(self) -> None:
        """Raise a clear error when the engine's packages are missing from Slicer's Python."""
        if self.usesOtherPython:
            return  # another interpreter: it reports missing packages itself
        missing = missingRequirements()
        if missing:
            names = ", ".join(requirement.distribution for requirement in missing)
            raise PowdrOutpaintError(
                f"Python packages needed by PowdrOutpaint are not installed: {names}. Open the module and "
                f"press Generate once to install them, or run {pipCommandHint(missing)}."
            )


def temporaryRoot() -> str | None:
    """Slicer's temporary folder inside the application (None elsewhere: the system default)."""
    app = _slicerApp()
    path = getattr(app, "temporaryPath", None) if app is not None else None
    return path if path and os.path.isdir(path) else None
