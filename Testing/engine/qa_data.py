"""Helpers shared by the quality-assurance tests (metrics, evaluate, generate, export).

The sample data are real BraTS cases from ``../shared/data/brats18`` (see
Testing/conftest.py). Tests that run the model many times use copies reduced to every
second voxel (120 x 120 x 78 at 2 mm): still real anatomy and labels, eight times
less to write, so a case takes a second or two on two CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "PowdrOutpaint"


def case_files(case_dir: Path) -> dict[str, Path]:
    """{'image', 'mask', 'name'} of a BraTS case folder."""
    return {
        "image": case_dir / f"{case_dir.name}_t1.nii.gz",
        "mask": case_dir / f"{case_dir.name}_seg.nii.gz",
        "name": case_dir.name,
    }


def reduced_cases(brats_dir: Path, dest: Path, count: int) -> list[dict[str, Path]]:
    """Copies of the first ``count`` BraTS cases at every second voxel, one folder per case."""
    sources = sorted(p for p in brats_dir.iterdir() if p.is_dir() and p.name.startswith("Brats18_"))[:count]
    cases = []
    for source in sources:
        folder = dest / source.name
        folder.mkdir(parents=True, exist_ok=True)
        for kind in ("t1", "seg"):
            image = nib.load(str(source / f"{source.name}_{kind}.nii.gz"))
            data = np.asarray(image.dataobj)[::2, ::2, ::2]
            affine = image.affine.copy()
            affine[:3, :3] *= 2.0
            nib.save(nib.Nifti1Image(data, affine, image.header), str(folder / f"{source.name}_{kind}.nii.gz"))
        cases.append(case_files(folder))
    return cases


def run_cli(*argv: object) -> tuple[int, str, str]:
    """``powdr-outpaint ARGV`` in this process; returns (exit code, stdout, stderr)."""
    from powdr_outpaint.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def subprocess_env() -> dict[str, str]:
    """The environment for ``python -m powdr_outpaint`` in a child process (engine importable)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def cli_command(*argv: object) -> list[str]:
    return [sys.executable, "-m", "powdr_outpaint", *map(str, argv)]


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine
