"""PowdrOutpaint: pathology-preserving outpainting of 3-D MRI in 3D Slicer.

The user keeps a real lesion and gets N synthetic volumes around it, with voxel-wise mean
and standard deviation maps. The computation lives in ``PowdrOutpaintLib`` (no Qt) and runs
the ``powdr_outpaint`` engine in a separate process; this file holds the Slicer module, its
panel and its self-test.
"""

import logging
import os
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, SlicerParameterNamePropertyName, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from PowdrOutpaintLib import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEVICES,
    PRESERVE_MODES,
    SAMPLERS,
    OutpaintProgress,
    PowdrOutpaintError,
    PowdrOutpaintLogic,
    PowdrOutpaintResult,
    defaultCheckpointPath,
)
from PowdrOutpaintLib import dependencies
from PowdrOutpaintLib.inputs import resolveInputVolumes, volumesMatchingSequences
from PowdrOutpaintLib.modelcard import joinLabels, sequenceLabel, sequencesOfCard

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer before 5.4
    def _(text):
        return text

    def translate(context, text):
        return text

__all__ = ["PowdrOutpaint", "PowdrOutpaintWidget", "PowdrOutpaintLogic", "PowdrOutpaintTest"]

SETTINGS_CHECKPOINT = "PowdrOutpaint/CheckpointPath"
SETTINGS_CHECKPOINT_HISTORY = "PowdrOutpaint/CheckpointHistory"
SETTINGS_EXPORT_DIRECTORY = "PowdrOutpaint/ExportDirectory"

#: The parameters of the per-sequence volume selectors: a model of several sequences (e.g. T1,
#: T1ce, T2, FLAIR) takes one volume per sequence, in its channel order; a single-sequence model
#: uses only the first. The logic takes any number of sequences; the panel up to these four.
INPUT_VOLUME_PARAMETERS = ("inputVolume", "inputVolume2", "inputVolume3", "inputVolume4")


#
# PowdrOutpaint
#


class PowdrOutpaint(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PowdrOutpaint")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Sequences"]
        self.parent.contributors = ["PowdrOutpaint authors"]
        self.parent.helpText = _("""
Pathology-preserving outpainting of 3-D MRI. Keep a real lesion (a segmentation or a label map)
and generate N synthetic volumes around it with a conditional wavelet diffusion model, together
with the voxel-wise mean and standard deviation of the samples.
<ul>
<li>Choose a model checkpoint; its model card is shown below the path. A model of several MRI
sequences (e.g. T1, T1ce, T2 and FLAIR) asks for one volume per sequence, all of the same case;
volumes whose names end with a sequence's name (<i>CASE_t1ce</i>) are picked for it.</li>
<li>Choose the MRI and the lesion.</li>
<li>Press <b>Generate samples</b>. The run happens in a separate process: Slicer stays responsive,
<b>Cancel</b> stops it and adds nothing.</li>
<li>Results appear under the input's study: a sequence of samples (scrub with the sequence browser
slider), <i>_sNN</i> volumes, mean and std maps, shown as original | sample | mean with the std
map as overlay and the lesion outlined. A model of several sequences gives these for every
sequence, on its own volume's grid; the slider shows the same sample of all of them.</li>
<li><b>Export</b> writes each sample with its lesion mask as NIfTI files.</li>
</ul>
See the project's README for batch use without the GUI.
""")
        self.parent.acknowledgementText = _("""
The diffusion model follows the conditional wavelet diffusion approach for 3-D medical images.
The bundled demonstration model was trained on BraTS data (Menze et al., IEEE TMI 2015;
Bakas et al., Sci. Data 2017).
""")


#
# Parameter node
#


@parameterNodeWrapper
class PowdrOutpaintParameterNode:
    """Settings of the module panel, saved with the scene.

    inputVolume - the MRI to outpaint; for a model of several sequences, the first sequence's volume.
    inputVolume2, inputVolume3, inputVolume4 - the second to fourth sequences' volumes of a model of
        several sequences (node references, like every node here: saved with the scene, restored by
        undo); a single-sequence model ignores them.
    lesionNode - the lesion: a segmentation or a label map volume.
    checkpointPath - the model checkpoint file.
    numberOfSamples, numberOfSteps, sampler, eta, seed, device, preserve, batchSize - sampling settings.
    exportDirectory - where Export writes.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    inputVolume4: vtkMRMLScalarVolumeNode
    # None must be part of a union of node types: the wrapper writes None as the default.
    lesionNode: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    checkpointPath: str = ""
    numberOfSamples: Annotated[int, WithinRange(1, 100)] = 5
    numberOfSteps: Annotated[int, WithinRange(1, 1000)] = DEFAULT_STEPS
    sampler: Annotated[str, Choice(list(SAMPLERS))] = DEFAULT_SAMPLER
    eta: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    preserve: Annotated[str, Choice(list(PRESERVE_MODES))] = "exact"
    batchSize: Annotated[int, WithinRange(1, 64)] = 1
    exportDirectory: str = ""


#
# PowdrOutpaintWidget
#


class PowdrOutpaintWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._result: Optional[PowdrOutpaintResult] = None
        self._pollTimer = None
        self._updatingGui = False
        self._shownCheckpoint = None
        #: The sequences the chosen checkpoint makes, in channel order (() when it cannot be read)
        self._sequences = ()
        self._shownResult = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PowdrOutpaint.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PowdrOutpaintLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # ctkPathLineEdit keeps its drop-down history in the application settings under this key
        self.ui.checkpointPathLineEdit.settingKey = SETTINGS_CHECKPOINT_HISTORY
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onCheckpointPathChanged)
        self.ui.exportDirectoryButton.connect("directoryChanged(QString)", self.onExportDirectoryChanged)
        self.ui.lesionSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onLesionNodeChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.editLesionButton.connect("clicked(bool)", self.onEditLesionButton)
        self.ui.showResultsButton.connect("clicked(bool)", self.onShowResultsButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.resultsSequenceComboBox.connect("currentIndexChanged(int)", self.onResultsSequenceChanged)

        # The worker reports through a queue; this timer drains it in the GUI thread
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._job is not None and not self._job.finished:
            self._job.cancel()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # The bindings stay while the parameter node does. On Slicer 5.8 disconnecting cannot
        # remove the observer that binding added to the parameter node (fixed in 5.10), so
        # re-binding at every enter would pile observers up.
        pass

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and not self._job.finished:
            self._job.cancel()
        self._result = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.updateResultsGui()

    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        if self._parameterNode is None or self._parameterNode.parameterNode is not node:
            self.setParameterNode(PowdrOutpaintParameterNode(node))
        parameterNode = self._parameterNode
        if not parameterNode.checkpointPath:
            saved = str(qt.QSettings().value(SETTINGS_CHECKPOINT, "") or "")
            # A first run needs no file choice: the bundled demo model is the default.
            parameterNode.checkpointPath = saved if os.path.isfile(saved) else defaultCheckpointPath()
        self.updateModelCard()  # the checkpoint says which volumes it needs
        if len(self._sequences) > 1:
            self.fillSequenceVolumes()
        elif not parameterNode.inputVolume:
            volumes = self.candidateVolumes()
            if volumes:
                parameterNode.inputVolume = volumes[0]
        if not parameterNode.lesionNode:
            segmentationNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if segmentationNode:
                parameterNode.lesionNode = segmentationNode
        if not parameterNode.exportDirectory:
            parameterNode.exportDirectory = str(qt.QSettings().value(SETTINGS_EXPORT_DIRECTORY, "") or "")

    @staticmethod
    def candidateVolumes() -> list:
        """The scene's MRI volumes, without label maps and without results of earlier runs."""
        return [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if not node.IsA("vtkMRMLLabelMapVolumeNode") and not node.GetAttribute("PowdrOutpaint.Input")]

    def fillSequenceVolumes(self) -> None:
        """Fill the empty selectors of a model of several sequences with the volumes named after them.

        ``CASE_t1ce`` goes to T1ce; a selector whose sequence no volume (or more than one) is named
        after stays empty. Chosen volumes are never replaced.
        """
        parameterNode = self._parameterNode
        sequences = self._sequences[:len(INPUT_VOLUME_PARAMETERS)]
        if parameterNode is None or len(sequences) < 2:
            return
        taken = {parameterNode.getValue(name).GetID() for name in INPUT_VOLUME_PARAMETERS
                 if parameterNode.getValue(name) is not None}
        matches = volumesMatchingSequences(self.candidateVolumes(), sequences)
        for sequence, name in zip(sequences, INPUT_VOLUME_PARAMETERS):
            volume = matches.get(sequence)
            if parameterNode.getValue(name) is None and volume is not None and volume.GetID() not in taken:
                parameterNode.setValue(name, volume)
                taken.add(volume.GetID())

    def selectedInputVolumes(self):
        """What the logic takes: the volume, or {sequence: volume} for a model of several sequences."""
        parameterNode = self._parameterNode
        if len(self._sequences) < 2:
            return parameterNode.inputVolume
        return {sequence: parameterNode.getValue(name)
                for sequence, name in zip(self._sequences, INPUT_VOLUME_PARAMETERS)}

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a SlicerParameterName property in the .ui file are bound here.
            # connectParametersToGui returns the tag on every release (connectGui returns None
            # on 5.8, so the binding could never be undone).
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self.boundWidgets())
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self.updateGuiFromParameterNode()

    def boundWidgets(self) -> dict:
        """Parameter name -> widget, for every widget with a SlicerParameterName property."""
        bound = {}
        for widget in vars(self.ui).values():
            name = widget.property(SlicerParameterNamePropertyName) if hasattr(widget, "property") else None
            if name:
                bound[str(name)] = widget
        return bound

    # ------------------------------------------------------------------ GUI state
    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        """Settings that are not bound automatically, and the state of the buttons."""
        if self._updatingGui:
            return
        self._updatingGui = True
        try:
            parameterNode = self._parameterNode
            if parameterNode is not None:
                if self.ui.checkpointPathLineEdit.currentPath != parameterNode.checkpointPath:
                    self.ui.checkpointPathLineEdit.currentPath = parameterNode.checkpointPath
                if parameterNode.exportDirectory and self.ui.exportDirectoryButton.directory != parameterNode.exportDirectory:
                    self.ui.exportDirectoryButton.directory = parameterNode.exportDirectory
                self.ui.etaSliderWidget.enabled = parameterNode.sampler == "ddim"
            self.updateLesionGui()
            self.updateModelCard()
            self.updateSequenceSelectors()
            self.updateRunButtons()
        finally:
            self._updatingGui = False

    def updateLesionGui(self) -> None:
        lesionNode = self._parameterNode.lesionNode if self._parameterNode else None
        isSegmentation = lesionNode is not None and lesionNode.IsA("vtkMRMLSegmentationNode")
        self.ui.segmentsLabel.visible = isSegmentation
        self.ui.segmentSelector.visible = isSegmentation
        shownNode = self.ui.segmentSelector.currentNode()
        if isSegmentation and (shownNode is None or shownNode.GetID() != lesionNode.GetID()):
            self.ui.segmentSelector.setCurrentNode(lesionNode)
            self.selectVisibleSegments(lesionNode)

    def selectVisibleSegments(self, segmentationNode) -> None:
        try:
            segmentIds = self.logic.selectedSegmentIds(segmentationNode)
        except ValueError:
            segmentIds = []
        self.ui.segmentSelector.setSelectedSegmentIDs(segmentIds)

    def volumesProblem(self) -> Optional[str]:
        """Why the chosen volumes cannot be run with the chosen model (None: they can)."""
        sequences = self._sequences
        if len(sequences) > len(INPUT_VOLUME_PARAMETERS):
            return _("This model makes {count} sequences together; the panel takes up to {most}: run it from "
                     "Python with PowdrOutpaintLogic().process({{sequence: volume, ...}}, ...).").format(
                count=len(sequences), most=len(INPUT_VOLUME_PARAMETERS))
        if len(sequences) > 1:
            try:
                resolveInputVolumes(self.selectedInputVolumes(), sequences)
            except ValueError as error:
                return str(error)  # names the sequences without a volume, or a volume chosen twice
            return None
        if not self._parameterNode.inputVolume:
            return _("Select the MRI volume.")
        return None

    def updateRunButtons(self) -> None:
        running = self._job is not None and not self._job.finished
        parameterNode = self._parameterNode
        if parameterNode is None:
            problem = _("No parameter node.")
        else:
            problem = self.volumesProblem()
            if problem is None and not parameterNode.lesionNode:
                problem = _("Select the lesion (a segmentation or a label map).")
            checkpointPath = parameterNode.checkpointPath
            if problem is None and (not checkpointPath or not os.path.isfile(checkpointPath)):
                problem = _("Select a model checkpoint file.")
        self.ui.applyButton.enabled = problem is None and not running
        self.ui.applyButton.toolTip = problem or _("Generate the samples, their mean and their standard deviation.")
        if parameterNode is not None:
            self.ui.applyButton.text = _("Generate {count} samples").format(count=parameterNode.numberOfSamples)
        self.ui.cancelButton.enabled = running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.samplingCollapsibleButton):
            widget.enabled = not running

    def updateModelCard(self) -> None:
        path = self._parameterNode.checkpointPath if self._parameterNode else ""
        if path == self._shownCheckpoint:
            return
        self._shownCheckpoint = path
        self._sequences = ()
        if not path:
            self.ui.modelCardLabel.text = _("No checkpoint selected.")
            return
        if not os.path.isfile(path):
            self.ui.modelCardLabel.text = _("The file does not exist.")
            return
        try:
            # Plain Python, milliseconds, no torch needed: fine in the GUI thread
            card = self.logic.readModelCard(path)
            self._sequences = sequencesOfCard(card)
            self.ui.modelCardLabel.text = self.logic.formatModelCard(card)
            self.ui.modelCardLabel.toolTip = ""
        except PowdrOutpaintError as error:
            self.ui.modelCardLabel.text = str(error)
            self.ui.modelCardLabel.toolTip = error.log

    def inputVolumeRows(self) -> list:
        """(label, selector) of each per-sequence volume selector, in INPUT_VOLUME_PARAMETERS order."""
        return [(self.ui.inputVolumeLabel, self.ui.inputVolumeSelector),
                (self.ui.inputVolume2Label, self.ui.inputVolume2Selector),
                (self.ui.inputVolume3Label, self.ui.inputVolume3Selector),
                (self.ui.inputVolume4Label, self.ui.inputVolume4Selector)]

    def updateSequenceSelectors(self) -> None:
        """One labelled volume selector per sequence of the model ("T1 volume:", "FLAIR volume:"...);
        a single-sequence model (or an unreadable checkpoint) shows the one "MRI volume" selector."""
        sequences = self._sequences if len(self._sequences) > 1 else ()
        for index, (label, selector) in enumerate(self.inputVolumeRows()):
            shown = index == 0 or index < len(sequences)
            label.visible = shown
            selector.visible = shown
            if not sequences:
                if index == 0:
                    label.text = _("MRI volume:")
                    selector.toolTip = _("The MRI to outpaint. It is never modified; results are new volumes "
                                         "on its grid.")
                continue
            if shown:
                name = sequenceLabel(sequences[index])
                label.text = _("{sequence} volume:").format(sequence=name)
                selector.toolTip = _(
                    "The {sequence} volume of the case (sequence {number} of {count} the model makes together). "
                    "It is never modified; the {sequence} results are new volumes on its grid.").format(
                    sequence=name, number=index + 1, count=len(sequences))

    def updateResultsGui(self) -> None:
        result = self._result
        if result is not None and (result.meanNode is None or result.meanNode.GetScene() is None):
            result = self._result = None  # the nodes were deleted
        self.ui.showResultsButton.enabled = result is not None
        self.ui.exportButton.enabled = result is not None
        several = result is not None and len(result.sequenceResults) > 1
        self.ui.resultsSequenceLabel.visible = several
        self.ui.resultsSequenceComboBox.visible = several
        if result is not self._shownResult:
            # The sequences the views can show: filled once per result, first sequence chosen
            self._shownResult = result
            wasUpdating, self._updatingGui = self._updatingGui, True  # no "show" while the list is refilled
            try:
                self.ui.resultsSequenceComboBox.clear()
                for own in (result.sequenceResults if several else []):
                    self.ui.resultsSequenceComboBox.addItem(sequenceLabel(own.sequenceName))
                if several:
                    self.ui.resultsSequenceComboBox.currentIndex = 0
            finally:
                self._updatingGui = wasUpdating
        if result is None:
            self.ui.resultsLabel.text = _("No results yet.")
        elif several:
            self.ui.resultsLabel.text = _(
                "{count} samples of {sequences} in {seconds}: for each sequence a sequence of samples, mean, std "
                "and lesion volumes; the browser '{browser}' shows the same sample of every sequence."
            ).format(count=len(result.sampleNodes), sequences=joinLabels(result.bySequence),
                     seconds=OutpaintProgress.formatDuration(result.seconds), browser=result.browserNode.GetName())
        else:
            self.ui.resultsLabel.text = _(
                "{count} samples of '{name}' in {seconds}: sequence '{sequence}', mean, std and lesion volumes."
            ).format(count=len(result.sampleNodes), name=result.inputVolume.GetName(),
                     seconds=OutpaintProgress.formatDuration(result.seconds),
                     sequence=result.sequenceNode.GetName())

    def shownSequence(self):
        """The sequence the views show: the one chosen under Results (None: the first)."""
        result = self._result
        if result is None or len(result.sequenceResults) < 2:
            return None
        index = self.ui.resultsSequenceComboBox.currentIndex
        return result.sequenceResults[index].sequenceName if 0 <= index < len(result.sequenceResults) else None

    # ------------------------------------------------------------------ reactions
    def onCheckpointPathChanged(self, path) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._parameterNode.checkpointPath = path
        if path and os.path.isfile(path):
            qt.QSettings().setValue(SETTINGS_CHECKPOINT, path)
        self.updateModelCard()
        self.fillSequenceVolumes()  # a model of several sequences: pick the volumes named after them

    def onResultsSequenceChanged(self, index) -> None:
        if self._updatingGui or self._result is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not show the results."), waitCursor=True):
            self.showResults()

    def onExportDirectoryChanged(self, directory) -> None:
        if self._parameterNode is None or self._updatingGui or not os.path.isabs(directory):
            return
        self._parameterNode.exportDirectory = directory
        qt.QSettings().setValue(SETTINGS_EXPORT_DIRECTORY, directory)

    def onLesionNodeChanged(self, node) -> None:
        self.updateLesionGui()

    def onEditLesionButton(self) -> None:
        """Open the Segment Editor on the lesion (create a segmentation when needed)."""
        parameterNode = self._parameterNode
        volumeNode = parameterNode.inputVolume
        lesionNode = parameterNode.lesionNode
        with slicer.util.tryWithErrorDisplay(_("Could not open the lesion in Segment Editor."), waitCursor=True):
            if lesionNode is None or not lesionNode.IsA("vtkMRMLSegmentationNode"):
                baseName = volumeNode.GetName() if volumeNode else "Lesion"
                segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{baseName} lesion")
                segmentationNode.CreateDefaultDisplayNodes()
                if volumeNode is not None:
                    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
                if lesionNode is not None:
                    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(lesionNode, segmentationNode)
                else:
                    segmentationNode.GetSegmentation().AddEmptySegment("lesion", "lesion", [1.0, 0.85, 0.0])
                parameterNode.lesionNode = segmentationNode
                lesionNode = segmentationNode
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.modules.SegmentEditorWidget.editor
            editor.setSegmentationNode(lesionNode)
            if volumeNode is not None:
                if hasattr(editor, "setSourceVolumeNode"):
                    editor.setSourceVolumeNode(volumeNode)
                else:
                    editor.setMasterVolumeNode(volumeNode)

    def installDependencies(self) -> bool:
        """Install missing packages after one confirmation; False if declined."""
        if not dependencies.missingRequirements():
            return True
        slicer.util.showStatusMessage(_("Installing PowdrOutpaint dependencies..."))
        # Slicer 5.8/5.10 process events while pip runs: Generate must not be pressable meanwhile
        self.ui.applyButton.enabled = False
        try:
            with slicer.util.WaitCursor():
                return dependencies.ensureDependencies(
                    askConfirmation=None if slicer.app.testingEnabled() else (
                        lambda message: slicer.util.confirmOkCancelDisplay(message, _("Install dependencies"))))
        finally:
            slicer.util.showStatusMessage("")
            self.updateRunButtons()

    def selectedSegmentIds(self):
        lesionNode = self._parameterNode.lesionNode
        if lesionNode is None or not lesionNode.IsA("vtkMRMLSegmentationNode"):
            return None
        selected = list(self.ui.segmentSelector.selectedSegmentIDs())
        return selected or None  # nothing checked: the visible segments

    def onApplyButton(self) -> None:
        if dependencies.installationInProgress() or (self._job is not None and not self._job.finished):
            return  # a click that arrived while an installation or a run is going on
        parameterNode = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("PowdrOutpaint could not start."), waitCursor=True):
            try:
                if not self.installDependencies():
                    self.ui.statusLabel.text = _("The Python packages PowdrOutpaint needs are not installed.")
                    return
            except dependencies.DependencyError as error:
                slicer.util.errorDisplay(str(error))
                return
            self.ui.logTextEdit.clear()
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.value = 0
            self._job = self.logic.process(
                self.selectedInputVolumes(),
                parameterNode.lesionNode,
                parameterNode.checkpointPath,
                numberOfSamples=parameterNode.numberOfSamples,
                numberOfSteps=parameterNode.numberOfSteps,
                sampler=parameterNode.sampler,
                eta=parameterNode.eta,
                seed=parameterNode.seed,
                device=parameterNode.device,
                preserve=parameterNode.preserve,
                batchSize=parameterNode.batchSize,
                segmentIds=self.selectedSegmentIds(),
                waitForCompletion=False,
                progressCallback=self.onProgress,
                logCallback=self.onLog,
                completedCallback=self.onCompleted,
            )
            self._pollTimer.start()
            # The run uses this checkpoint: offer it again next time (saved under settingKey)
            self.ui.checkpointPathLineEdit.addCurrentPathToHistory()
        self.updateRunButtons()

    def onPollTimer(self) -> None:
        if self._job is None or self._job.poll():
            self._pollTimer.stop()

    def onProgress(self, progress: OutpaintProgress) -> None:
        if progress.fraction is None:
            self.ui.progressBar.setRange(0, 0)  # busy indicator
        else:
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.value = int(round(1000 * max(0.0, min(1.0, progress.fraction))))
        self.ui.statusLabel.text = progress.text()

    def onLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onCompleted(self, job) -> None:
        self._pollTimer.stop()
        self.ui.progressBar.setRange(0, 1000)
        if job.state == "completed":
            self._result = job.result
            for note in job.result.metadata.get("notes") or []:  # e.g. a sequence on a grid of its own
                self.ui.logTextEdit.appendPlainText(_("Note: {note}").format(note=note))
            self.ui.progressBar.value = 1000
            self.ui.statusLabel.text = _("Done in {seconds}.").format(
                seconds=OutpaintProgress.formatDuration(job.result.seconds))
            self.showResults()
        elif job.state == "cancelled":
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Cancelled: no results were added.")
        else:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = str(job.error)
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(str(job.error), windowTitle=_("PowdrOutpaint failed"),
                                     detailedText=job.error.log)
        self.updateRunButtons()
        self.updateResultsGui()

    def onCancelButton(self) -> None:
        self.ui.statusLabel.text = _("Cancelling...")
        slicer.app.processEvents()
        self.logic.cancel()

    def showResults(self) -> None:
        result = self._result
        if result is None:
            return
        if not self.logic.showResults(result, sequence=self.shownSequence()) or slicer.app.layoutManager() is None:
            return  # no views to show them in (e.g. --no-main-window)
        slicer.util.resetSliceViews()
        self.logic.centerViewsOnLesion(result)
        sequencesModule = getattr(slicer.modules, "sequences", None)
        if sequencesModule is not None and hasattr(sequencesModule, "showSequenceBrowser"):
            sequencesModule.showSequenceBrowser(result.browserNode)  # the slider that scrubs the samples
        else:
            logging.debug("Sequence browser toolbar not available")

    def onShowResultsButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not show the results."), waitCursor=True):
            self.showResults()

    def onExportButton(self) -> None:
        # Only a folder the user chose counts: an unset directory button reports ".", which
        # would be Slicer's working folder.
        folder = self._parameterNode.exportDirectory if self._parameterNode else ""
        if not folder or not os.path.isabs(folder):
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export the samples to"))
            if not folder:
                self.ui.statusLabel.text = _("Export cancelled: no folder was chosen.")
                return
            self._parameterNode.exportDirectory = folder
            qt.QSettings().setValue(SETTINGS_EXPORT_DIRECTORY, folder)
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            paths = self.logic.exportResult(self._result, folder)
            self.ui.statusLabel.text = _("Wrote {count} files to {folder}.").format(count=len(paths), folder=folder)


#
# PowdrOutpaintTest
#


class PowdrOutpaintTest(ScriptedLoadableModuleTest):
    """The whole flow in Slicer, offline: a synthetic head with a spherical lesion, a tiny untrained checkpoint.

    It installs nothing and downloads nothing (it runs in ctest): without the engine's Python
    packages it is skipped with a message saying so.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PowdrOutpaint1()
        self.setUp()
        self.test_PowdrOutpaint2()

    def _makeTinyCheckpoint(self, logic, modality=None):
        folder = slicer.util.tempDirectory("PowdrOutpaintTest")
        path = os.path.join(folder, "tiny.pt")
        arguments = ["init-checkpoint", "--preset", "tiny", "--out", path]
        if modality:
            arguments += ["--modality", modality]
        completed = logic.engine.run(*arguments, timeout=600)
        self.assertEqual(completed.returncode, 0, completed.stderr)
        return folder, path

    def _skipWithoutDependencies(self):
        missing = dependencies.missingRequirements()
        if missing:
            self.skipTest("PowdrOutpaint's Python packages are not installed ("
                          + ", ".join(requirement.distribution for requirement in missing)
                          + "): press Generate in the module once to install them, then run the test again.")

    @staticmethod
    def _sphereLesion(inputVolume, offset=(10, 0, 6), radius=16):
        """A spherical "lesion" segmentation inside the head."""
        bounds = [0.0] * 6
        inputVolume.GetRASBounds(bounds)
        center = [(bounds[2 * axis] + bounds[2 * axis + 1]) / 2 + offset[axis] for axis in range(3)]
        sphere = vtk.vtkSphereSource()
        sphere.SetCenter(center)
        sphere.SetRadius(radius)
        sphere.SetPhiResolution(30)
        sphere.SetThetaResolution(30)
        sphere.Update()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        segmentationNode.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "lesion", [1.0, 0.85, 0.0])
        return segmentationNode

    @staticmethod
    def _syntheticHead():
        """A 96 x 96 x 64 volume at 2 mm: an ellipsoidal 'head' with texture, not centred in the field of view."""
        import numpy as np

        k, j, i = np.mgrid[0:64, 0:96, 0:96].astype(np.float32)
        inside = ((i - 50) / 38) ** 2 + ((j - 46) / 42) ** 2 + ((k - 32) / 26) ** 2 < 1.0
        texture = 300 + 80 * np.sin(i / 3.0) * np.cos(j / 4.0) + 40 * np.sin(k / 2.5)
        array = np.where(inside, texture, 0.0).astype(np.float32)
        ijkToRAS = np.diag([-2.0, -2.0, 2.0, 1.0])
        ijkToRAS[:3, 3] = [96.0, 90.0, -60.0]
        return slicer.util.addVolumeFromArray(array, ijkToRAS, "SyntheticHead")

    def test_PowdrOutpaint1(self):
        import numpy as np

        self._skipWithoutDependencies()

        self.delayDisplay("Making a synthetic head volume")
        inputVolume = self._syntheticHead()
        inputArray = np.array(slicer.util.arrayFromVolume(inputVolume))
        inputMatrix = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(inputMatrix)
        inputMatrix = slicer.util.arrayFromVTKMatrix(inputMatrix)

        # A spherical "lesion" (16 mm radius) inside the head
        segmentationNode = self._sphereLesion(inputVolume)

        logic = PowdrOutpaintLogic()
        folder, checkpointPath = self._makeTinyCheckpoint(logic)
        card = logic.readModelCard(checkpointPath)
        self.assertEqual(card.get("preset"), "tiny")

        self.delayDisplay("Outpainting 3 samples with 5 steps")
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        result = logic.process(inputVolume, segmentationNode, checkpointPath, numberOfSamples=3,
                               numberOfSteps=5, seed=0, device="cpu")
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertEqual(len(result.sampleNodes), 3)
        self.assertEqual(result.sequenceNode.GetNumberOfDataNodes(), 3)
        lesion = slicer.util.arrayFromVolume(result.lesionNode) > 0
        self.assertTrue(lesion.any())
        for node in result.sampleNodes + [result.meanNode, result.stdNode, result.lesionNode]:
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(matrix)
            np.testing.assert_array_equal(slicer.util.arrayFromVTKMatrix(matrix), inputMatrix)
            self.assertEqual(node.GetImageData().GetDimensions(), inputVolume.GetImageData().GetDimensions())
        for node in result.sampleNodes:
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[lesion], inputArray[lesion])
        self.assertEqual(float(np.abs(slicer.util.arrayFromVolume(result.stdNode)[lesion]).max()), 0.0)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputVolume), inputArray)

        self.delayDisplay("Showing original | sample | mean")
        self.assertTrue(logic.showResults(result))
        slicer.util.resetSliceViews()

        exported = logic.exportResult(result, os.path.join(folder, "export"))
        self.assertIn(os.path.join(folder, "export", "SyntheticHead_outpaint_s00_lesion.nii.gz"), exported)

        self.delayDisplay("Cancelling a run")
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.process(inputVolume, segmentationNode, checkpointPath, numberOfSamples=3,
                            numberOfSteps=200, seed=1, device="cpu", waitForCompletion=False)
        import time

        deadline = time.monotonic() + 60
        while job.progress.stage != "sampling" and not job.poll() and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.1)
        job.cancel()
        self.assertEqual(job.state, "cancelled")
        self.assertIsNotNone(job.worker.returnCode)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertIsNotNone(job.worker.process.poll(), "the worker process is still running")

        self.delayDisplay("A bad checkpoint gives one clear error")
        badCheckpoint = os.path.join(folder, "bad.pt")
        with open(badCheckpoint, "wb") as stream:
            stream.write(b"this is not a checkpoint")
        with self.assertRaises(PowdrOutpaintError) as context:
            logic.process(inputVolume, segmentationNode, badCheckpoint, numberOfSamples=2, numberOfSteps=2,
                          device="cpu")
        self.assertTrue(str(context.exception))
        self.assertNotIn("Traceback", str(context.exception))

        self.delayDisplay("Test passed")

    def test_PowdrOutpaint2(self):
        """A model of two sequences (T1 and T2): one volume each, on grids of their own."""
        import numpy as np

        self._skipWithoutDependencies()
        self.delayDisplay("Making T1 and T2 volumes on different grids")
        t1Volume = self._syntheticHead()
        t1Volume.SetName("SyntheticHead_t1")
        t1Array = np.array(slicer.util.arrayFromVolume(t1Volume))
        # The T2: another contrast, cropped by (k, j, i) = (4, 6, 2) voxels, so on a grid of its own
        t2Array = np.ascontiguousarray(np.where(t1Array > 0, 900.0 - t1Array, 0.0)[4:60, 6:90, 2:92], np.float32)
        t2IJKToRAS = np.diag([-2.0, -2.0, 2.0, 1.0])
        t2IJKToRAS[:3, 3] = [96.0 - 2 * 2, 90.0 - 2 * 6, -60.0 + 2 * 4]
        t2Volume = slicer.util.addVolumeFromArray(t2Array, t2IJKToRAS, "SyntheticHead_t2")
        segmentationNode = self._sphereLesion(t1Volume)

        logic = PowdrOutpaintLogic()
        folder, checkpointPath = self._makeTinyCheckpoint(logic, modality="t1,t2")
        card = logic.readModelCard(checkpointPath)
        self.assertEqual(card["sequences"], ["t1", "t2"])
        self.assertIn("Sequences: T1, T2", logic.formatModelCard(card))

        self.delayDisplay("A missing sequence gives one clear error")
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError) as context:
            logic.process({"t1": t1Volume}, segmentationNode, checkpointPath, numberOfSamples=2, numberOfSteps=3,
                          device="cpu")
        self.assertIn("select a volume for T2", str(context.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)

        self.delayDisplay("Outpainting T1 and T2 together: 2 samples with 3 steps")
        result = logic.process({"t1": t1Volume, "t2": t2Volume}, segmentationNode, checkpointPath,
                               numberOfSamples=2, numberOfSteps=3, seed=0, device="cpu")
        self.assertEqual([own.sequenceName for own in result.sequenceResults], ["t1", "t2"])
        for own, volume, inputArray in zip(result.sequenceResults, (t1Volume, t2Volume), (t1Array, t2Array)):
            self.assertIs(own.inputVolume, volume)
            inputMatrix = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(inputMatrix)
            for node in own.sampleNodes + [own.meanNode, own.stdNode, own.lesionNode]:
                matrix = vtk.vtkMatrix4x4()
                node.GetIJKToRASMatrix(matrix)
                np.testing.assert_array_equal(slicer.util.arrayFromVTKMatrix(matrix),
                                              slicer.util.arrayFromVTKMatrix(inputMatrix))
                self.assertEqual(node.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
            lesion = slicer.util.arrayFromVolume(own.lesionNode) > 0
            self.assertTrue(lesion.any())
            for node in own.sampleNodes:
                np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[lesion], inputArray[lesion])
            self.assertTrue(own.sampleNodes[0].GetName().startswith(volume.GetName() + "_outpaint"))

        self.delayDisplay("Showing the T2 results")
        self.assertTrue(logic.showResults(result, sequence="t2"))
        slicer.util.resetSliceViews()
        exported = logic.exportResult(result, os.path.join(folder, "export"))
        self.assertIn(os.path.join(folder, "export", "SyntheticHead_t2_outpaint_s01_lesion.nii.gz"), exported)
        logic.removeResult(result)
        self.assertTrue(all(node.GetScene() is None for own in result.sequenceResults for node in own.sampleNodes))
        self.delayDisplay("Test passed")
