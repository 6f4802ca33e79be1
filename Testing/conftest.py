"""Shared fixtures: the BraTS sample data beside the repository and small checkpoints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BRATS = Path(os.environ.get("POWDR_BRATS_DIR", REPO.parent / "shared" / "data" / "brats18"))

# The engine lives inside the Slicer module folder; make it importable without installation.
sys.path.insert(0, str(REPO / "PowdrOutpaint"))


def brats_cases() -> list[Path]:
    if not BRATS.is_dir():
        return []
    return sorted(p for p in BRATS.iterdir() if p.is_dir() and p.name.startswith("Brats18_"))


@pytest.fixture(scope="session")
def brats_dir() -> Path:
    if not brats_cases():
        pytest.skip(f"BraTS sample data not found at {BRATS} (set POWDR_BRATS_DIR or place ../shared beside the repository)")
    return BRATS


@pytest.fixture(scope="session")
def brats_case(brats_dir: Path) -> dict[str, Path]:
    """The first BraTS case: {'image': T1 path, 'mask': seg path, 'name': case name}."""
    case = brats_cases()[0]
    return {"image": case / f"{case.name}_t1.nii.gz", "mask": case / f"{case.name}_seg.nii.gz", "name": case.name}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from powdr_outpaint.model.checkpoint import initial_checkpoint

    return initial_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny.pt", "tiny", seed=0)
