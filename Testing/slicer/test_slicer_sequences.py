"""A model of several MRI sequences (T1, T1ce, T2, FLAIR) in the Slicer logic, on a real BraTS case.

Real MRML (slicer-core), the real worker process and an untrained tiny four-sequence checkpoint.
The four sequences of Brats18_CBICA_ABM_1 are reduced to 2 mm and cropped around the tumour so
that a run takes seconds; FLAIR is cropped differently from the others, so that it is on a grid
of its own (other size and origin) and a result put on the wrong sequence's grid shows.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
import vtk

from PowdrOutpaintLib import PowdrOutpaintError, PowdrOutpaintLogic, PowdrOutpaintResult

# As in conftest.py (not imported from there: slicer-core imports this folder's modules while
# conftest.py itself is being imported)
BRATS_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "brats18").resolve()
BRATS_CASE = "Brats18_CBICA_ABM_1"
FOUR_SEQUENCES = ("t1", "t1ce", "t2", "flair")

SAMPLES = 2
STEPS = 2
# (k, j, i) slices of the 1 mm BraTS grid: every other voxel, cropped around the tumour
CROP = (slice(0, 155, 2), slice(40, 232, 2), slice(40, 232, 2))
FLAIR_CROP = (slice(4, 150, 2), slice(30, 220, 2), slice(48, 226, 2))
# What the user called the volumes: three say their sequence, "echo" (the T2) does not
VOLUME_NAMES = {"t1": f"{BRATS_CASE}_t1", "t1ce": f"{BRATS_CASE}_t1ce", "t2": "echo", "flair": f"{BRATS_CASE}_flair"}
LABELS = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}


def ijkToRas(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def reduced(core, path, name, crop, labelmap=False):
    """The volume at ``path`` on every other voxel of ``crop``, as a new node (the full one is removed)."""
    full = core.loadVolume(path, f"full {name}", labelmap=labelmap)
    array = np.ascontiguousarray(slicer.util.arrayFromVolume(full)[crop])
    step = np.diag([2.0, 2.0, 2.0, 1.0])
    step[:3, 3] = [crop[2].start, crop[1].start, crop[0].start]  # (i, j, k) of the first voxel
    matrix = ijkToRas(full) @ step
    core.scene.RemoveNode(full)
    className = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    return slicer.util.addVolumeFromArray(array, matrix, name, className)


@pytest.fixture
def fourSequences(core):
    """The four sequences and the expert segmentation of one BraTS case, reduced; under a patient/study."""
    folder = BRATS_DIR / BRATS_CASE
    paths = {sequence: folder / f"{BRATS_CASE}_{sequence}.nii.gz" for sequence in FOUR_SEQUENCES + ("seg",)}
    if not all(path.is_file() for path in paths.values()):
        pytest.skip(f"BraTS test data not found at {folder} (see ../shared/data/README.md)")
    volumes = {sequence: reduced(core, paths[sequence], VOLUME_NAMES[sequence],
                                 FLAIR_CROP if sequence == "flair" else CROP)
               for sequence in FOUR_SEQUENCES}
    labelmap = reduced(core, paths["seg"], f"{BRATS_CASE}_seg", CROP, labelmap=True)
    segmentation = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{BRATS_CASE}_segmentation")
    segmentation.CreateDefaultDisplayNodes()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(core.scene)
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "patient"), "study")
    for node in list(volumes.values()) + [labelmap, segmentation]:
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, study)
        else:
            shNode.CreateItem(study, node)
    # The lesion on each sequence's grid: the FLAIR grid's voxels are voxels of the full grid too
    import nibabel

    fullLabel = np.asanyarray(nibabel.load(str(paths["seg"])).dataobj).transpose(2, 1, 0)  # (k, j, i)
    expectedLesion = {sequence: fullLabel[FLAIR_CROP if sequence == "flair" else CROP] > 0
                      for sequence in FOUR_SEQUENCES}
    return {
        "core": core,
        "volumes": volumes,
        "arrays": {sequence: np.array(slicer.util.arrayFromVolume(node)) for sequence, node in volumes.items()},
        "labelmap": labelmap,
        "segmentation": segmentation,
        "study": study,
        "expectedLesion": expectedLesion,
    }


def temporaryFolders() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("PowdrOutpaint-")}


def test_four_sequences_come_back_on_each_inputs_grid_with_the_lesion_kept(
        fourSequences, tinyFourSequenceCheckpoint, tmp_path):
    core, volumes, arrays = fourSequences["core"], fourSequences["volumes"], fourSequences["arrays"]
    assert arrays["flair"].shape != arrays["t1"].shape  # FLAIR is on a grid of its own
    logic = PowdrOutpaintLogic()
    progress = []
    temporaryBefore = temporaryFolders()
    nodesBefore = core.nodeIds()
    # Given in another order than the model's: the result follows the model's channel order
    result = logic.process({"flair": volumes["flair"], "t2": volumes["t2"], "T1": volumes["t1"],
                            "t1ce": volumes["t1ce"]}, fourSequences["segmentation"], tinyFourSequenceCheckpoint,
                           numberOfSamples=SAMPLES, numberOfSteps=STEPS, seed=0, device="cpu",
                           progressCallback=progress.append)

    assert isinstance(result, PowdrOutpaintResult)
    assert [own.sequenceName for own in result.sequenceResults] == list(FOUR_SEQUENCES)
    assert result.sampleNodes is result.sequenceResults[0].sampleNodes  # the first sequence's, as before
    samplesBySequence = {}
    for own in result.sequenceResults:
        sequence = own.sequenceName
        volume, inputArray = volumes[sequence], arrays[sequence]
        assert own.inputVolume is volume
        # Every output is on this sequence's own input grid
        for node in own.sampleNodes + [own.meanNode, own.stdNode, own.lesionNode]:
            assert node.GetScene() is core.scene
            np.testing.assert_array_equal(ijkToRas(node), ijkToRas(volume), err_msg=node.GetName())
            assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions(), node.GetName()
        # Names say the sequence: the input's name when it does already, else with the sequence added
        base = VOLUME_NAMES[sequence] if sequence != "t2" else "echo_t2"
        assert [node.GetName() for node in own.sampleNodes] == [f"{base}_outpaint_s{i:02d}" for i in range(SAMPLES)]
        assert (own.meanNode.GetName(), own.stdNode.GetName()) == (f"{base}_outpaint_mean", f"{base}_outpaint_std")
        assert own.lesionNode.GetName() == f"{base}_outpaint_lesion"

        # The lesion, on this grid, is the expert segmentation; its voxels are exactly the input's
        lesion = slicer.util.arrayFromVolume(own.lesionNode) > 0
        np.testing.assert_array_equal(lesion, fourSequences["expectedLesion"][sequence], err_msg=sequence)
        samples = [np.array(slicer.util.arrayFromVolume(node)) for node in own.sampleNodes]
        for index, sample in enumerate(samples):
            np.testing.assert_array_equal(sample[lesion], inputArray[lesion], err_msg=f"{sequence} sample {index}")
            assert np.isfinite(sample).all()
        std = slicer.util.arrayFromVolume(own.stdNode)
        assert float(np.abs(std[lesion]).max()) == 0.0
        brainOutside = (inputArray > 0) & ~lesion
        assert np.mean(std[brainOutside] > 0) > 0.5, sequence  # the samples differ around the lesion
        np.testing.assert_allclose(slicer.util.arrayFromVolume(own.meanNode),
                                   np.mean(np.stack(samples).astype(np.float64), axis=0), rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), inputArray)  # input untouched
        samplesBySequence[sequence] = samples
    # Each sequence has its own synthesis, not a copy of another's
    outside = ~fourSequences["expectedLesion"]["t1"]
    assert not np.array_equal(samplesBySequence["t1"][0][outside], samplesBySequence["t2"][0][outside])

    # One browser: its slider shows the same sample of every sequence
    browser = result.browserNode
    assert all(own.browserNode is browser for own in result.sequenceResults)
    assert browser.GetNumberOfSynchronizedSequenceNodes() == len(FOUR_SEQUENCES) - 1
    browser.SetSelectedItemNumber(SAMPLES - 1)
    for own in result.sequenceResults:
        assert own.proxyNode is not None and own.proxyNode.GetName() == own.baseName + "_outpaint_sample"
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(own.proxyNode),
                                      samplesBySequence[own.sequenceName][SAMPLES - 1])

    # One folder under the case's study, a sub-folder per sequence
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(core.scene)
    assert shNode.GetItemParent(result.folderItemId) == fourSequences["study"]
    assert shNode.GetItemName(result.folderItemId) == f"{BRATS_CASE} outpaint"
    for own in result.sequenceResults:
        for node in own.sampleNodes + [own.meanNode, own.stdNode, own.lesionNode, own.sequenceNode]:
            folder = shNode.GetItemParent(shNode.GetItemByDataNode(node))
            assert shNode.GetItemName(folder) == LABELS[own.sequenceName], node.GetName()
            assert shNode.GetItemParent(folder) == result.folderItemId

    stages = [item.stage for item in progress]
    assert "sampling" in stages and stages[-1] == "importing"
    assert temporaryFolders() == temporaryBefore  # the four written inputs are removed

    # Export: every sequence's files, each on its own grid
    import nibabel

    written = logic.exportResult(result, str(tmp_path / "export"))
    names = {os.path.basename(path) for path in written}
    for own in result.sequenceResults:
        base = own.baseName
        assert {f"{base}_outpaint_s00.nii.gz", f"{base}_outpaint_s01_lesion.nii.gz", f"{base}_outpaint_std.nii.gz",
                f"{base}_outpaint.json"} <= names
        assert json.loads((tmp_path / "export" / f"{base}_outpaint.json").read_text())["sequence"] == own.sequenceName
    flairSample = nibabel.load(str(tmp_path / "export" / f"{VOLUME_NAMES['flair']}_outpaint_s01.nii.gz"))
    assert flairSample.shape == arrays["flair"].shape[::-1]
    assert len(written) == len(FOUR_SEQUENCES) * (2 * SAMPLES + 4)

    logic.removeResult(result)
    assert all(node.GetScene() is None for own in result.sequenceResults
               for node in own.sampleNodes + [own.meanNode, own.stdNode, own.lesionNode, own.sequenceNode])
    assert browser.GetScene() is None
    # Nothing of the run is left but the colour tables later results share; no subject hierarchy folder
    assert {core.scene.GetNodeByID(nodeId).GetName() for nodeId in core.nodeIds() - nodesBefore} == {
        "Inferno (PowdrOutpaint)", "Lesion (PowdrOutpaint)"}
    assert not shNode.GetItemName(result.folderItemId)
    assert shNode.GetNumberOfItemChildren(fourSequences["study"]) == len(FOUR_SEQUENCES) + 2  # inputs, seg


def test_a_missing_sequence_is_one_clear_error_and_changes_nothing(fourSequences, tinyFourSequenceCheckpoint):
    core, volumes = fourSequences["core"], fourSequences["volumes"]
    segmentation = fourSequences["segmentation"]
    logic = PowdrOutpaintLogic()
    nodesBefore = core.nodeIds()
    modifiedBefore = {node.GetID(): node.GetMTime() for node in list(volumes.values()) + [segmentation]}
    temporaryBefore = temporaryFolders()

    def error(inputVolume) -> str:
        with pytest.raises(ValueError) as raised:
            logic.process(inputVolume, segmentation, tinyFourSequenceCheckpoint, numberOfSamples=SAMPLES,
                          numberOfSteps=STEPS, device="cpu")
        message = str(raised.value)
        assert "\n" not in message and message.endswith(".") and message.count(". ") == 0, message
        return message

    message = error({"t1": volumes["t1"], "t1ce": volumes["t1ce"], "t2": None})
    assert message == ("This model makes T1, T1ce, T2 and FLAIR together: select a volume for T2 and FLAIR.")
    # One volume for a model of four sequences: it is the first one, the others are named
    assert error(volumes["t1"]).endswith("select a volume for T1ce, T2 and FLAIR too.")
    assert "FLAIR" in error({"t1": volumes["t1"], "t1ce": volumes["t1ce"], "t2": volumes["t2"]})
    # The same volume for two sequences, a sequence the model does not make
    assert error({**volumes, "t2": volumes["t1ce"]}) == (
        f"The same volume '{VOLUME_NAMES['t1ce']}' is selected for T1ce and T2: select each sequence's own volume.")
    assert "DWI is not one of its sequences" in error({**volumes, "dwi": volumes["t1"]})

    assert core.nodeIds() == nodesBefore
    assert {node.GetID(): node.GetMTime() for node in list(volumes.values()) + [segmentation]} == modifiedBefore
    assert temporaryFolders() == temporaryBefore  # nothing written, no worker started
    assert logic.currentJob is None


def test_cancel_with_four_sequences_ends_the_worker_and_adds_no_nodes(fourSequences, tinyFourSequenceCheckpoint,
                                                                      untilSampling):
    psutil = pytest.importorskip("psutil")
    core, volumes = fourSequences["core"], fourSequences["volumes"]
    logic = PowdrOutpaintLogic()
    nodesBefore = core.nodeIds()
    job = logic.process(dict(volumes), fourSequences["segmentation"], tinyFourSequenceCheckpoint,
                        numberOfSamples=4, numberOfSteps=500, device="cpu", waitForCompletion=False)
    worker = psutil.Process(job.worker.pid)
    assert sum(argument == "--image" for argument in job.worker.args) == 4
    assert [argument.split("=")[0] for argument in job.worker.args if argument.endswith(".nrrd")
            and "=" in argument] == list(FOUR_SEQUENCES)
    untilSampling(job)
    tree = [worker] + worker.children(recursive=True)
    temporaryDirectory = job.temporaryDirectory

    logic.cancel()

    assert job.state == "cancelled" and job.result is None
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"still running: {alive}"
    assert core.nodeIds() == nodesBefore
    assert not os.path.exists(temporaryDirectory)


def test_model_card_names_the_four_sequences(tinyFourSequenceCheckpoint, tinyCheckpoint):
    logic = PowdrOutpaintLogic()
    card = logic.readModelCard(tinyFourSequenceCheckpoint)
    assert card["sequences"] == list(FOUR_SEQUENCES) and card["modality"] == "t1,t1ce,t2,flair"
    engine = logic.engine.run("info", "--checkpoint", str(tinyFourSequenceCheckpoint), "--json", timeout=300)
    assert engine.returncode == 0, engine.stderr
    assert card == json.loads(engine.stdout.strip().splitlines()[-1])  # the same card as the engine's
    text = logic.formatModelCard(card)
    assert "Sequences: T1, T1ce, T2, FLAIR" in text.splitlines()[0], text
    assert "one volume per sequence" in text
    single = logic.formatModelCard(logic.readModelCard(tinyCheckpoint))
    assert "Modality: T1" in single and "Sequences" not in single


def test_an_unreadable_checkpoint_is_left_to_the_worker(fourSequences, tmp_path):
    """When the card cannot be read the logic does not guess: the worker's error comes back, nothing is added."""
    core, volumes = fourSequences["core"], fourSequences["volumes"]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    nodesBefore = core.nodeIds()
    with pytest.raises(PowdrOutpaintError) as raised:
        PowdrOutpaintLogic().process(dict(volumes), fourSequences["segmentation"], bad, numberOfSamples=1,
                                     numberOfSteps=1, device="cpu")
    assert raised.value.returnCode == 2 and "Traceback" not in str(raised.value)
    assert core.nodeIds() == nodesBefore
