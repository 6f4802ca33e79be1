"""Fixtures for testing the Slicer module's logic under the ``slicer-core`` Python package.

slicer-core provides the real MRML classes and module logics but no application: no
``slicer.app``, no ``slicer.mrmlScene`` and no Qt. The ``core`` fixture builds what the
application would: a scene set as ``slicer.mrmlScene`` and a ``vtkSlicerApplicationLogic``
with the Colors, Volumes, Segmentations and Sequences logics registered on it.

slicer-core is a test requirement: if it cannot be imported the tests fail (they are not
skipped). The BraTS cases are optional: tests that need them skip with a message when
``../shared/data/brats18`` is absent. ``tinyFourSequenceCheckpoint`` is an untrained model of
four sequences (T1, T1ce, T2, FLAIR) for the multi-sequence tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_DIR = REPOSITORY / "PowdrOutpaint"
BRATS_DIR = (REPOSITORY / ".." / "shared" / "data" / "brats18").resolve()
BRATS_CASE = "Brats18_CBICA_ABM_1"

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

import slicer  # noqa: E402 - slicer-core; an import error here must fail the run
import slicer.util  # noqa: E402


@dataclass
class SlicerCore:
    scene: object
    applicationLogic: object
    colorLogic: object
    volumesLogic: object
    segmentationsLogic: object
    sequencesLogic: object

    def loadVolume(self, path: Path, name: str, labelmap: bool = False):
        node = self.volumesLogic.AddArchetypeVolume(str(path), name, 1 if labelmap else 0)
        assert node is not None, f"could not load {path}"
        return node

    def nodeIds(self) -> set[str]:
        return {self.scene.GetNthNode(index).GetID() for index in range(self.scene.GetNumberOfNodes())}


def _registerLogic(applicationLogic, scene, name, logic):
    logic.SetMRMLApplicationLogic(applicationLogic)
    logic.SetMRMLScene(scene)
    applicationLogic.SetModuleLogic(name, logic)
    return logic


def _untilSampling(job, timeoutSeconds: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeoutSeconds
    while job.progress.stage != "sampling" and time.monotonic() < deadline:
        assert not job.poll(), f"the run ended early: {job.state} {job.error}"
        time.sleep(0.1)
    assert job.progress.stage == "sampling"


@pytest.fixture(scope="session")
def untilSampling():
    """``untilSampling(job)``: poll a running job until its worker is sampling (so a cancel hits it mid-run)."""
    return _untilSampling


@pytest.fixture
def core():
    """A fresh scene, set as slicer.mrmlScene, with the module logics the module relies on."""
    scene = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(scene)
    colorLogic = _registerLogic(applicationLogic, scene, "Colors", slicer.vtkSlicerColorLogic())
    volumesLogic = _registerLogic(applicationLogic, scene, "Volumes", slicer.vtkSlicerVolumesLogic())
    segmentationsLogic = _registerLogic(applicationLogic, scene, "Segmentations",
                                        slicer.vtkSlicerSegmentationsModuleLogic())
    sequencesLogic = _registerLogic(applicationLogic, scene, "Sequences", slicer.vtkSlicerSequencesLogic())
    previousScene = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    try:
        yield SlicerCore(scene, applicationLogic, colorLogic, volumesLogic, segmentationsLogic, sequencesLogic)
    finally:
        slicer.mrmlScene = previousScene
        for logic in (sequencesLogic, segmentationsLogic, volumesLogic, colorLogic):
            logic.SetMRMLScene(None)
        applicationLogic.SetMRMLScene(None)
        scene.Clear(1)


@pytest.fixture(scope="session")
def bratsCase() -> dict[str, Path]:
    """Paths of one BraTS 2018 case (T1 and expert segmentation)."""
    folder = BRATS_DIR / BRATS_CASE
    image = folder / f"{BRATS_CASE}_t1.nii.gz"
    segmentation = folder / f"{BRATS_CASE}_seg.nii.gz"
    if not image.is_file() or not segmentation.is_file():
        pytest.skip(f"BraTS test data not found at {folder} (see ../shared/data/README.md); "
                    "these tests need a BraTS 2018 case")
    return {"image": image, "segmentation": segmentation}


def engineEnvironment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(MODULE_DIR)] + [
        part for part in environment.get("PYTHONPATH", "").split(os.pathsep) if part])
    return environment


@pytest.fixture(scope="session")
def tinyCheckpoint(tmp_path_factory) -> Path:
    """An initialised (untrained) tiny checkpoint written by the engine."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    completed = subprocess.run(
        [sys.executable, "-m", "powdr_outpaint", "init-checkpoint", "--preset", "tiny", "--out", str(path)],
        env=engineEnvironment(), capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, f"init-checkpoint failed:\n{completed.stderr}"
    return path


FOUR_SEQUENCES = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="session")
def tinyFourSequenceCheckpoint(tmp_path_factory) -> Path:
    """An initialised (untrained) tiny checkpoint of a model that makes T1, T1ce, T2 and FLAIR together."""
    path = tmp_path_factory.mktemp("checkpoint4") / "tiny-t1-t1ce-t2-flair.pt"
    completed = subprocess.run(
        [sys.executable, "-m", "powdr_outpaint", "init-checkpoint", "--preset", "tiny",
         "--modality", ",".join(FOUR_SEQUENCES), "--out", str(path)],
        env=engineEnvironment(), capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, f"init-checkpoint failed:\n{completed.stderr}"
    return path


@pytest.fixture
def bratsScene(core, bratsCase):
    """The BraTS case loaded: T1 as a scalar volume under a patient/study, seg as label map and segmentation."""
    volume = core.loadVolume(bratsCase["image"], f"{BRATS_CASE}_t1")
    labelmap = core.loadVolume(bratsCase["segmentation"], f"{BRATS_CASE}_seg", labelmap=True)
    segmentation = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{BRATS_CASE}_segmentation")
    segmentation.CreateDefaultDisplayNodes()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 3  # labels 1, 2, 4

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(core.scene)
    patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "patient")
    study = shNode.CreateStudyItem(patient, "study")
    for node in (volume, labelmap, segmentation):
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, study)
        else:
            shNode.CreateItem(study, node)
    return {
        "core": core,
        "volume": volume,
        "labelmap": labelmap,
        "segmentation": segmentation,
        "study": study,
        "paths": bratsCase,
        "volumeArray": np.array(slicer.util.arrayFromVolume(volume)),
        "labelArray": np.array(slicer.util.arrayFromVolume(labelmap)),
    }

