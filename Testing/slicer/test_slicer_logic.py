"""PowdrOutpaintLogic on a real MRML scene (slicer-core) with a BraTS case and a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import slicer
import slicer.util
import vtk

from PowdrOutpaintLib import PowdrOutpaintError, PowdrOutpaintLogic, PowdrOutpaintResult

SAMPLES = 3
STEPS = 5


def ijkToRas(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def run(logic, volume, lesion, checkpoint, **options) -> PowdrOutpaintResult:
    settings = {"numberOfSamples": SAMPLES, "numberOfSteps": STEPS, "seed": 0, "device": "cpu"}
    settings.update(options)
    return logic.process(volume, lesion, checkpoint, **settings)


def checkResult(result: PowdrOutpaintResult, volume, volumeArray: np.ndarray, samples: int = SAMPLES):
    """The acceptance checks shared by every lesion kind; returns the lesion mask."""
    assert isinstance(result, PowdrOutpaintResult)
    assert len(result.sampleNodes) == samples
    expectedMatrix = ijkToRas(volume)
    expectedDimensions = volume.GetImageData().GetDimensions()
    nodes = result.sampleNodes + [result.meanNode, result.stdNode, result.lesionNode]
    for node in nodes:
        assert node.GetScene() is volume.GetScene()
        np.testing.assert_array_equal(ijkToRas(node), expectedMatrix, err_msg=node.GetName())
        assert node.GetImageData().GetDimensions() == expectedDimensions, node.GetName()
    assert result.lesionNode.IsA("vtkMRMLLabelMapVolumeNode")

    lesion = slicer.util.arrayFromVolume(result.lesionNode) > 0
    assert lesion.any()
    for node in result.sampleNodes:
        sample = slicer.util.arrayFromVolume(node)
        np.testing.assert_array_equal(sample[lesion], volumeArray[lesion], err_msg=node.GetName())
        assert np.isfinite(sample).all()
    std = slicer.util.arrayFromVolume(result.stdNode)
    assert float(np.abs(std[lesion]).max()) == 0.0
    assert (std >= 0).all()
    # The samples differ from each other in the anatomy around the lesion
    brainOutside = (volumeArray > volumeArray.min()) & ~lesion
    assert np.mean(std[brainOutside] > 0) > 0.5

    # The sequence holds the N samples, in order; the browser's proxy shows one of them
    sequence = result.sequenceNode
    assert sequence.GetNumberOfDataNodes() == samples
    for index in range(samples):
        stored = sequence.GetNthDataNode(index)
        assert sequence.GetNthIndexValue(index) == str(index)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(stored),
                                      slicer.util.arrayFromVolume(result.sampleNodes[index]))
    assert result.browserNode.GetNumberOfItems() == samples
    proxy = result.proxyNode
    assert proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode")
    result.browserNode.SetSelectedItemNumber(samples - 1)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.proxyNode),
                                  slicer.util.arrayFromVolume(result.sampleNodes[-1]))

    # The input is untouched
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), volumeArray)
    return lesion


def test_segmentation_lesion(bratsScene, tinyCheckpoint, tmp_path):
    volume, segmentation = bratsScene["volume"], bratsScene["segmentation"]
    scene = bratsScene["core"].scene
    logic = PowdrOutpaintLogic()
    progress = []
    nodesBefore = scene.GetNumberOfNodes()
    result = run(logic, volume, segmentation, tinyCheckpoint, progressCallback=progress.append)

    lesion = checkResult(result, volume, bratsScene["volumeArray"])
    # All three tumour labels (visible segments) form the lesion, on the input grid
    np.testing.assert_array_equal(lesion, bratsScene["labelArray"] > 0)

    # Names follow the input's name
    base = volume.GetName()
    assert [node.GetName() for node in result.sampleNodes] == [f"{base}_outpaint_s{i:02d}" for i in range(SAMPLES)]
    assert result.meanNode.GetName() == f"{base}_outpaint_mean"
    assert result.stdNode.GetName() == f"{base}_outpaint_std"
    assert result.lesionNode.GetName() == f"{base}_outpaint_lesion"
    assert result.sequenceNode.GetName() == f"{base}_outpaint_samples"

    # Mean of the samples (float32 rounding)
    stack = np.stack([slicer.util.arrayFromVolume(node).astype(np.float64) for node in result.sampleNodes])
    np.testing.assert_allclose(slicer.util.arrayFromVolume(result.meanNode), stack.mean(axis=0), rtol=1e-4, atol=1e-3)

    # Progress reached the sampling stage and the end
    stages = [item.stage for item in progress]
    assert "sampling" in stages and stages[-1] == "importing"
    assert any(item.sample == SAMPLES and item.step == STEPS for item in progress)

    # Results are in a folder under the input's study
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert shNode.GetItemParent(result.folderItemId) == bratsScene["study"]
    for node in result.nodes:
        assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == result.folderItemId, node.GetName()

    # The std map is shown in Inferno, thresholded; the lesion with its own colour table
    stdDisplay = result.stdNode.GetDisplayNode()
    assert "Inferno" in stdDisplay.GetColorNode().GetName()
    assert stdDisplay.GetApplyThreshold()
    assert result.lesionNode.GetDisplayNode() is not None

    # No temporary helper nodes are left behind
    names = [scene.GetNthNode(index).GetName() for index in range(scene.GetNumberOfNodes())]
    assert not any(name.startswith("PowdrOutpaintLesionExport") for name in names)
    assert scene.GetNumberOfNodes() > nodesBefore

    # Batch mode: no layout node, showResults says so
    assert logic.showResults(result) is False

    # Export: each sample with its lesion mask, predictable names
    folder = tmp_path / "export"
    written = logic.exportResult(result, str(folder))
    expected = []
    for index in range(SAMPLES):
        expected += [f"{base}_outpaint_s{index:02d}.nii.gz", f"{base}_outpaint_s{index:02d}_lesion.nii.gz"]
    expected += [f"{base}_outpaint_mean.nii.gz", f"{base}_outpaint_std.nii.gz", f"{base}_outpaint_lesion.nii.gz",
                 f"{base}_outpaint.json"]
    assert [os.path.basename(path) for path in written] == expected
    assert sorted(os.listdir(folder)) == sorted(expected)
    import nibabel

    original = nibabel.load(str(bratsScene["paths"]["image"]))
    originalMask = np.asanyarray(nibabel.load(str(bratsScene["paths"]["segmentation"])).dataobj) > 0
    for index in range(SAMPLES):
        image = nibabel.load(str(folder / f"{base}_outpaint_s{index:02d}.nii.gz"))
        mask = np.asanyarray(nibabel.load(str(folder / f"{base}_outpaint_s{index:02d}_lesion.nii.gz")).dataobj)
        np.testing.assert_allclose(image.affine, original.affine, atol=1e-4)
        assert image.shape == original.shape
        np.testing.assert_array_equal(mask > 0, originalMask)
    metadata = json.loads((folder / f"{base}_outpaint.json").read_text())
    assert metadata["options"]["samples"] == SAMPLES
    assert len(metadata["exported_files"]) == len(expected) - 1

    # Removing a result removes all its nodes
    logic.removeResult(result)
    assert all(node.GetScene() is None for node in result.sampleNodes + [result.meanNode, result.sequenceNode])


def test_labelmap_lesion(bratsScene, tinyCheckpoint):
    volume, labelmap = bratsScene["volume"], bratsScene["labelmap"]
    labelArray = bratsScene["labelArray"]
    result = run(PowdrOutpaintLogic(), volume, labelmap, tinyCheckpoint, numberOfSamples=2, sampler="ddim")
    lesion = checkResult(result, volume, bratsScene["volumeArray"], samples=2)
    np.testing.assert_array_equal(lesion, labelArray > 0)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap), labelArray)  # lesion input untouched


def test_labelmap_lesion_with_selected_labels(bratsScene, tinyCheckpoint):
    volume, labelmap = bratsScene["volume"], bratsScene["labelmap"]
    result = run(PowdrOutpaintLogic(), volume, labelmap, tinyCheckpoint, numberOfSamples=2, labels="4")
    lesion = checkResult(result, volume, bratsScene["volumeArray"], samples=2)
    np.testing.assert_array_equal(lesion, bratsScene["labelArray"] == 4)


def test_segmentation_on_another_grid(bratsScene, tinyCheckpoint):
    """A segmentation whose geometry (2 mm voxels, shifted origin) differs from the volume."""
    core, volume = bratsScene["core"], bratsScene["volume"]
    labelArray = bratsScene["labelArray"]
    coarse = core.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "coarse_seg")
    matrix = ijkToRas(bratsScene["labelmap"])
    matrix[:3, :3] *= 2.0
    matrix[:3, 3] += [0.5, -0.5, 0.5]
    coarse.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(coarse, np.ascontiguousarray(labelArray[::2, ::2, ::2]))
    segmentation = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "coarse_segmentation")
    segmentation.CreateDefaultDisplayNodes()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(coarse, segmentation)
    firstSegment = segmentation.GetSegmentation().GetNthSegment(0)
    labelmapName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    geometry = firstSegment.GetRepresentation(labelmapName)
    assert geometry.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))

    # Only the enhancing tumour (label 4) segment, chosen explicitly
    segmentIds = [segmentation.GetSegmentation().GetNthSegmentID(index)
                  for index in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    enhancing = [segmentId for segmentId in segmentIds
                 if segmentation.GetSegmentation().GetSegment(segmentId).GetLabelValue() == 4]
    assert len(enhancing) == 1
    result = run(PowdrOutpaintLogic(), volume, segmentation, tinyCheckpoint, numberOfSamples=2,
                 segmentIds=enhancing)
    lesion = checkResult(result, volume, bratsScene["volumeArray"], samples=2)
    truth = labelArray == 4
    dice = 2 * np.count_nonzero(lesion & truth) / (np.count_nonzero(lesion) + np.count_nonzero(truth))
    assert dice > 0.7, dice


def test_cancel_ends_worker_and_adds_no_nodes(bratsScene, tinyCheckpoint, untilSampling):
    psutil = pytest.importorskip("psutil")
    core, volume = bratsScene["core"], bratsScene["volume"]
    logic = PowdrOutpaintLogic()
    nodesBefore = core.nodeIds()
    states = []
    job = logic.process(volume, bratsScene["segmentation"], tinyCheckpoint, numberOfSamples=4, numberOfSteps=500,
                        seed=3, device="cpu", waitForCompletion=False, completedCallback=lambda j: states.append(j.state))
    assert job.state == "running" and logic.currentJob is job
    worker = psutil.Process(job.worker.pid)
    untilSampling(job)
    tree = [worker] + worker.children(recursive=True)
    temporaryDirectory = job.temporaryDirectory
    assert os.path.isdir(temporaryDirectory)

    logic.cancel()

    assert job.state == "cancelled" and states == ["cancelled"]
    assert job.result is None and logic.currentJob is None
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"still running: {alive}"
    assert core.nodeIds() == nodesBefore
    assert not os.path.exists(temporaryDirectory)
    assert job.wait() is None  # polling a cancelled job is harmless


def test_bad_checkpoint_raises_one_clear_error(bratsScene, tmp_path):
    core, volume = bratsScene["core"], bratsScene["volume"]
    badCheckpoint = tmp_path / "bad.pt"
    badCheckpoint.write_bytes(b"this is not a checkpoint at all")
    nodesBefore = core.nodeIds()
    temporaryBefore = {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("PowdrOutpaint-")}
    with pytest.raises(PowdrOutpaintError) as raised:
        run(PowdrOutpaintLogic(), volume, bratsScene["labelmap"], badCheckpoint)
    message = str(raised.value)
    assert message and "\n" not in message and "Traceback" not in message
    assert message.endswith(".")
    assert raised.value.returnCode == 2
    assert raised.value.log  # the worker's log comes with the error
    assert core.nodeIds() == nodesBefore
    leftovers = {name for name in os.listdir(tempfile.gettempdir())
                 if name.startswith("PowdrOutpaint-")} - temporaryBefore
    assert not leftovers


def test_input_errors_are_reported_before_starting(bratsScene, tinyCheckpoint, tmp_path):
    core, volume, labelmap = bratsScene["core"], bratsScene["volume"], bratsScene["labelmap"]
    logic = PowdrOutpaintLogic()
    with pytest.raises(PowdrOutpaintError, match="does not exist"):
        logic.process(volume, labelmap, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="lesion"):
        logic.process(volume, None, tinyCheckpoint)
    with pytest.raises(ValueError, match="MRI volume"):
        logic.process(labelmap, labelmap, tinyCheckpoint)
    with pytest.raises(ValueError, match="number of samples"):
        logic.process(volume, labelmap, tinyCheckpoint, numberOfSamples=0)
    with pytest.raises(ValueError, match="sampler"):
        logic.process(volume, labelmap, tinyCheckpoint, sampler="euler")

    empty = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    empty.CreateDefaultDisplayNodes()
    empty.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    empty.GetSegmentation().AddEmptySegment("lesion")
    nodesBefore = core.nodeIds()
    with pytest.raises(ValueError, match="empty"):
        logic.process(volume, empty, tinyCheckpoint)
    assert core.nodeIds() == nodesBefore
    with pytest.raises(ValueError, match="no segment"):
        logic.process(volume, empty, tinyCheckpoint, segmentIds=["nope"])
    assert logic.currentJob is None


def test_model_card(tinyCheckpoint, tmp_path):
    logic = PowdrOutpaintLogic()
    card = logic.readModelCard(tinyCheckpoint)
    assert card["preset"] == "tiny"
    assert card["grid"]["shape"]
    text = logic.formatModelCard(card)
    assert "Preset: tiny" in text and "Grid:" in text and "Training:" in text and "Parameters:" in text
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(PowdrOutpaintError, match="could not be read"):
        logic.readModelCard(bad)


def test_engine_is_found_without_pythonpath(tinyCheckpoint, monkeypatch):
    """A launcher may rewrite PYTHONPATH: the worker still finds the engine in the module folder."""
    logic = PowdrOutpaintLogic()
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    monkeypatch.setattr(logic.engine, "environment", lambda: environment)
    completed = logic.engine.run("info", "--checkpoint", str(tinyCheckpoint), "--json", timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.strip().splitlines()[-1])["preset"] == "tiny"
    # Without site-packages (so not from a pip-installed copy) the engine still resolves to the module folder
    moduleDir = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules[PowdrOutpaintLogic.__module__].__file__)))
    probe = subprocess.run([sys.executable, "-S", "-c", "import importlib.util as u; print(u.find_spec('powdr_outpaint').origin)"],
                           cwd=moduleDir, env=environment, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert os.path.dirname(os.path.realpath(probe.stdout.strip())) == os.path.realpath(os.path.join(moduleDir, "powdr_outpaint"))


def test_parameter_node_is_a_singleton(core):
    logic = PowdrOutpaintLogic()
    node = logic.getParameterNode()
    assert node.IsA("vtkMRMLScriptedModuleNode") and node.GetAttribute("ModuleName") == "PowdrOutpaint"
    assert PowdrOutpaintLogic().getParameterNode() is node


@pytest.mark.skipif(os.name == "nt", reason="uses a shell script as the worker's Python")
def test_worker_crash_gives_a_readable_message(bratsScene, tinyCheckpoint, tmp_path):
    fakePython = tmp_path / "python"
    fakePython.write_text("#!/bin/sh\n"
                          "echo 'Traceback (most recent call last):' >&2\n"
                          "echo 'RuntimeError: CUDA out of memory' >&2\n"
                          "exit 1\n")
    fakePython.chmod(0o755)
    logic = PowdrOutpaintLogic()
    logic.engine.pythonExecutable = str(fakePython)
    nodesBefore = bratsScene["core"].nodeIds()
    with pytest.raises(PowdrOutpaintError) as raised:
        run(logic, bratsScene["volume"], bratsScene["labelmap"], tinyCheckpoint)
    assert "out of memory" in str(raised.value) and "CUDA out of memory" in str(raised.value)
    assert "batch size" in str(raised.value)
    assert "Traceback" in raised.value.log
    assert bratsScene["core"].nodeIds() == nodesBefore


def test_worker_command_and_environment(core):
    logic = PowdrOutpaintLogic()
    command = logic.engine.command("sample", "--samples", 3)
    # Under slicer-core (no slicer.app) the worker runs with this interpreter
    assert command[:4] == [sys.executable, "-m", "powdr_outpaint", "sample"]
    assert command[4:] == ["--samples", "3"]
    environment = logic.engine.environment()
    moduleDir = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules[PowdrOutpaintLogic.__module__].__file__)))
    assert environment["PYTHONPATH"].split(os.pathsep)[0] == moduleDir
    assert os.path.isfile(os.path.join(moduleDir, "powdr_outpaint", "__main__.py"))


def test_closed_surface_segmentation_is_not_modified(bratsScene, tinyCheckpoint):
    """A lesion drawn as a closed surface: exported on the volume's grid without touching the segmentation."""
    core, volume = bratsScene["core"], bratsScene["volume"]
    lesionMask = bratsScene["labelArray"] > 0
    k, j, i = np.argwhere(lesionMask).mean(axis=0)
    center = (ijkToRas(volume) @ np.array([i, j, k, 1.0]))[:3]
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*center)
    sphere.SetRadius(12.0)
    sphere.SetThetaResolution(40)
    sphere.SetPhiResolution(40)
    sphere.Update()
    segmentation = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "sphere")
    segmentation.CreateDefaultDisplayNodes()
    surfaceName = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    if hasattr(segmentation.GetSegmentation(), "SetSourceRepresentationName"):
        segmentation.GetSegmentation().SetSourceRepresentationName(surfaceName)
    else:
        segmentation.GetSegmentation().SetMasterRepresentationName(surfaceName)
    segmentation.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "lesion", [1.0, 0.8, 0.0])
    labelmapName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    assert not segmentation.GetSegmentation().ContainsRepresentation(labelmapName)
    modifiedBefore = segmentation.GetSegmentation().GetMTime()

    result = run(PowdrOutpaintLogic(), volume, segmentation, tinyCheckpoint, numberOfSamples=2)
    lesion = checkResult(result, volume, bratsScene["volumeArray"], samples=2)
    # About the sphere's volume (4/3 pi 12^3 mm^3 at 1 mm voxels)
    assert abs(np.count_nonzero(lesion) - 4 / 3 * np.pi * 12 ** 3) < 0.1 * 4 / 3 * np.pi * 12 ** 3
    assert not segmentation.GetSegmentation().ContainsRepresentation(labelmapName)
    assert segmentation.GetSegmentation().GetMTime() == modifiedBefore
    names = [core.scene.GetNthNode(index).GetName() for index in range(core.scene.GetNumberOfNodes())]
    assert not any(name.startswith("PowdrOutpaintLesion") for name in names)


def test_other_python_gets_the_startup_environment(tinyCheckpoint, monkeypatch, tmp_path):
    """POWDR_OUTPAINT_PYTHON names another interpreter: it gets the environment Slicer was started
    with, not Slicer's own PYTHONHOME/PYTHONNOUSERSITE, with which no other Python starts."""
    startup = {key: value for key, value in os.environ.items() if key not in ("PYTHONHOME", "PYTHONNOUSERSITE")}
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "Slicer-5.8" / "lib" / "Python"))
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")
    monkeypatch.setattr(slicer, "app", object(), raising=False)  # inside the Slicer application
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(startup))
    monkeypatch.setenv("POWDR_OUTPAINT_PYTHON", sys.executable)
    logic = PowdrOutpaintLogic()
    environment = logic.engine.environment()
    assert "PYTHONHOME" not in environment and "PYTHONNOUSERSITE" not in environment
    completed = logic.engine.run("info", "--checkpoint", str(tinyCheckpoint), "--json", timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.strip().splitlines()[-1])["preset"] == "tiny"


BLOCK_IMPORTS = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{name} is blocked in this test')
        return None
sys.meta_path.insert(0, Block())
"""


def runBlocked(blocked: set[str], code: str, *arguments: str) -> "subprocess.CompletedProcess":
    """Run ``code`` in a fresh interpreter where the ``blocked`` top-level packages cannot be imported."""
    from conftest import engineEnvironment

    program = f"BLOCKED = {sorted(blocked)!r}\n" + BLOCK_IMPORTS + code
    return subprocess.run([sys.executable, "-c", program, *arguments], env=engineEnvironment(),
                          capture_output=True, text=True, timeout=600)


def test_model_card_needs_no_torch_and_matches_the_engine(tinyCheckpoint, tmp_path):
    from dataclasses import replace

    from powdr_outpaint.model.checkpoint import (
        ModelConfig, initial_checkpoint, read_checkpoint, save_cascade, save_checkpoint, with_training)
    from powdr_outpaint.model.network import OutpaintUNet
    from PowdrOutpaintLib import defaultCheckpointPath
    from PowdrOutpaintLib.modelcard import formatModelCard

    refine = initial_checkpoint(tmp_path / "refine.pt", "tiny-refine")
    cascade = save_cascade(tinyCheckpoint, refine, tmp_path / "cascade.pt")
    config, payload = read_checkpoint(tinyCheckpoint)
    expert = save_checkpoint(tmp_path / "expert.pt", with_training(config, max_timestep=100), payload["weights"])
    # Five networks (first, refine, detail, expert, guide), stored in half precision: the torch-free
    # reader sees other storages.
    detailConfig = ModelConfig.from_preset("tiny-refine")
    detailConfig = replace(detailConfig, grid=replace(config.grid, patch=(32, 32, 32)))
    detail = save_checkpoint(tmp_path / "detail.pt", detailConfig,
                             OutpaintUNet(detailConfig.network, detailConfig.diffusion).state_dict())
    withExpert = save_cascade(cascade, None, tmp_path / "expert_fp16.pt", expert_path=expert, weights="fp16",
                              guide_path=tinyCheckpoint, guidance=2.5, detail_path=detail)
    # A first stage one octave coarser than its detail stage that sees the brain's outline.
    coarseConfig = replace(config, outline=True, grid=replace(config.grid, shape=(24, 24, 16), spacing=(9.6,) * 3),
                           network=replace(config.network, in_channels=17))
    coarse = save_checkpoint(tmp_path / "coarse.pt", coarseConfig,
                             OutpaintUNet(coarseConfig.network, coarseConfig.diffusion).state_dict())
    coarseCascade = save_cascade(coarse, None, tmp_path / "coarse_cascade.pt", detail_path=detail)
    # The same five networks in 8 bits (int8 tensors and a table of scales beside the weights).
    eightBit = save_cascade(withExpert, None, tmp_path / "expert_int8.pt", weights="int8")
    checkpoints = [str(tinyCheckpoint), defaultCheckpointPath(), str(cascade), str(withExpert), str(coarseCascade),
                   str(eightBit)]
    completed = runBlocked({"torch"}, "import json\nfrom PowdrOutpaintLib.modelcard import readModelCard\n"
                                      "print(json.dumps([readModelCard(path) for path in sys.argv[1:]]))",
                           *checkpoints)
    assert completed.returncode == 0, completed.stderr
    cards = json.loads(completed.stdout)
    logic = PowdrOutpaintLogic()
    for path, card in zip(checkpoints, cards):
        engine = logic.engine.run("info", "--checkpoint", path, "--json", timeout=300)
        assert engine.returncode == 0, engine.stderr
        assert card == json.loads(engine.stdout.strip().splitlines()[-1])
    # A cascade's card names its detail stage, and the parameters count both stages.
    text = formatModelCard(cards[2])
    assert "Refine stage: 3.6 mm grid" in text
    assert f"{(cards[2]['parameters'] + cards[2]['refine']['parameters']) / 1e6:.2f} M" in text
    text = formatModelCard(cards[3])
    assert "Last-steps expert: timesteps below 100" in text
    assert "Guided by a weaker first stage (weight 2.5, on timesteps from 30 up, detail subbands only)" in text
    assert "Detail stage: redraws the first stage's detail" in text
    total = sum(cards[3][key]["parameters"] for key in ("refine", "detail", "expert", "guide")) + cards[3]["parameters"]
    assert f"Parameters: {total / 1e6:.2f} M" in text
    text = formatModelCard(cards[4])
    assert cards[4]["outline"] is True and cards[0]["outline"] is False
    assert "Brain outline: the input's" in text and "Detail stage: draws 4.8 mm detail on the first stage" in text
    # Stored in 8 bits, the file reads as the same model.
    assert cards[5] == cards[3]


def test_model_card_refuses_code_and_damaged_files(tinyCheckpoint, tmp_path):
    import torch

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "powdr-outpaint-checkpoint", "config": "{}", "weights": {}, "extra": Payload()}, hostile)
    with pytest.raises(PowdrOutpaintError, match="refused without running it"):
        PowdrOutpaintLogic.readModelCard(hostile)
    assert not marker.exists()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tinyCheckpoint.read_bytes()[:4000])
    with pytest.raises(PowdrOutpaintError, match="damaged"):
        PowdrOutpaintLogic.readModelCard(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, foreign)
    with pytest.raises(PowdrOutpaintError, match="not a PowdrOutpaint checkpoint"):
        PowdrOutpaintLogic.readModelCard(foreign)


def test_worker_needs_only_the_slicer_requirements(bratsCase, tinyCheckpoint, tmp_path):
    """sample, info and init-checkpoint run with every third-party package Slicer does not install blocked."""
    from PowdrOutpaintLib.dependencies import MODULE_REQUIREMENTS, SLICER_REQUIREMENTS

    allowed = {requirement.importName for requirement in SLICER_REQUIREMENTS + MODULE_REQUIREMENTS}
    blocked = {"skimage", "matplotlib", "pywt", "PIL", "nilearn", "pandas", "sklearn"} - allowed
    run = "sys.argv = ['powdr-outpaint'] + sys.argv[1:]\nrunpy.run_module('powdr_outpaint', run_name='__main__')"
    out = tmp_path / "out"
    completed = runBlocked(blocked, run, "sample", "--image", str(bratsCase["image"]), "--mask",
                           str(bratsCase["segmentation"]), "--checkpoint", str(tinyCheckpoint), "--samples", "1",
                           "--steps", "2", "--device", "cpu", "--out", str(out), "--progress", "json")
    assert completed.returncode == 0, completed.stderr
    assert (out / f"{bratsCase['image'].name.split('.')[0]}_outpaint_s00.nii.gz").is_file()
    for command in (["init-checkpoint", "--preset", "tiny", "--out", str(tmp_path / "t.pt")],
                    ["info", "--checkpoint", str(tinyCheckpoint), "--json"]):
        completed = runBlocked(blocked, run, *command)
        assert completed.returncode == 0, (command, completed.stderr)
