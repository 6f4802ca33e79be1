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


SEQUENCE_PARAMETERS = ("inputVolume", "inputVolume2", "inputVolume3", "inputVolume4")


def sequenceVolumes(scene, sequences=("t1", "t1ce", "t2", "flair"), case="CASE"):
    """One synthetic volume per sequence, named ``CASE_<sequence>``, each with its own contrast."""
    volume, _ = syntheticVolumes(scene)
    base = slicer.util.arrayFromVolume(volume).copy()
    scene.RemoveNode(volume)
    volumes = {}
    for index, sequence in enumerate(sequences):
        contrast = np.where(base > 0, base * (0.5 + 0.4 * index) + 40 * index, 0).astype(np.float32)
        volumes[sequence] = slicer.util.addVolumeFromArray(contrast, np.diag([-3.0, -3.0, 3.0, 1.0]),
                                                           f"{case}_{sequence}", "vtkMRMLScalarVolumeNode")
    return volumes


def selectorRows(widget):
    """(label text, label visible, selector visible) of the four per-sequence volume selectors."""
    return [(label.text, label.visible, selector.visible) for label, selector in widget.inputVolumeRows()]


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
        assert (parameters.numberOfSamples, parameters.numberOfSteps, parameters.sampler) == (5, 20, "dpm++2m")

        volume, labelmap = syntheticVolumes(core.scene)
        others = sequenceVolumes(core.scene, ("t1ce", "t2", "flair"))
        segmentation = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        values = {"inputVolume": volume, "inputVolume2": others["t1ce"], "inputVolume3": others["t2"],
                  "inputVolume4": others["flair"], "lesionNode": segmentation, "checkpointPath": str(DEMO_CHECKPOINT),
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
        for name in ("inputVolume", "inputVolume2", "inputVolume3", "inputVolume4", "lesionNode"):
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
    "inputVolume2": "qMRMLNodeComboBoxToNodeConnector",
    "inputVolume3": "qMRMLNodeComboBoxToNodeConnector",
    "inputVolume4": "qMRMLNodeComboBoxToNodeConnector",
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
        for name in ("inputVolume", "inputVolume2", "inputVolume3", "inputVolume4"):
            assert list(bound[name].nodeTypes) == ["vtkMRMLScalarVolumeNode"], name
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


def test_sequence_volumes_survive_scene_save_load_and_undo(release, core):
    """The per-sequence volumes are node references: saved with the scene, restored by undo; a
    scene saved before they existed still loads."""
    with slicerRelease(release) as env:
        ParameterNode = env.module.PowdrOutpaintParameterNode
        volumes = sequenceVolumes(core.scene)
        node = core.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "PowdrOutpaint")
        parameters = ParameterNode(node)
        for name, sequence in zip(SEQUENCE_PARAMETERS, volumes):
            parameters.setValue(name, volumes[sequence])

        core.scene.SetSaveToXMLString(1)
        core.scene.Commit()
        saved = core.scene.GetSceneXMLString()
        loaded = slicer.vtkMRMLScene()
        loaded.SetLoadFromXMLString(1)
        loaded.SetSceneXMLString(saved)
        loaded.Import()
        reloaded = ParameterNode(loaded.GetFirstNodeByName("PowdrOutpaint"))
        assert [reloaded.getValue(name).GetName() for name in SEQUENCE_PARAMETERS] == [
            "CASE_t1", "CASE_t1ce", "CASE_t2", "CASE_flair"]
        loaded.Clear(1)

        core.scene.SetUndoOn()
        node.SetUndoEnabled(True)
        core.scene.SaveStateForUndo()
        parameters.inputVolume3 = None
        parameters.inputVolume2 = volumes["flair"]
        core.scene.Undo()
        undone = ParameterNode(core.scene.GetFirstNodeByName("PowdrOutpaint"))
        assert [undone.getValue(name) for name in SEQUENCE_PARAMETERS] == list(volumes.values())
        core.scene.SetUndoOff()

        # A parameter node written before the per-sequence volumes existed
        old = core.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "old")
        old.SetParameter("checkpointPath", str(DEMO_CHECKPOINT))
        old.SetParameter("inputVolume", "")
        old.SetNodeReferenceID("inputVolume", volumes["t1"].GetID())
        upgraded = ParameterNode(old)
        assert upgraded.inputVolume is volumes["t1"] and upgraded.checkpointPath == str(DEMO_CHECKPOINT)
        assert upgraded.inputVolume2 is None and upgraded.inputVolume4 is None


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


# ---------------------------------------------------------------------------------------
# A model of several sequences in the panel

def test_panel_asks_for_one_volume_per_sequence_and_runs_them_together(
        release, core, tinyFourSequenceCheckpoint, monkeypatch):
    with slicerRelease(release) as env:
        # Loaded in another order than the model's; a result of an earlier run is no candidate
        volumes = sequenceVolumes(core.scene, ("flair", "t2", "t1", "t1ce"))
        earlier = slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), np.eye(4), "CASE_t2_outpaint_t2")
        earlier.SetAttribute("PowdrOutpaint.Input", volumes["t2"].GetID())
        _, labelmap = syntheticVolumes(core.scene)
        env.QSettings.store["PowdrOutpaint/CheckpointPath"] = str(tinyFourSequenceCheckpoint)
        with panel(env) as widget:
            parameters = widget._parameterNode
            ui = widget.ui
            # The model's four sequences, each with its labelled selector, filled by the volumes' names
            assert parameters.checkpointPath == str(tinyFourSequenceCheckpoint)
            assert "Sequences: T1, T1ce, T2, FLAIR" in ui.modelCardLabel.text
            assert selectorRows(widget) == [("T1 volume:", True, True), ("T1ce volume:", True, True),
                                            ("T2 volume:", True, True), ("FLAIR volume:", True, True)]
            assert [parameters.getValue(name) for name in SEQUENCE_PARAMETERS] == [
                volumes["t1"], volumes["t1ce"], volumes["t2"], volumes["flair"]]
            assert ui.inputVolume3Selector.currentNode() is volumes["t2"]
            parameters.lesionNode = labelmap
            assert ui.applyButton.enabled

            # A missing sequence, then one volume chosen for two sequences: Generate says which
            ui.inputVolume3Selector.setCurrentNode(None)
            assert parameters.inputVolume3 is None and not ui.applyButton.enabled
            assert ui.applyButton.toolTip == ("This model makes T1, T1ce, T2 and FLAIR together: "
                                              "select a volume for T2.")
            ui.inputVolume3Selector.setCurrentNode(volumes["t1ce"])
            assert not ui.applyButton.enabled and "'CASE_t1ce' is selected for T1ce and T2" in ui.applyButton.toolTip
            ui.inputVolume3Selector.setCurrentNode(volumes["t2"])
            assert ui.applyButton.enabled

            # A single-sequence model: one "MRI volume" selector, as before
            ui.checkpointPathLineEdit.currentPath = str(DEMO_CHECKPOINT)
            assert selectorRows(widget) == [("MRI volume:", True, True), ("T1ce volume:", False, False),
                                            ("T2 volume:", False, False), ("FLAIR volume:", False, False)]
            assert "Modality: T1" in ui.modelCardLabel.text and ui.applyButton.enabled
            # Back to the four-sequence model: empty selectors are filled again by name
            for name in SEQUENCE_PARAMETERS[1:]:
                parameters.setValue(name, None)
            ui.checkpointPathLineEdit.currentPath = str(tinyFourSequenceCheckpoint)
            assert [parameters.getValue(name) for name in SEQUENCE_PARAMETERS] == [
                volumes["t1"], volumes["t1ce"], volumes["t2"], volumes["flair"]]
            assert all(visible for _, visible, _ in selectorRows(widget))

            # Generate runs the four together; the results offer each sequence for the views
            shown = []
            monkeypatch.setattr(widget.logic, "showResults",
                                lambda result, stdOpacity=0.5, sequence=None: shown.append(sequence) or False)
            parameters.numberOfSamples, parameters.numberOfSteps, parameters.device = 2, 2, "cpu"
            widget.onApplyButton()
            assert widget._job is not None and ui.cancelButton.enabled and not ui.applyButton.enabled
            deadline = time.monotonic() + 300
            while not widget._job.finished and time.monotonic() < deadline:
                widget.onPollTimer()
                time.sleep(0.05)
            assert widget._job.state == "completed", widget._job.error
            result = widget._result
            assert [(own.sequenceName, own.inputVolume) for own in result.sequenceResults] == [
                (sequence, volumes[sequence]) for sequence in ("t1", "t1ce", "t2", "flair")]
            assert ui.resultsSequenceComboBox.visible and ui.resultsSequenceComboBox.items == [
                "T1", "T1ce", "T2", "FLAIR"]
            assert "T1, T1ce, T2 and FLAIR" in ui.resultsLabel.text
            assert shown == [None]  # after the run: the first sequence
            ui.resultsSequenceComboBox.currentIndex = 3
            assert shown == [None, "flair"]
            widget.onShowResultsButton()
            assert shown[-1] == "flair"
            assert not env.dialogs.errors
