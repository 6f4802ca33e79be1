"""Python packages the outpainting worker needs, checked and installed inside Slicer.

* Only what the worker's ``sample``, ``info`` and ``init-checkpoint`` commands import is
  installed (:data:`SLICER_REQUIREMENTS`); the command-line tools' QA extras (scikit-image,
  matplotlib) and the test oracle (PyWavelets) are not.
* PyTorch comes from the PyTorch extension (``PyTorchUtils``, which picks the wheel that
  fits the GPU driver) when that extension is installed, and from pip otherwise. What is
  installed is capped below 2.13 (see :data:`TORCH_INSTALL_SPECIFIER`); a newer torch that
  is already there is accepted.
* The other packages are installed with Slicer's own helpers
  (``slicer.packaging.pip_ensure`` where it exists, 5.12 and later, else
  ``slicer.util.pip_install``), always as a list of arguments so that paths with spaces or
  backslashes survive.
* The user is asked once, in one dialog listing everything that is missing.
* Packages Slicer already ships (numpy, scipy, SimpleITK, ...) are never replaced:
  only missing packages are installed, and pip gets a constraints file that pins every
  shipped package to the version already present.

Nothing here imports Qt; the question is asked through a callback supplied by the caller.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "Requirement",
    "SLICER_REQUIREMENTS",
    "SLICER_SHIPPED_PACKAGES",
    "DependencyError",
    "missingRequirements",
    "ensureDependencies",
    "installationInProgress",
    "pipCommandHint",
]


@dataclass(frozen=True)
class Requirement:
    """A pip requirement and the module name it is imported as."""

    distribution: str  # name on PyPI
    specifier: str  # versions accepted when already installed, e.g. ">=2.1"
    importName: str  # top-level module
    installSpecifier: str = ""  # versions to install, when narrower than the accepted ones

    @property
    def pipSpec(self) -> str:
        return f"{self.distribution}{self.installSpecifier or self.specifier}"


#: What torch may be installed into Slicer. torch 2.13 changed how its wheels carry their
#: licence files (PEP 639), and a fresh 2.13 install is reported to leave Slicer 5.12.2 on
#: Windows unable to import torch (Slicer/light-the-torch issue 176; capping below 2.13 was
#: the confirmed workaround). 2.1 is the oldest torch the engine supports; Slicer 5.8's
#: Python 3.9 gets at most torch 2.8, the last release with Python 3.9 wheels.
TORCH_INSTALL_SPECIFIER = ">=2.1,<2.13"

# What the worker imports for sample, info and init-checkpoint (a test runs them with every
# other third-party package blocked). The accepted versions equal pyproject.toml's.
SLICER_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", ">=2.1", "torch", installSpecifier=TORCH_INSTALL_SPECIFIER),
    Requirement("numpy", ">=1.24", "numpy"),
    Requirement("scipy", ">=1.10", "scipy"),
    Requirement("nibabel", ">=5.0", "nibabel"),
    Requirement("pynrrd", ">=1.0", "nrrd"),
    Requirement("tqdm", ">=4.60", "tqdm"),
)

# Needed by the module itself (whole-process-tree cancel); optional, there is a fallback.
MODULE_REQUIREMENTS: tuple[Requirement, ...] = (Requirement("psutil", ">=5.9", "psutil"),)

# Distributions that come with Slicer's Python: never upgraded, downgraded or removed here.
SLICER_SHIPPED_PACKAGES: tuple[str, ...] = (
    "numpy", "scipy", "SimpleITK", "vtk", "Pillow", "pydicom", "dicomweb-client",
    "requests", "urllib3", "certifi", "idna", "charset-normalizer", "chardet",
    "pip", "setuptools", "wheel", "packaging", "six", "python-dateutil", "retry",
    "GitPython", "gitdb", "smmap", "jsonschema",
)


class DependencyError(RuntimeError):
    """Required packages are missing and were not (or could not be) installed."""


# Slicer 5.8/5.10's pip_install processes GUI events for every line pip prints, so a second
# click on Generate can arrive while an installation runs: it must not start another one.
_installing = False


def installationInProgress() -> bool:
    """True while :func:`ensureDependencies` is installing packages."""
    return _installing


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _installedVersion(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _satisfied(requirement: Requirement) -> bool:
    if importlib.util.find_spec(requirement.importName) is None:
        return False
    version = _installedVersion(requirement.distribution)
    if version is None or not requirement.specifier:
        return True  # importable (e.g. bundled without metadata): accept it
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(version) in SpecifierSet(requirement.specifier)
    except Exception:  # noqa: BLE001 - no 'packaging' or an odd version string: importable is enough
        return True


def missingRequirements(includeOptional: bool = False) -> list[Requirement]:
    """Requirements that are not importable in this Python, or too old.

    A shipped package that is present is never reported (it is never replaced), even if
    older than the engine would like.
    """
    shipped = {_canonical(name) for name in SLICER_SHIPPED_PACKAGES}
    requirements = list(SLICER_REQUIREMENTS) + (list(MODULE_REQUIREMENTS) if includeOptional else [])
    missing = []
    for requirement in requirements:
        if _canonical(requirement.distribution) in shipped and importlib.util.find_spec(requirement.importName):
            continue
        if not _satisfied(requirement):
            missing.append(requirement)
    return missing


def pipCommandHint(requirements: list[Requirement]) -> str:
    """A line users can paste into Slicer's Python console to install ``requirements``."""
    return f"slicer.util.pip_install({[requirement.pipSpec for requirement in requirements]!r})"


def _writeConstraintsFile() -> str:
    """Pin every shipped package that is installed to its current version (pip -c file)."""
    lines = []
    for name in SLICER_SHIPPED_PACKAGES:
        version = _installedVersion(name)
        if version:
            lines.append(f"{name}=={version}")
    handle, path = tempfile.mkstemp(prefix="PowdrOutpaint-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")
    return path


def _pyTorchUtilsLogic():
    """The PyTorch extension's logic, or None when that extension is not installed."""
    try:
        import PyTorchUtils  # provided by the PyTorch extension
    except ImportError:
        return None
    try:
        return PyTorchUtils.PyTorchUtilsLogic()
    except Exception as error:  # noqa: BLE001 - a broken extension must not stop us using pip
        logging.warning(f"The PyTorch extension is present but could not be used: {error}")
        return None


def _installTorch(torchRequirement: Requirement, constraintsPath: str) -> None:
    torchLogic = _pyTorchUtilsLogic()
    if torchLogic is not None:
        logging.info("Installing PyTorch with the PyTorch extension (PyTorchUtils)")
        torch = torchLogic.installTorch(
            askConfirmation=False,
            torchVersionRequirement=torchRequirement.installSpecifier or torchRequirement.specifier)
        if torch is None:
            raise DependencyError("PyTorch was not installed by the PyTorch extension.")
        return
    logging.info("Installing PyTorch with pip (install the PyTorch extension to get the wheel that fits your GPU)")
    _pipInstall([torchRequirement], constraintsPath)


def _pipEnsureFunction():
    """``slicer.packaging.pip_ensure`` (Slicer 5.12 and later), or None."""
    try:
        module = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return getattr(module, "pip_ensure", None)


def _pipInstall(requirements: list[Requirement], constraintsPath: str) -> None:
    """Install with Slicer's helpers: pip_ensure when this Slicer has it, else pip_install.

    Arguments go as a list: Slicer 5.8 and 5.10 split a single string with ``shlex.split``,
    which breaks Windows paths (backslashes, spaces) such as the constraints file's.
    """
    import slicer

    specs = [requirement.pipSpec for requirement in requirements]
    pipEnsure = _pipEnsureFunction()
    if pipEnsure is not None:
        # pip_ensure skips installing in testing mode unless told otherwise; being called here
        # means the packages are needed now (the self-test, a batch script, the user's OK).
        options = {"constraints": constraintsPath, "prompt_install": False, "requester": "PowdrOutpaint",
                   "skip_in_testing": False}
        accepted = inspect.signature(pipEnsure).parameters
        pipEnsure(specs, **{name: value for name, value in options.items() if name in accepted})
        return
    slicer.util.pip_install(specs + ["-c", constraintsPath])


def ensureDependencies(
    askConfirmation: Callable[[str], bool] | None = None,
    includeOptional: bool = True,
) -> bool:
    """Make sure the engine's packages are importable by Slicer's Python.

    :param askConfirmation: called once with a message listing what will be installed; return
        True to go ahead. ``None`` installs without asking (batch use).
    :return: True when everything is available (already, or after installing); False when the
        user declined.
    :raises DependencyError: when installation failed, or is already running.
    """
    global _installing
    if _installing:
        raise DependencyError("PowdrOutpaint's Python packages are being installed already: "
                              "wait until that installation has finished.")
    missing = missingRequirements(includeOptional=False)
    if not missing:
        return True  # the optional packages are only installed together with required ones
    optional = [r for r in MODULE_REQUIREMENTS if includeOptional and not _satisfied(r)]
    names = ", ".join(requirement.distribution for requirement in missing + optional)
    torchNote = ""
    if any(requirement.importName == "torch" for requirement in missing):
        via = "the PyTorch extension" if _pyTorchUtilsLogic() is not None else "pip"
        torchNote = f" PyTorch (about 1-3 GB) is installed with {via}."
    message = (
        f"PowdrOutpaint needs these Python packages, which are not installed yet: {names}.{torchNote}"
        " Packages that come with Slicer are left as they are. Install now? This can take several minutes."
    )
    if askConfirmation is not None and not askConfirmation(message):
        logging.info("Installation of PowdrOutpaint dependencies declined")
        return False
    _installing = True
    constraintsPath = _writeConstraintsFile()
    try:
        torchRequirements = [r for r in missing if r.importName == "torch"]
        otherRequirements = [r for r in missing if r.importName != "torch"]
        if torchRequirements:
            _installTorch(torchRequirements[0], constraintsPath)
        if otherRequirements:
            _pipInstall(otherRequirements, constraintsPath)
        if optional:
            try:
                _pipInstall(optional, constraintsPath)
            except Exception as error:  # noqa: BLE001 - optional: cancel falls back to process groups
                logging.warning(f"Optional package {optional[0].distribution} was not installed: {error}")
    except DependencyError:
        raise
    except Exception as error:
        raise DependencyError(
            f"Installing {', '.join(r.distribution for r in missing)} failed ({error}). "
            f"Try in the Python console: {pipCommandHint(missing)}"
        ) from error
    finally:
        _installing = False
        try:
            os.remove(constraintsPath)
        except OSError:
            pass
    importlib.invalidate_caches()
    stillMissing = missingRequirements()
    if stillMissing:
        raise DependencyError(
            f"{', '.join(r.distribution for r in stillMissing)} could not be installed. "
            f"Try in the Python console: {pipCommandHint(stillMissing)}, then restart Slicer."
        )
    return True
