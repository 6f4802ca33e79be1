"""The module against Slicer's own Python code of releases 5.8.0, 5.10.0 and 5.12.3.

Each test loads one release's real ``parameterNodeWrapper``, ``ScriptedLoadableModule``,
``util`` and (5.12) ``packaging`` from ``../shared/slicer`` over slicer-core's real MRML
classes (see ``slicer_release.py`` for the qt/ctk stand-ins and what they leave unverified).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import unittest

import numpy as np
import pytest
import slicer
import slicer.util

from slicer_release import RELEASES, UI_FILE, loadUI, missingReleaseMessage, slicerRelease

REPOSITORY = UI_FILE.parents[3]
DEMO_CHECKPOINT = REPOSITORY / "Resources" / "Models" / "powdr_demo_brain_t1.pt"


@pytest.fixture(params=RELEASES)
def release(request):
    message = missingReleaseMessage(request.param)
    if message:
        pytest.skip(message)
    return request.param


def syntheticVolumes(scene):
    """A 48 x 48 x 32 textured 'head' at 3 mm with a cubic lesion as a label map (fast to outpaint)."""
    k, j, i = np.mgrid[0:32, 0:48, 0:48].astype(np.float32)
    inside = ((i - 24) / 20) ** 2 + ((j - 24) / 21) ** 2 + ((k - 16) / 14) ** 2 < 1.0
    image = np.where(inside, 300 + 60 * np.sin(i / 2.0) * np.cos(j / 3.0), 0).astype(np.float32)
    lesion = np.zeros(image.shape, np.uint8)
    lesion[12:20, 20:28, 22:30] = 1
    ijkToRAS = np.diag([-3.0, -3.0, 3.0, 1.0])
    volume = slicer.util.addVolumeFromArray(image, ijkToRAS, "Synthetic head", "vtkMRMLScalarVolumeNode")
    labelmap = slicer.util.addVolumeFromArray(lesion, ijkToRAS, "Synthetic lesion", "vtkMRMLLabelMapVolumeNode")
    return volume, labelmap


@contextlib.contextmanager
def panel(env):
    """The module's widget, set up as Slicer does (``setup``), cleaned up afterwards."""
    widget = env.module.PowdrOutpaintWidget(parent=slicer.qMRMLWidget())
    widget.setup()
    widget.parent.isEntered = True
    widget.enter()
    try:
        yield widget
    finally:
        widget.cleanup()


# ---------------------------------------------------------------------------------------
# Parameter node and GUI connectors

def test_parameter_node_construction_defaults_and_serialisation(release, core):
    with slicerRelease(release) as env:
        ParameterNode = env.module.PowdrOutpaintParameterNode
        node = core.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
        parameters = ParameterNode(node)  # the wrapper writes every default, None for nodes

        for name, info in ParameterNode.allParameters.items():
            assert parameters.getValue(name) == info.default.value, name
        assert parameters.inputVolume is None and parameters.lesionNode is None
        assert (parameters.numberOfSamples, parameters.numberOfSteps, parameters.sampler) == (5, 100, "ddpm")

        volume, labelmap = syntheticVolumes(core.scene)
        segmentation = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        values = {"inputVolume": volume, "lesionNode": segmentation, "checkpointPath": str(DEMO_CHECKPOINT),
                  "numberOfSamples": 7, "numberOfSteps": 20, "sampler": "ddim", "eta": 0.25, "seed": 42,
                  "device": "cpu", "preserve": "model", "batchSize": 2, "exportDirectory": "/data/out"}
        assert set(values) == set(ParameterNode.allParameters)
        for name, value in values.items():
            parameters.setValue(name, value)
        reread = ParameterNode(node)  # a new wrapper reads what the node holds
        for name, value in values.items():
            assert reread.getValue(name) == value, name
        reread.lesionNode = labelmap
        assert ParameterNode(node).lesionNode is labelmap
        for name in ("inputVolume", "lesionNode"):
            reread.setValue(name, None)
            assert ParameterNode(node).getValue(name) is None, name

        with pytest.raises(ValueError):
            reread.numberOfSamples = 0
        with pytest.raises(ValueError):
            reread.sampler = "euler"
        with pytest.raises(Exception):
            reread.lesionNode = volume  # a scalar volume is neither a segmentation nor a label map


EXPECTED_CONNECTORS = {
    "inputVolume": "qMRMLNodeComboBoxToNodeConnector",
    "lesionNode": "qMRMLNodeComboBoxToNodeConnector",
    "numberOfSamples": "QSliderOrSpinBoxToIntConnector",
    "numberOfSteps": "QSliderOrSpinBoxToIntConnector",
    "seed": "QSliderOrSpinBoxToIntConnector",
    "batchSize": "QSliderOrSpinBoxToIntConnector",
    "sampler": "QComboBoxToStringableConnector",
    "device": "QComboBoxToStringableConnector",
    "preserve": "QComboBoxToStringableConnector",
    "eta": "QDoubleSpinBoxCtkSliderWidgetToFloat",  # ...Connector on 5.8, ...IntConnector on 5.10+
}


def test_ui_bindings_choose_the_right_connectors(release, core):
    with slicerRelease(release) as env:
        parameters = env.module.PowdrOutpaintParameterNode(core.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
        ui = loadUI(str(UI_FILE))
        bound = {widget.property("SlicerParameterName"): widget for widget in ui.findChildren()
                 if widget.property("SlicerParameterName")}
        assert set(bound) == set(EXPECTED_CONNECTORS)
        tag = parameters.connectParametersToGui(bound)
        assert tag is not None
        connectors = parameters._parameterGUIs[tag]
        for name, expected in EXPECTED_CONNECTORS.items():
            assert type(connectors[name]).__name__.startswith(expected), (name, type(connectors[name]).__name__)

        assert list(bound["lesionNode"].nodeTypes) == ["vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"]
        assert list(bound["inputVolume"].nodeTypes) == ["vtkMRMLScalarVolumeNode"]
        assert bound["sampler"].items == ["ddpm", "ddim", "dpm++2m"] and bound["device"].items == ["auto", "cuda", "cpu"]
        assert (bound["numberOfSamples"].minimum, bound["numberOfSamples"].maximum) == (1, 100)
        assert (bound["eta"].minimum, bound["eta"].maximum) == (0.0, 1.0)

        # Both directions: widget -> parameter node, parameter node -> widget
        bound["numberOfSamples"].value = 9
        assert parameters.numberOfSamples == 9
        bound["device"].currentIndex = 2
        assert parameters.device == "cpu"
        parameters.sampler = "ddim"
        assert bound["sampler"].currentText == "ddim"
        volume, labelmap = syntheticVolumes(core.scene)
        parameters.lesionNode = labelmap
        assert bound["lesionNode"].currentNode() is labelmap
        bound["inputVolume"].setCurrentNode(volume)
        assert parameters.inputVolume is volume

        parameters.disconnectGui(tag)
        bound["numberOfSamples"].value = 3
        assert parameters.numberOfSamples == 9, "a disconnected widget still writes the parameter node"


# ---------------------------------------------------------------------------------------
# The panel itself

def test_panel_sets_up_and_bindings_do_not_pile_up(release, core):
    with slicerRelease(release) as env, panel(env) as widget:
        assert widget.resourcePath("UI/PowdrOutpaint.ui") == str(UI_FILE)
        assert os.path.isfile(widget.resourcePath("Icons/PowdrOutpaint.png"))
        parameters = widget._parameterNode
        assert parameters is not None and widget._parameterNodeGuiTag is not None
        assert parameters.checkpointPath == str(DEMO_CHECKPOINT)  # the bundled model is the default
        assert not widget.ui.applyButton.enabled and widget.ui.applyButton.toolTip == "Select the MRI volume."

        for _ in range(5):  # the user switches modules back and forth
            widget.exit()
            widget.enter()
        assert len(parameters._parameterGUIs) == 1
        assert widget._parameterNode is parameters
        for name, boundWidget in widget.boundWidgets().items():
            connectorSlots = [slot for signal in boundWidget._signals.values() for slot in signal.slots
                              if type(getattr(slot, "__self__", None)).__name__.endswith("Connector")]
            assert len(connectorSlots) == 1, (name, connectorSlots)
        writes = []
        spinBox = widget.ui.numberOfSamplesSpinBox
        spinBox.valueChanged.connect(writes.append)
        parameters.numberOfSamples = 11
        assert writes == [11] and spinBox.value == 11
        assert widget.ui.applyButton.text == "Generate 11 samples"

        volume, labelmap = syntheticVolumes(core.scene)
        parameters.inputVolume = volume
        parameters.lesionNode = labelmap
        assert widget.ui.applyButton.enabled


def test_model_card_is_read_without_a_process(release, core, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model card started a process")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    with slicerRelease(release) as env, panel(env) as widget:
        text = widget.ui.modelCardLabel.text
        assert "Preset: demo" in text and "Grid: 64 x 64 x 48 voxels at 3.6 mm" in text, text
        widget._parameterNode.checkpointPath = str(REPOSITORY / "README.md")
        assert widget.ui.modelCardLabel.text.startswith("The checkpoint could not be read")


def test_generate_saves_the_checkpoint_history_and_export_asks_for_a_folder(
        release, core, tinyCheckpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with slicerRelease(release) as env, panel(env) as widget:
        assert widget.ui.checkpointPathLineEdit.settingKey == "PowdrOutpaint/CheckpointHistory"
        volume, labelmap = syntheticVolumes(core.scene)
        parameters = widget._parameterNode
        parameters.inputVolume, parameters.lesionNode = volume, labelmap
        widget.ui.checkpointPathLineEdit.currentPath = str(tinyCheckpoint)
        assert parameters.checkpointPath == str(tinyCheckpoint)
        parameters.numberOfSamples, parameters.numberOfSteps, parameters.device = 2, 2, "cpu"

        widget.onApplyButton()
        assert widget._job is not None and not widget.ui.applyButton.enabled and widget.ui.cancelButton.enabled
        deadline = time.monotonic() + 300
        while not widget._job.finished and time.monotonic() < deadline:
            widget.onPollTimer()
            time.sleep(0.05)
        assert widget._job.state == "completed", widget._job.error
        assert widget.ui.statusLabel.text.startswith("Done in")
        assert widget.ui.checkpointPathLineEdit.history[0] == str(tinyCheckpoint)
        assert len(widget._result.sampleNodes) == 2

        # Export with no folder chosen: the user is asked; cancelling writes nothing anywhere
        before = sorted(os.listdir(tmp_path))
        env.QFileDialog.answer = ""
        widget.onExportButton()
        assert env.QFileDialog.asked == 1
        assert widget.ui.statusLabel.text == "Export cancelled: no folder was chosen."
        assert sorted(os.listdir(tmp_path)) == before
        # The directory button's unset value "." is not taken for a choice
        widget.onExportDirectoryChanged(".")
        assert parameters.exportDirectory == ""
        exportFolder = tmp_path / "chosen"
        env.QFileDialog.answer = str(exportFolder)
        widget.onExportButton()
        assert parameters.exportDirectory == str(exportFolder)
        assert (exportFolder / "Synthetic_head_outpaint_s01_lesion.nii.gz").is_file()
        assert sorted(os.listdir(tmp_path)) == sorted(before + ["chosen"])


# ---------------------------------------------------------------------------------------
# Installing dependencies through each release's own pip helpers

@pytest.fixture
def absentRequirement(monkeypatch, tmp_path):
    """One requirement that is 'missing' until a pip install of it has been recorded.

    The constraints file goes to a folder whose name has a space and a backslash, as
    Windows paths do; pip runs are recorded, not run.
    """
    from PowdrOutpaintLib import dependencies

    requirement = dependencies.Requirement("powdr-absent-package", ">=1.0", "powdr_absent_package")
    state = {"installed": False, "pipCalls": []}
    monkeypatch.setattr(dependencies, "missingRequirements",
                        lambda includeOptional=False: [] if state["installed"] else [requirement])
    monkeypatch.setattr(dependencies, "_pyTorchUtilsLogic", lambda: None)
    folder = tmp_path / "Program Files\\Slicer 5.8"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return requirement, state, folder


def recordPip(state, app, whilePipRuns=None):
    def executePythonModule(module, args, *rest, **options):
        state["pipCalls"].append((module, list(args)))
        if whilePipRuns is not None:
            app.processEventsHook = whilePipRuns
            app.processEvents()  # as 5.8/5.10's pip_install does for every line pip prints
            app.processEventsHook = None
        state["installed"] = True

    return executePythonModule


def test_install_hands_pip_a_list_and_refuses_a_nested_install(release, core, absentRequirement, monkeypatch):
    requirement, state, folder = absentRequirement
    with slicerRelease(release) as env, panel(env) as widget:
        from PowdrOutpaintLib import dependencies

        volume, labelmap = syntheticVolumes(core.scene)
        widget._parameterNode.inputVolume, widget._parameterNode.lesionNode = volume, labelmap
        nestedClicks = []

        def clickGenerateAgain():
            nestedClicks.append(widget.ui.applyButton.enabled)
            widget.onApplyButton()

        recorder = recordPip(state, env.app, clickGenerateAgain)
        if env.packaging is None:  # 5.8 / 5.10: slicer.util.pip_install -> _executePythonModule
            monkeypatch.setattr(env.util, "_executePythonModule", recorder)
            monkeypatch.setattr(slicer.util, "pip_install", env.util.pip_install)
        else:  # 5.12: slicer.packaging.pip_ensure -> pip_install -> a progress dialog running pip
            monkeypatch.setattr(env.packaging, "_isMainQtThread", lambda: True)
            monkeypatch.setattr(env.packaging, "_pip_install_with_dialog",
                                lambda requirements, constraints, *rest: recorder(
                                    "pip", env.packaging._build_pip_args(requirements, constraints)))
        started = []
        monkeypatch.setattr(widget.logic, "process", lambda *args, **kwargs: started.append(args))

        widget.onApplyButton()

        assert len(state["pipCalls"]) == 1, state["pipCalls"]
        module, args = state["pipCalls"][0]
        assert module == "pip" and args[0] == "install" and requirement.pipSpec in args
        constraints = args[args.index("-c") + 1]
        assert os.path.dirname(constraints) == str(folder), constraints  # one argument, intact
        assert nestedClicks == [False], "Generate could be pressed while pip was running"
        assert env.dialogs.questions and len(env.dialogs.questions) == 1
        assert len(started) == 1  # after the installation the run starts, once
        assert not env.dialogs.errors


def test_pip_ensure_installs_in_testing_mode(core, absentRequirement, monkeypatch):
    """Slicer 5.12's pip_ensure skips installing in testing mode unless told not to."""
    message = missingReleaseMessage("v5.12.3")
    if message:
        pytest.skip(message)
    requirement, state, folder = absentRequirement
    with slicerRelease("v5.12.3", testing=True) as env:
        from PowdrOutpaintLib import dependencies

        monkeypatch.setattr(env.packaging, "_isMainQtThread", lambda: True)
        monkeypatch.setattr(slicer.util, "executePythonModule", recordPip(state, env.app))
        assert dependencies.ensureDependencies(askConfirmation=None) is True
        assert len(state["pipCalls"]) == 1 and requirement.pipSpec in state["pipCalls"][0][1]


def test_self_test_installs_and_downloads_nothing(release, core, monkeypatch):
    with slicerRelease(release, testing=True) as env:
        from PowdrOutpaintLib import dependencies

        installs = []
        monkeypatch.setattr(dependencies, "missingRequirements",
                            lambda includeOptional=False: [dependencies.SLICER_REQUIREMENTS[0]])
        monkeypatch.setattr(dependencies, "_pipInstall", lambda *args: installs.append(args))
        monkeypatch.setattr(dependencies, "_installTorch", lambda *args: installs.append(args))
        test = env.module.PowdrOutpaintTest()
        with pytest.raises(unittest.SkipTest, match="torch"):
            test.test_PowdrOutpaint1()
        assert installs == []
        assert "SampleData" not in sys.modules
        source = (REPOSITORY / "PowdrOutpaint" / "PowdrOutpaint.py").read_text(encoding="utf-8")
        assert "downloadSample" not in source and "ensureDependencies(askConfirmation=None)" not in source
