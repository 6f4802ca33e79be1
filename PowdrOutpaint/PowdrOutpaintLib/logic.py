"""PowdrOutpaint logic: everything the module does, usable without the GUI and without Qt.

``PowdrOutpaintLogic().process(...)`` writes the input volume (one per sequence for a model of
several sequences, e.g. T1, T1ce, T2 and FLAIR) and the lesion to a temporary folder, runs the
engine (``python -m powdr_outpaint sample --progress json``) in a separate process, and loads
the results into the scene:

* ``<input>_outpaint_sNN`` volumes and a sequence (``<input>_outpaint_samples``) with a
  browser, so a slider scrubs through the samples;
* ``<input>_outpaint_mean`` and ``<input>_outpaint_std``;
* ``<input>_outpaint_lesion``, the lesion as a label map on the input grid;

all on the input's grid, under the input's study in the subject hierarchy. A model of several
sequences gives these nodes for every sequence, each on its own input's grid and named after
it (``CASE_t2_outpaint_s00``), with one browser whose slider shows the same sample of every
sequence. Input nodes are never modified; temporary files are removed afterwards; a cancelled
or failed run adds no nodes.

This class holds the state of a session (the scene, the run in progress) and delegates each
job to its own module: ``engine`` (starting the worker), ``job`` (following it), ``inputs``
(writing the inputs), ``results`` (bringing results into the scene), ``display`` (display
and layout), ``export`` (files) and ``modelcard``. Only MRML/VTK classes and ``slicer.util``
helpers that need no application are used, so it runs in Slicer (GUI or
``--no-main-window``) and under the ``slicer-core`` Python package.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Callable, Mapping

import slicer

from . import display, export, modelcard, results
from .engine import MODULE_DIR, EngineRunner, defaultCheckpointPath, temporaryRoot
from .inputs import (
    caseName,
    resolveInputVolumes,
    selectedSegmentIds,
    sequenceBaseName,
    validateVolume,
    writeLesion,
)
from .job import PowdrOutpaintJob
from .modelcard import sequencesOfCard
from .nodes import describeNode, ijkToRAS, writeVolume
from .process import WorkerProcess, describeCommand
from .progress import OutpaintProgress, PowdrOutpaintError
from .results import PowdrOutpaintResult

__all__ = ["PowdrOutpaintLogic", "SAMPLERS", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "DEVICES", "PRESERVE_MODES"]

SAMPLERS = ("ddpm", "ddim", "dpm++2m")  # the engine's samplers.SAMPLERS
DEFAULT_SAMPLER = "dpm++2m"  # the engine's outpaint.DEFAULT_SAMPLER
DEFAULT_STEPS = 20  # the engine's outpaint.DEFAULT_STEPS
DEVICES = ("auto", "cuda", "cpu")
PRESERVE_MODES = ("exact", "model")


class PowdrOutpaintLogic:
    """Computation of the PowdrOutpaint module; usable from scripts without the GUI.

    Example (in Slicer's Python console or a ``--python-script``)::

        from PowdrOutpaintLib import PowdrOutpaintLogic
        result = PowdrOutpaintLogic().process(volumeNode, segmentationNode, "/path/model.pt",
                                              numberOfSamples=3, numberOfSteps=50, seed=0)
        result.sampleNodes, result.meanNode, result.stdNode, result.sequenceNode

    A model of several sequences (its model card's ``sequences``) takes one volume per sequence::

        result = PowdrOutpaintLogic().process({"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair},
                                              segmentationNode, "/path/brats4.pt", numberOfSamples=3)
        result.bySequence["flair"].sampleNodes  # each sequence's nodes, on its own volume's grid
    """

    moduleName = "PowdrOutpaint"

    def __init__(self, scene=None):
        self._scene = scene
        self.currentJob: PowdrOutpaintJob | None = None
        #: Keep the temporary folder of each run (for troubleshooting)
        self.keepTemporaryFiles = bool(os.environ.get("POWDR_OUTPAINT_KEEP_TEMP"))
        #: How the engine is started; ``engine.pythonExecutable`` is another interpreter for it
        #: (``POWDR_OUTPAINT_PYTHON``), None for Slicer's own
        self.engine = EngineRunner(os.environ.get("POWDR_OUTPAINT_PYTHON") or None)

    @property
    def scene(self):
        scene = self._scene if self._scene is not None else getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise RuntimeError("No MRML scene: set slicer.mrmlScene or pass scene= to PowdrOutpaintLogic.")
        return scene

    def getParameterNode(self):
        """The module's singleton parameter node (vtkMRMLScriptedModuleNode), created if needed."""
        scene = self.scene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node = scene.AddNode(node)
        elif node.GetAttribute("ModuleName") != self.moduleName:
            node.SetAttribute("ModuleName", self.moduleName)
        return node

    # ------------------------------------------------------------------ model card
    @staticmethod
    def readModelCard(checkpointPath: str) -> dict:
        """The checkpoint's model card (preset, modality, grid, training, parameters), read without torch."""
        return modelcard.readModelCard(checkpointPath)

    @staticmethod
    def formatModelCard(card: dict) -> str:
        return modelcard.formatModelCard(card)

    @staticmethod
    def selectedSegmentIds(segmentationNode, segmentIds=None) -> list[str]:
        """``segmentIds`` if given, else the visible segments, else all segments."""
        return selectedSegmentIds(segmentationNode, segmentIds)

    # ------------------------------------------------------------------ running
    def process(self, inputVolume, lesionNode, checkpointPath, numberOfSamples: int = 5, numberOfSteps: int = DEFAULT_STEPS,
                sampler: str = DEFAULT_SAMPLER, eta: float = 0.0, seed: int = 0, device: str = "auto",
                preserve: str = "exact", batchSize: int = 1, segmentIds: list[str] | None = None,
                labels: str | None = None, waitForCompletion: bool = True,
                progressCallback: Callable[[OutpaintProgress], None] | None = None,
                logCallback: Callable[[str], None] | None = None,
                completedCallback: Callable[[PowdrOutpaintJob], None] | None = None):
        """Synthesise ``numberOfSamples`` volumes around the kept lesion.

        :param inputVolume: the MRI (vtkMRMLScalarVolumeNode); never modified. For a model of
            several sequences (its card's ``sequences``, e.g. t1, t1ce, t2, flair), one volume
            per sequence: ``{"t1": node, "t1ce": node, "t2": node, "flair": node}``; each
            sequence's results come on its own volume's grid.
        :param lesionNode: vtkMRMLSegmentationNode (its visible segments, or ``segmentIds``) or
            vtkMRMLLabelMapVolumeNode (all labels > 0, or ``labels`` such as ``"1,2,4"``).
        :param checkpointPath: the model checkpoint (.pt); None or "" uses the bundled demo model.
        :param waitForCompletion: True: block and return a :class:`PowdrOutpaintResult` (raises
            :class:`PowdrOutpaintError` on failure). False: return a :class:`PowdrOutpaintJob` at once;
            call its ``poll()`` regularly (or ``wait()``), ``cancel()`` to stop it.
        :param progressCallback: called with an :class:`OutpaintProgress` as the run advances.
        :param logCallback: called with each log line of the worker.
        :param completedCallback: called with the job when it has completed, failed or been cancelled.
        """
        if self.currentJob is not None and not self.currentJob.finished:
            raise PowdrOutpaintError("A run is already in progress: wait for it or cancel it first.")
        if not isinstance(inputVolume, Mapping):
            validateVolume(inputVolume)
        checkpointPath = os.fspath(checkpointPath) if checkpointPath else defaultCheckpointPath()
        if not checkpointPath or not os.path.isfile(checkpointPath):
            raise PowdrOutpaintError(f"The checkpoint file {checkpointPath or '(none)'} does not exist.")
        try:
            sequences: tuple[str, ...] | None = sequencesOfCard(modelcard.readModelCard(checkpointPath)) or None
        except PowdrOutpaintError:
            sequences = None  # the worker reads the whole file and says what is wrong with it
        inputs = resolveInputVolumes(inputVolume, sequences)
        for _sequence, volume in inputs:
            validateVolume(volume)
        numberOfSamples, numberOfSteps, batchSize, seed = (int(numberOfSamples), int(numberOfSteps),
                                                           int(batchSize), int(seed))
        if not 1 <= numberOfSamples <= 1000:
            raise ValueError("The number of samples must be between 1 and 1000.")
        if not 1 <= numberOfSteps <= 1000:
            raise ValueError("The number of steps must be between 1 and 1000.")
        if not 1 <= batchSize <= 1000:
            raise ValueError("The batch size must be at least 1.")
        if sampler not in SAMPLERS:
            raise ValueError(f"The sampler must be one of {', '.join(SAMPLERS)}.")
        if device not in DEVICES:
            raise ValueError(f"The device must be one of {', '.join(DEVICES)}.")
        if preserve not in PRESERVE_MODES:
            raise ValueError(f"Preserve must be one of {', '.join(PRESERVE_MODES)}.")
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError("eta must be between 0 and 1.")
        self.engine.checkDependencies()

        several = len(inputs) > 1
        firstVolume = inputs[0][1]
        temporaryDirectory = tempfile.mkdtemp(prefix="PowdrOutpaint-", dir=temporaryRoot())
        try:
            maskPath = os.path.join(temporaryDirectory, "lesion.nrrd")
            outputDirectory = os.path.join(temporaryDirectory, "out")
            os.makedirs(outputDirectory)
            # The lesion goes on the first sequence's grid; the worker resamples it onto each other grid
            lesionVoxels = writeLesion(self.scene, firstVolume, lesionNode, segmentIds, maskPath)
            if lesionVoxels == 0:
                raise ValueError(f"The lesion {describeNode(lesionNode)} is empty: paint it in Segment Editor "
                                 "or choose other segments.")
            imageArguments = []
            if not several:
                imagePath = os.path.join(temporaryDirectory, "image.nrrd")
                writeVolume(firstVolume, imagePath)
                imageArguments += ["--image", imagePath]
            else:
                for index, (sequence, volume) in enumerate(inputs):
                    imagePath = os.path.join(temporaryDirectory, f"image{index}.nrrd")
                    writeVolume(volume, imagePath)
                    imageArguments += ["--image", f"{sequence}={imagePath}"]
            arguments = imageArguments + [
                "--mask", maskPath, "--checkpoint", checkpointPath,
                "--samples", numberOfSamples, "--steps", numberOfSteps, "--sampler", sampler,
                "--eta", repr(float(eta)), "--seed", seed, "--device", device, "--batch-size", batchSize,
                "--preserve", preserve, "--progress", "json", "--out", outputDirectory]
            if labels:
                arguments += ["--labels", str(labels)]
            command = self.engine.command("sample", *arguments)
            logging.info(f"PowdrOutpaint: {describeCommand(command)}")
            # cwd: with "python -m", the working folder comes first on sys.path, so the engine is
            # found even where a launcher rewrites PYTHONPATH
            worker = WorkerProcess(command, env=self.engine.environment(), cwd=MODULE_DIR)
            try:
                worker.start()
            except OSError as error:
                raise PowdrOutpaintError(f"The outpainting worker could not be started ({error}).") from None
        except BaseException:
            if not self.keepTemporaryFiles:
                shutil.rmtree(temporaryDirectory, ignore_errors=True)
            raise

        if several:
            # Every result name says its sequence (CASE_t2_outpaint_s00); exported files must not collide
            baseNames = [sequenceBaseName(volume.GetName(), sequence) for sequence, volume in inputs]
            if len({name.lower() for name in baseNames}) < len(baseNames):
                baseNames = [f"{name}_{index + 1}" for index, name in enumerate(baseNames)]
        else:
            baseNames = [firstVolume.GetName() or "volume"]
        request = {
            "inputVolume": firstVolume,
            "lesionNode": lesionNode,
            "checkpointPath": checkpointPath,
            "numberOfSamples": numberOfSamples,
            "caseName": caseName(firstVolume.GetName(), inputs[0][0]) if several else None,
            "inputs": [{
                "sequence": sequence,
                "volume": volume,
                "baseName": baseName,
                "dimensions": tuple(volume.GetImageData().GetDimensions()),
                "ijkToRAS": ijkToRAS(volume),
            } for (sequence, volume), baseName in zip(inputs, baseNames)],
        }
        job = PowdrOutpaintJob(self, worker, temporaryDirectory, request, progressCallback, logCallback,
                               completedCallback)
        self.currentJob = job
        job._reportProgress(OutpaintProgress(stage="starting", fraction=0.0, message="Starting the worker"))
        if not waitForCompletion:
            return job
        return job.wait()

    def cancel(self) -> None:
        """Cancel the run in progress, if any."""
        if self.currentJob is not None:
            self.currentJob.cancel()

    def _importResults(self, request: dict, doneEvent: dict, log: str) -> PowdrOutpaintResult:
        return results.importResults(self.scene, request, doneEvent, log)

    # ------------------------------------------------------------------ results
    def showResults(self, result: PowdrOutpaintResult, stdOpacity: float = 0.5, sequence: str | None = None) -> bool:
        """Switch to the original | current sample | mean layout; False without a layout (batch mode).

        ``sequence`` chooses which sequence of a several-sequence result the views show (default: the first).
        """
        return display.showResults(self.scene, result, stdOpacity, sequence)

    def centerViewsOnLesion(self, result: PowdrOutpaintResult, sliceNodes=None) -> None:
        display.centerViewsOnLesion(self.scene, result, sliceNodes)

    def exportResult(self, result: PowdrOutpaintResult, folder: str, baseName: str | None = None) -> list[str]:
        """Write every sample with its lesion mask, the mean and the std map to ``folder``; see :func:`export.exportResult`."""
        return export.exportResult(result, folder, baseName)

    def removeResult(self, result: PowdrOutpaintResult) -> None:
        """Remove every node of a result (and its subject hierarchy folder) from the scene."""
        results.removeResult(self.scene, result)
