"""PowdrOutpaint logic: everything the module does, usable without the GUI and without Qt.

``PowdrOutpaintLogic().process(...)`` writes the input volume and lesion to a temporary
folder, runs the engine (``python -m powdr_outpaint sample --progress json``) in a separate
process, and loads the results into the scene:

* ``<input>_outpaint_sNN`` volumes and a sequence (``<input>_outpaint_samples``) with a
  browser, so a slider scrubs through the samples;
* ``<input>_outpaint_mean`` and ``<input>_outpaint_std``;
* ``<input>_outpaint_lesion``, the lesion as a label map on the input grid;

all on the input's grid, under the input's study in the subject hierarchy. Input nodes
are never modified; temporary files are removed afterwards; a cancelled or failed run adds
no nodes.

Only MRML/VTK classes and ``slicer.util`` helpers that do not need the application are used,
so the logic runs in Slicer (GUI or ``--no-main-window``) and under the ``slicer-core``
Python package.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import slicer
import vtk

from .dependencies import missingRequirements, pipCommandHint
from .process import WorkerProcess, describeCommand

__all__ = [
    "PowdrOutpaintLogic",
    "PowdrOutpaintResult",
    "PowdrOutpaintJob",
    "PowdrOutpaintError",
    "OutpaintProgress",
    "SAMPLERS",
    "DEVICES",
    "PRESERVE_MODES",
]

#: Folder of the module (holds PowdrOutpaint.py, PowdrOutpaintLib/ and the engine powdr_outpaint/)
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CHECKPOINT_NAME = "powdr_demo_brain_t1.pt"


def defaultCheckpointPath() -> str:
    """The bundled demo model: in the module's Resources when built, the repository's when run from source."""
    candidates = [
        os.path.join(MODULE_DIR, "Resources", "Models", DEMO_CHECKPOINT_NAME),
        os.path.join(os.path.dirname(MODULE_DIR), "Resources", "Models", DEMO_CHECKPOINT_NAME),
    ]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return ""
ENGINE_PACKAGE = "powdr_outpaint"

SAMPLERS = ("ddpm", "ddim")
DEVICES = ("auto", "cuda", "cpu")
PRESERVE_MODES = ("exact", "model")

#: Custom view layout: original | current sample | mean
LAYOUT_ID = 87401
VIEW_ORIGINAL = "PowdrOriginal"
VIEW_SAMPLE = "PowdrSample"
VIEW_MEAN = "PowdrMean"
LAYOUT_XML = f"""
<layout type="horizontal" split="true">
 <item>
  <view class="vtkMRMLSliceNode" singletontag="{VIEW_ORIGINAL}">
   <property name="orientation" action="default">Axial</property>
   <property name="viewlabel" action="default">O</property>
   <property name="viewcolor" action="default">#9E9E9E</property>
  </view>
 </item>
 <item>
  <view class="vtkMRMLSliceNode" singletontag="{VIEW_SAMPLE}">
   <property name="orientation" action="default">Axial</property>
   <property name="viewlabel" action="default">S</property>
   <property name="viewcolor" action="default">#E8A33D</property>
  </view>
 </item>
 <item>
  <view class="vtkMRMLSliceNode" singletontag="{VIEW_MEAN}">
   <property name="orientation" action="default">Axial</property>
   <property name="viewlabel" action="default">M</property>
   <property name="viewcolor" action="default">#5B8FD6</property>
  </view>
 </item>
</layout>
"""

_STAGE_LABELS = {
    "starting": "Starting",
    "loading": "Loading the model",
    "preparing": "Preparing the lesion",
    "sampling": "Sampling",
    "writing": "Writing results",
    "importing": "Loading results into Slicer",
}

# Inferno colour map anchors (0, 1/8, ..., 1), interpolated to 256 entries when Slicer's
# own "Inferno" table is not available (e.g. under slicer-core).
_INFERNO_ANCHORS = np.array([
    [0.001, 0.000, 0.014], [0.122, 0.047, 0.282], [0.335, 0.060, 0.428],
    [0.533, 0.134, 0.416], [0.729, 0.212, 0.333], [0.891, 0.349, 0.198],
    [0.976, 0.550, 0.039], [0.975, 0.779, 0.185], [0.988, 0.998, 0.645],
])


class PowdrOutpaintError(RuntimeError):
    """A run that could not be done: ``str(error)`` is one readable sentence, ``log`` the details."""

    def __init__(self, message: str, log: str = "", returnCode: int | None = None):
        super().__init__(message)
        self.message = message
        self.log = log
        self.returnCode = returnCode


@dataclass
class OutpaintProgress:
    """Where a run stands, from the worker's JSON progress lines."""

    stage: str = "starting"
    sample: int | None = None
    samples: int | None = None
    step: int | None = None
    total: int | None = None
    fraction: float | None = None
    etaSeconds: float | None = None
    message: str = ""

    @classmethod
    def fromEvent(cls, event: dict[str, Any], previous: OutpaintProgress | None = None) -> OutpaintProgress:
        progress = cls(stage=str(event.get("stage") or (previous.stage if previous else "starting")))
        for key, attribute in (("sample", "sample"), ("samples", "samples"), ("step", "step"), ("total", "total")):
            value = event.get(key)
            setattr(progress, attribute, int(value) if isinstance(value, (int, float)) else None)
        fraction = event.get("fraction")
        progress.fraction = float(fraction) if isinstance(fraction, (int, float)) else None
        if progress.fraction is None and previous is not None and previous.stage == progress.stage:
            progress.fraction = previous.fraction
        if progress.fraction is None and progress.stage in ("writing", "importing"):
            progress.fraction = 1.0
        eta = event.get("eta_s")
        progress.etaSeconds = float(eta) if isinstance(eta, (int, float)) else None
        progress.message = str(event.get("message") or "")
        return progress

    @property
    def stageLabel(self) -> str:
        return _STAGE_LABELS.get(self.stage, self.stage.capitalize())

    @staticmethod
    def formatDuration(seconds: float) -> str:
        seconds = max(0, int(round(seconds)))
        if seconds < 60:
            return f"{seconds} s"
        minutes, seconds = divmod(seconds, 60)
        if minutes < 60:
            return f"{minutes} min {seconds:02d} s"
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes:02d} min"

    def text(self) -> str:
        """One line for a status label, e.g. ``Sampling: sample 2/5, step 40/100 - about 1 min 05 s left``."""
        parts = []
        if self.sample is not None and self.samples:
            parts.append(f"sample {self.sample}/{self.samples}")
        if self.step is not None and self.total:
            parts.append(f"step {self.step}/{self.total}")
        text = self.stageLabel + (": " + ", ".join(parts) if parts else "")
        if self.etaSeconds is not None and self.stage == "sampling":
            text += f" - about {self.formatDuration(self.etaSeconds)} left"
        return text


@dataclass
class PowdrOutpaintResult:
    """The nodes a run added to the scene."""

    inputVolume: Any
    sampleNodes: list = field(default_factory=list)
    meanNode: Any = None
    stdNode: Any = None
    lesionNode: Any = None
    sequenceNode: Any = None
    browserNode: Any = None
    folderItemId: int = 0
    metadata: dict = field(default_factory=dict)
    seconds: float = 0.0
    log: str = ""

    @property
    def proxyNode(self):
        """The volume that shows the browser's current sample (None without the Sequences logic)."""
        if self.browserNode is None or self.sequenceNode is None:
            return None
        return self.browserNode.GetProxyNode(self.sequenceNode)

    @property
    def nodes(self) -> list:
        nodes = list(self.sampleNodes) + [self.meanNode, self.stdNode, self.lesionNode,
                                          self.sequenceNode, self.browserNode, self.proxyNode]
        return [node for node in nodes if node is not None]


def _safeFileName(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "").strip("._")
    return name or "volume"


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _describeNode(node) -> str:
    return f"'{node.GetName()}'" if node is not None and node.GetName() else "the selected node"


class PowdrOutpaintJob:
    """A run in progress. Drive it with :meth:`poll` (from a timer) or block with :meth:`wait`.

    ``state`` is ``"running"``, ``"completed"``, ``"failed"`` or ``"cancelled"``; when the run
    completed, :attr:`result` holds the :class:`PowdrOutpaintResult`, when it failed,
    :attr:`error` the :class:`PowdrOutpaintError`.
    """

    def __init__(self, logic: PowdrOutpaintLogic, worker: WorkerProcess, temporaryDirectory: str,
                 request: dict[str, Any], progressCallback=None, logCallback=None, completedCallback=None):
        self.logic = logic
        self.worker = worker
        self.temporaryDirectory = temporaryDirectory
        self.request = request
        self.progressCallback = progressCallback
        self.logCallback = logCallback
        self.completedCallback = completedCallback
        self.state = "running"
        self.result: PowdrOutpaintResult | None = None
        self.error: PowdrOutpaintError | None = None
        self.progress = OutpaintProgress()
        self._doneEvent: dict | None = None
        self._errorMessage: str | None = None
        self.startTime = time.monotonic()

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def log(self) -> str:
        return self.worker.logText

    def _reportProgress(self, progress: OutpaintProgress) -> None:
        self.progress = progress
        if self.progressCallback is not None:
            try:
                self.progressCallback(progress)
            except Exception:  # noqa: BLE001 - a faulty display must not stop the run
                logging.exception("PowdrOutpaint progress callback failed")

    def poll(self) -> bool:
        """Handle what the worker reported since the last call; return True once the run is over."""
        if self.finished:
            return True
        for message in self.worker.poll():
            if message.kind == "event":
                event = message.value
                kind = event.get("event")
                if kind == "progress":
                    self._reportProgress(OutpaintProgress.fromEvent(event, self.progress))
                elif kind == "done":
                    self._doneEvent = event
                elif kind == "error":
                    self._errorMessage = str(event.get("message") or "").strip() or None
            elif message.kind == "log":
                if self.logCallback is not None:
                    try:
                        self.logCallback(message.value)
                    except Exception:  # noqa: BLE001
                        logging.exception("PowdrOutpaint log callback failed")
            elif message.kind == "exit":
                self._finish(message.value)
                break
        return self.finished

    def _failureMessage(self, returnCode: int) -> str:
        if self._errorMessage:
            message = self._errorMessage
            message = message[0].upper() + message[1:]
            return message if message.endswith(".") else message + "."
        # No error event: the worker crashed (missing package, out of memory, ...)
        lines = [line.strip() for line in self.worker.logLines if line.strip()]
        last = lines[-1] if lines else ""
        if returnCode < 0 or returnCode in (137, -9):
            return (f"The outpainting worker was stopped by the system (exit code {returnCode}); "
                    "it may have run out of memory: try fewer samples, a smaller batch size or the CPU device.")
        if "out of memory" in last.lower() or "MemoryError" in last:
            return (f"The outpainting worker ran out of memory ({last}); lower the batch size, "
                    "generate fewer samples at a time or use the CPU device.")
        if "No module named" in last:
            return f"The outpainting worker could not start ({last}); install the module's dependencies."
        detail = f" ({last})" if last else ""
        return f"The outpainting worker failed with exit code {returnCode}{detail}."

    def _finish(self, returnCode: int) -> None:
        try:
            if self.worker.cancelled:
                self.state = "cancelled"
                return
            if returnCode == 0 and self._doneEvent is not None:
                self._reportProgress(OutpaintProgress(stage="importing", fraction=1.0,
                                                      message="Loading results into Slicer"))
                try:
                    self.result = self.logic._importResults(self.request, self._doneEvent, self.log)
                    self.result.seconds = time.monotonic() - self.startTime
                    self.state = "completed"
                except PowdrOutpaintError as error:
                    error.log = error.log or self.log
                    self.error = error
                    self.state = "failed"
                except Exception as error:  # noqa: BLE001 - reported as a failed run with the log
                    logging.exception("PowdrOutpaint could not load the results")
                    self.error = PowdrOutpaintError(f"The results could not be loaded ({error}).", self.log, returnCode)
                    self.state = "failed"
            else:
                if returnCode == 0:
                    message = "The outpainting worker ended without reporting its results."
                else:
                    message = self._failureMessage(returnCode)
                self.error = PowdrOutpaintError(message, self.log, returnCode)
                self.state = "failed"
        finally:
            self._cleanup()
            if self.state == "failed":
                logging.error(f"PowdrOutpaint: {self.error}")
            if self.completedCallback is not None:
                try:
                    self.completedCallback(self)
                except Exception:  # noqa: BLE001
                    logging.exception("PowdrOutpaint completion callback failed")

    def _cleanup(self) -> None:
        if self.logic.currentJob is self:
            self.logic.currentJob = None
        if self.temporaryDirectory and not self.logic.keepTemporaryFiles:
            shutil.rmtree(self.temporaryDirectory, ignore_errors=True)

    def wait(self, timeout: float | None = None, pollInterval: float = 0.1) -> PowdrOutpaintResult | None:
        """Block until the run ends; return the result, raise :class:`PowdrOutpaintError` if it failed.

        Returns None when the run was cancelled. Ctrl+C (KeyboardInterrupt) cancels the run.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.poll():
                if deadline is not None and time.monotonic() > deadline:
                    self.cancel()
                    raise PowdrOutpaintError(f"The run did not finish within {timeout:g} s and was cancelled.",
                                             self.log)
                time.sleep(pollInterval)
        except KeyboardInterrupt:
            self.cancel()
            raise
        if self.state == "failed":
            raise self.error
        return self.result

    def cancel(self) -> None:
        """Stop the worker and every process it started; no nodes are added."""
        if self.finished:
            return
        self.worker.cancel()
        self.state = "cancelled"
        self._cleanup()
        if self.completedCallback is not None:
            try:
                self.completedCallback(self)
            except Exception:  # noqa: BLE001
                logging.exception("PowdrOutpaint completion callback failed")


class PowdrOutpaintLogic:
    """Computation of the PowdrOutpaint module; usable from scripts without the GUI.

    Example (in Slicer's Python console or a ``--python-script``)::

        from PowdrOutpaintLib import PowdrOutpaintLogic
        result = PowdrOutpaintLogic().process(volumeNode, segmentationNode, "/path/model.pt",
                                              numberOfSamples=3, numberOfSteps=50, seed=0)
        result.sampleNodes, result.meanNode, result.stdNode, result.sequenceNode
    """

    moduleName = "PowdrOutpaint"

    def __init__(self, scene=None):
        self._scene = scene
        self.currentJob: PowdrOutpaintJob | None = None
        #: Keep the temporary folder of each run (for troubleshooting)
        self.keepTemporaryFiles = bool(os.environ.get("POWDR_OUTPAINT_KEEP_TEMP"))
        #: Python that runs the engine; None picks Slicer's own (see :meth:`defaultPythonExecutable`)
        self.pythonExecutable: str | None = os.environ.get("POWDR_OUTPAINT_PYTHON") or None
        self._modelCardCache: dict[tuple, dict] = {}

    # ------------------------------------------------------------------ environment
    @property
    def scene(self):
        scene = self._scene if self._scene is not None else getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise RuntimeError("No MRML scene: set slicer.mrmlScene or pass scene= to PowdrOutpaintLogic.")
        return scene

    @staticmethod
    def defaultPythonExecutable() -> str:
        """Slicer's ``PythonSlicer`` inside Slicer, else the running interpreter."""
        try:
            from slicer import app  # only inside the Slicer application
        except ImportError:
            app = None
        if app is not None:
            found = shutil.which("PythonSlicer")
            if found:
                return found
            suffix = ".exe" if os.name == "nt" else ""
            candidates = [os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + suffix)]
            slicerHome = getattr(app, "slicerHome", None)
            if slicerHome:
                candidates.append(os.path.join(slicerHome, "bin", "PythonSlicer" + suffix))
            for candidate in candidates:
                if os.path.isfile(candidate):
                    return candidate
            raise PowdrOutpaintError("Slicer's Python interpreter (PythonSlicer) was not found.")
        return sys.executable

    def workerPython(self) -> str:
        return self.pythonExecutable or self.defaultPythonExecutable()

    def workerEnvironment(self) -> dict[str, str]:
        """This process's environment with the module folder first on PYTHONPATH (the engine lives there)."""
        environment = dict(os.environ)
        pythonPath = environment.get("PYTHONPATH", "")
        parts = [MODULE_DIR] + [part for part in pythonPath.split(os.pathsep) if part and part != MODULE_DIR]
        environment["PYTHONPATH"] = os.pathsep.join(parts)
        environment["PYTHONUNBUFFERED"] = "1"
        environment["PYTHONIOENCODING"] = "utf-8"
        return environment

    def engineCommand(self, subcommand: str, *arguments) -> list[str]:
        return [self.workerPython(), "-m", ENGINE_PACKAGE, subcommand] + [str(argument) for argument in arguments]

    def runEngineCommand(self, subcommand: str, *arguments, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a short engine command (``info``, ``init-checkpoint``...) and capture its output as text."""
        options = {"creationflags": 0x08000000} if os.name == "nt" else {}  # no console window
        return subprocess.run(self.engineCommand(subcommand, *arguments), env=self.workerEnvironment(),
                              cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, **options)

    def _temporaryRoot(self) -> str | None:
        try:
            from slicer import app
        except ImportError:
            return None
        path = getattr(app, "temporaryPath", None)
        return path if path and os.path.isdir(path) else None

    def checkDependencies(self) -> None:
        """Raise a clear error when the engine's packages are missing from the worker's Python."""
        if self.pythonExecutable and os.path.realpath(self.pythonExecutable) != os.path.realpath(sys.executable):
            return  # another interpreter: it reports missing packages itself
        missing = missingRequirements()
        if missing:
            names = ", ".join(requirement.distribution for requirement in missing)
            raise PowdrOutpaintError(
                f"Python packages needed by PowdrOutpaint are not installed: {names}. Open the module and "
                f"press Generate once to install them, or run {pipCommandHint(missing)}."
            )

    # ------------------------------------------------------------------ parameter node
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
    def readModelCard(self, checkpointPath: str, timeout: float = 180.0) -> dict:
        """The checkpoint's model card (preset, modality, grid, training, parameters) as a dict.

        Read by the engine in a subprocess, so Slicer's own Python never imports torch.
        """
        checkpointPath = os.fspath(checkpointPath)
        if not checkpointPath or not os.path.isfile(checkpointPath):
            raise PowdrOutpaintError(f"The checkpoint file {checkpointPath or '(none)'} does not exist.")
        stat = os.stat(checkpointPath)
        key = (os.path.realpath(checkpointPath), stat.st_mtime_ns, stat.st_size)
        if key in self._modelCardCache:
            return dict(self._modelCardCache[key])
        try:
            completed = self.runEngineCommand("info", "--checkpoint", checkpointPath, "--json", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PowdrOutpaintError(f"Reading the checkpoint took longer than {timeout:g} s.") from None
        except OSError as error:
            raise PowdrOutpaintError(f"The engine could not be started ({error}).") from None
        if completed.returncode != 0:
            lines = [line.strip() for line in (completed.stderr or "").splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit code {completed.returncode}"
            last = re.sub(r"^powdr-outpaint( \w+)?: error: ", "", last)
            raise PowdrOutpaintError(f"The checkpoint could not be read: {last}", completed.stderr)
        try:
            card = json.loads(completed.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise PowdrOutpaintError("The engine did not return a model card.", completed.stderr) from None
        self._modelCardCache[key] = card
        return dict(card)

    @staticmethod
    def formatModelCard(card: dict) -> str:
        """The model card as a few lines of plain text for the module panel."""
        lines = []
        preset = card.get("preset", "?")
        modality = str(card.get("modality", "?"))
        lines.append(f"Preset: {preset}    Modality: {modality.upper()}")
        grid = card.get("grid") or {}
        shape = grid.get("shape")
        spacing = grid.get("spacing_mm", grid.get("spacing"))
        if shape:
            gridText = " x ".join(str(value) for value in shape) + " voxels"
            if spacing:
                values = sorted({round(float(value), 2) for value in spacing})
                gridText += " at " + (f"{values[0]:g} mm" if len(values) == 1 else
                                      " x ".join(f"{float(value):g}" for value in spacing) + " mm")
            lines.append(f"Grid: {gridText}")
        training = card.get("training") or {}
        strategy = training.get("strategy")
        if strategy:
            trainingText = str(strategy)
            iterations = training.get("iterations")
            if iterations:
                trainingText += f", {iterations} iterations"
            lines.append(f"Training: {trainingText}")
        parameters = card.get("parameters")
        if isinstance(parameters, (int, float)):
            lines.append(f"Parameters: {parameters / 1e6:.2f} M")
        if strategy == "untrained":
            lines.append("Untrained weights: results are noise around the lesion (for testing only).")
        return "\n".join(lines)

    # ------------------------------------------------------------------ inputs
    def _validateVolume(self, inputVolume) -> None:
        if inputVolume is None or not inputVolume.IsA("vtkMRMLScalarVolumeNode") or inputVolume.IsA(
                "vtkMRMLLabelMapVolumeNode"):
            raise ValueError("Select an MRI volume (a scalar volume) as input.")
        imageData = inputVolume.GetImageData()
        if imageData is None or min(imageData.GetDimensions()) < 1:
            raise ValueError(f"The input volume {_describeNode(inputVolume)} has no image data.")
        if imageData.GetNumberOfScalarComponents() != 1:
            raise ValueError(f"The input volume {_describeNode(inputVolume)} has several components; "
                             "a single-channel MRI volume is needed.")
        if min(imageData.GetDimensions()) < 2:
            raise ValueError(f"The input volume {_describeNode(inputVolume)} is not 3-D.")

    def selectedSegmentIds(self, segmentationNode, segmentIds=None) -> list[str]:
        """``segmentIds`` if given, else the visible segments, else all segments."""
        segmentation = segmentationNode.GetSegmentation()
        allIds = [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]
        if segmentIds is not None:
            unknown = [segmentId for segmentId in segmentIds if segmentId not in allIds]
            if unknown:
                raise ValueError(f"The segmentation {_describeNode(segmentationNode)} has no segment {unknown[0]!r}.")
            return list(segmentIds)
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            visible = vtk.vtkStringArray()
            displayNode.GetVisibleSegmentIDs(visible)
            visibleIds = [visible.GetValue(index) for index in range(visible.GetNumberOfValues())]
            if visibleIds:
                return visibleIds
            if allIds:
                raise ValueError(f"No segment of {_describeNode(segmentationNode)} is visible: "
                                 "show the lesion segments or choose them explicitly.")
        return allIds

    def _writeVolume(self, node, path: str, compress: bool = False) -> None:
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storageNode.SetFileName(path)
        storageNode.SetUseCompression(1 if compress else 0)
        if not storageNode.WriteData(node) or not os.path.isfile(path):
            raise PowdrOutpaintError(f"{_describeNode(node)} could not be written to {path}.")

    def _writeLesion(self, inputVolume, lesionNode, segmentIds, path: str) -> int:
        """Write the lesion as a label map file; return the number of lesion voxels (on its own grid)."""
        if lesionNode is None:
            raise ValueError("Select the lesion: a segmentation or a label map volume.")
        if lesionNode is inputVolume:
            raise ValueError("The lesion must be a segmentation or label map, not the input volume itself.")
        if lesionNode.IsA("vtkMRMLSegmentationNode"):
            ids = self.selectedSegmentIds(lesionNode, segmentIds)
            if not ids:
                raise ValueError(f"The segmentation {_describeNode(lesionNode)} has no segments: "
                                 "draw the lesion in Segment Editor first.")
            return self._exportSegmentsToFile(inputVolume, lesionNode, ids, path)
        if lesionNode.IsA("vtkMRMLScalarVolumeNode"):
            imageData = lesionNode.GetImageData()
            if imageData is None:
                raise ValueError(f"The lesion volume {_describeNode(lesionNode)} has no image data.")
            count = int(np.count_nonzero(slicer.util.arrayFromVolume(lesionNode) > 0))
            if count:
                # Written on its own grid: the engine resamples it (nearest neighbour, physical space)
                self._writeVolume(lesionNode, path)
            return count
        raise ValueError(f"{_describeNode(lesionNode)} is neither a segmentation nor a label map volume.")

    def _exportSegmentsToFile(self, inputVolume, segmentationNode, segmentIds: list[str], path: str) -> int:
        """Export segments to a label map on the input volume's grid (labels 1..n) and write it."""
        scene = self.scene
        segmentation = segmentationNode.GetSegmentation()
        idArray = vtk.vtkStringArray()
        colorTable = slicer.vtkMRMLColorTableNode()
        colorTable.SetTypeToUser()
        colorTable.SetNumberOfColors(len(segmentIds) + 1)
        colorTable.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        for index, segmentId in enumerate(segmentIds):
            idArray.InsertNextValue(segmentId)
            segment = segmentation.GetSegment(segmentId)
            red, green, blue = segment.GetColor()
            colorTable.SetColor(index + 1, segment.GetName() or segmentId, red, green, blue, 1.0)
        # The export needs its label map in the scene and may add helper nodes (display, colour table):
        # every node it adds is removed again.
        existing = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
        labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
        labelmapNode.SetName(scene.GenerateUniqueName("PowdrOutpaintLesionExport"))
        labelmapNode.SetHideFromEditors(True)
        labelmapNode.SetAttribute("PowdrOutpaint.Temporary", "1")
        scene.AddNode(labelmapNode)
        try:
            sourceNode = segmentationNode
            labelmapName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
            if not segmentation.ContainsRepresentation(labelmapName):
                # The export would add a binary labelmap representation to the user's segmentation:
                # work on a copy so that the input stays as it is.
                sourceNode = slicer.vtkMRMLSegmentationNode()
                sourceNode.SetName(scene.GenerateUniqueName("PowdrOutpaintLesionCopy"))
                sourceNode.SetHideFromEditors(True)
                scene.AddNode(sourceNode)
                sourceNode.GetSegmentation().DeepCopy(segmentation)
                if segmentationNode.GetTransformNodeID():
                    sourceNode.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
            exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                sourceNode, idArray, labelmapNode, inputVolume,
                slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colorTable)
            if not exported or labelmapNode.GetImageData() is None:
                raise PowdrOutpaintError(f"The segments of {_describeNode(segmentationNode)} could not be exported "
                                         "to a label map on the input volume's grid.")
            count = int(np.count_nonzero(slicer.util.arrayFromVolume(labelmapNode)))
            if count:
                self._writeVolume(labelmapNode, path)
            return count
        finally:
            added = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
            for node in added:
                if node is not None and node.GetID() not in existing:
                    scene.RemoveNode(node)

    # ------------------------------------------------------------------ running
    def process(self, inputVolume, lesionNode, checkpointPath, numberOfSamples: int = 5, numberOfSteps: int = 100,
                sampler: str = "ddpm", eta: float = 0.0, seed: int = 0, device: str = "auto",
                preserve: str = "exact", batchSize: int = 1, segmentIds: list[str] | None = None,
                labels: str | None = None, waitForCompletion: bool = True,
                progressCallback: Callable[[OutpaintProgress], None] | None = None,
                logCallback: Callable[[str], None] | None = None,
                completedCallback: Callable[[PowdrOutpaintJob], None] | None = None):
        """Synthesise ``numberOfSamples`` volumes around the kept lesion.

        :param inputVolume: the MRI (vtkMRMLScalarVolumeNode); never modified.
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
        self._validateVolume(inputVolume)
        checkpointPath = os.fspath(checkpointPath) if checkpointPath else defaultCheckpointPath()
        if not checkpointPath or not os.path.isfile(checkpointPath):
            raise PowdrOutpaintError(f"The checkpoint file {checkpointPath or '(none)'} does not exist.")
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
        self.checkDependencies()

        temporaryDirectory = tempfile.mkdtemp(prefix="PowdrOutpaint-", dir=self._temporaryRoot())
        try:
            imagePath = os.path.join(temporaryDirectory, "image.nrrd")
            maskPath = os.path.join(temporaryDirectory, "lesion.nrrd")
            outputDirectory = os.path.join(temporaryDirectory, "out")
            os.makedirs(outputDirectory)
            lesionVoxels = self._writeLesion(inputVolume, lesionNode, segmentIds, maskPath)
            if lesionVoxels == 0:
                raise ValueError(f"The lesion {_describeNode(lesionNode)} is empty: paint it in Segment Editor "
                                 "or choose other segments.")
            self._writeVolume(inputVolume, imagePath)
            arguments = ["--image", imagePath, "--mask", maskPath, "--checkpoint", checkpointPath,
                         "--samples", numberOfSamples, "--steps", numberOfSteps, "--sampler", sampler,
                         "--eta", repr(float(eta)), "--seed", seed, "--device", device, "--batch-size", batchSize,
                         "--preserve", preserve, "--progress", "json", "--out", outputDirectory]
            if labels:
                arguments += ["--labels", str(labels)]
            command = self.engineCommand("sample", *arguments)
            logging.info(f"PowdrOutpaint: {describeCommand(command)}")
            # cwd: with "python -m", the working folder comes first on sys.path, so the engine is
            # found even where a launcher rewrites PYTHONPATH
            worker = WorkerProcess(command, env=self.workerEnvironment(), cwd=MODULE_DIR)
            try:
                worker.start()
            except OSError as error:
                raise PowdrOutpaintError(f"The outpainting worker could not be started ({error}).") from None
        except BaseException:
            if not self.keepTemporaryFiles:
                shutil.rmtree(temporaryDirectory, ignore_errors=True)
            raise

        request = {
            "inputVolume": inputVolume,
            "lesionNode": lesionNode,
            "checkpointPath": checkpointPath,
            "numberOfSamples": numberOfSamples,
            "inputDimensions": tuple(inputVolume.GetImageData().GetDimensions()),
            "inputIJKToRAS": _matrix(inputVolume),
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

    # ------------------------------------------------------------------ results
    def _readVolumeFile(self, path: str, labelmap: bool, dimensions: tuple, ijkToRAS: np.ndarray):
        """Read ``path`` into a node that is not in the scene; check it is on the input grid."""
        if not path or not os.path.isfile(path):
            raise PowdrOutpaintError(f"The worker did not write {os.path.basename(path or '?')}.")
        node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storageNode.SetFileName(path)
        storageNode.SetSingleFile(1)
        if not storageNode.ReadData(node) or node.GetImageData() is None:
            raise PowdrOutpaintError(f"The result file {os.path.basename(path)} could not be read.")
        readDimensions = tuple(node.GetImageData().GetDimensions())
        if readDimensions != tuple(dimensions):
            raise PowdrOutpaintError(f"The result {os.path.basename(path)} has {readDimensions} voxels instead of "
                                     f"the input's {tuple(dimensions)}.")
        readMatrix = _matrix(node)
        scale = max(1.0, float(np.abs(ijkToRAS[:3, 3]).max()))
        if not np.allclose(readMatrix[:3, :3], ijkToRAS[:3, :3], rtol=1e-4, atol=1e-4) or not np.allclose(
                readMatrix[:3, 3], ijkToRAS[:3, 3], rtol=0, atol=1e-4 * scale + 1e-3):
            raise PowdrOutpaintError(f"The result {os.path.basename(path)} is not on the input volume's grid.")
        return node

    def _importResults(self, request: dict, doneEvent: dict, log: str) -> PowdrOutpaintResult:
        """Create the result nodes from the worker's files (all files are read before any node is added)."""
        inputVolume = request["inputVolume"]
        if inputVolume.GetScene() is None:
            raise PowdrOutpaintError("The input volume was removed from the scene during the run.")
        outputs = doneEvent.get("outputs") or {}
        dimensions, ijkToRAS = request["inputDimensions"], request["inputIJKToRAS"]
        samplePaths = list(outputs.get("samples") or [])
        if len(samplePaths) != request["numberOfSamples"]:
            raise PowdrOutpaintError(f"The worker wrote {len(samplePaths)} samples instead of "
                                     f"{request['numberOfSamples']}.")
        sampleData = [self._readVolumeFile(path, False, dimensions, ijkToRAS) for path in samplePaths]
        meanData = self._readVolumeFile(outputs.get("mean"), False, dimensions, ijkToRAS)
        stdData = self._readVolumeFile(outputs.get("std"), False, dimensions, ijkToRAS)
        lesionData = self._readVolumeFile(outputs.get("lesion"), True, dimensions, ijkToRAS)
        metadata = {}
        metadataPath = outputs.get("metadata")
        if metadataPath and os.path.isfile(metadataPath):
            try:
                with open(metadataPath, encoding="utf-8") as stream:
                    metadata = json.load(stream)
            except ValueError:
                logging.warning("PowdrOutpaint: the run's metadata file could not be parsed")

        scene = self.scene
        baseName = inputVolume.GetName() or "volume"
        addedNodes = []
        try:
            def addVolume(dataNode, className, name):
                node = scene.AddNewNodeByClass(className, name)
                addedNodes.append(node)
                node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRAS))
                node.SetAndObserveImageData(dataNode.GetImageData())
                if inputVolume.GetParentTransformNode() is not None:
                    node.SetAndObserveTransformNodeID(inputVolume.GetParentTransformNode().GetID())
                node.SetAttribute("PowdrOutpaint.Input", inputVolume.GetID())
                node.CreateDefaultDisplayNodes()
                return node

            sampleNodes = [addVolume(data, "vtkMRMLScalarVolumeNode", f"{baseName}_outpaint_s{index:02d}")
                           for index, data in enumerate(sampleData)]
            meanNode = addVolume(meanData, "vtkMRMLScalarVolumeNode", f"{baseName}_outpaint_mean")
            stdNode = addVolume(stdData, "vtkMRMLScalarVolumeNode", f"{baseName}_outpaint_std")
            lesionNode = addVolume(lesionData, "vtkMRMLLabelMapVolumeNode", f"{baseName}_outpaint_lesion")

            sequenceNode = scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{baseName}_outpaint_samples")
            addedNodes.append(sequenceNode)
            sequenceNode.SetIndexName("sample")
            sequenceNode.SetIndexUnit("")
            sequenceNode.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
            for index, node in enumerate(sampleNodes):
                sequenceNode.SetDataNodeAtValue(node, str(index))
            browserNode = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{baseName}_outpaint_browser")
            addedNodes.append(browserNode)
            if hasattr(browserNode, "SetAndObservePrimarySequenceNodeID"):
                browserNode.SetAndObservePrimarySequenceNodeID(sequenceNode.GetID())
            else:
                browserNode.SetAndObserveMasterSequenceNodeID(sequenceNode.GetID())
            browserNode.SetSelectedItemNumber(0)

            result = PowdrOutpaintResult(inputVolume=inputVolume, sampleNodes=sampleNodes, meanNode=meanNode,
                                         stdNode=stdNode, lesionNode=lesionNode, sequenceNode=sequenceNode,
                                         browserNode=browserNode, metadata=metadata, log=log)
            proxyNode = result.proxyNode
            if proxyNode is not None:
                addedNodes.append(proxyNode)
                proxyNode.SetName(f"{baseName}_outpaint_sample")
                if inputVolume.GetParentTransformNode() is not None:
                    proxyNode.SetAndObserveTransformNodeID(inputVolume.GetParentTransformNode().GetID())
            self._setUpDisplay(result)
            result.folderItemId = self._placeInSubjectHierarchy(result)
            return result
        except BaseException:
            for node in reversed(addedNodes):
                if node is not None and node.GetScene() is not None:
                    scene.RemoveNode(node)
            raise

    def _placeInSubjectHierarchy(self, result: PowdrOutpaintResult) -> int:
        """Put the result nodes in a folder under the input volume's parent (its study)."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if shNode is None:
            return 0
        inputItem = shNode.GetItemByDataNode(result.inputVolume)
        parentItem = shNode.GetItemParent(inputItem) if inputItem else shNode.GetSceneItemID()
        if not parentItem:
            parentItem = shNode.GetSceneItemID()
        folderItem = shNode.CreateFolderItem(parentItem, f"{result.inputVolume.GetName()} outpaint")
        for node in result.nodes:
            item = shNode.GetItemByDataNode(node)
            if item:
                shNode.SetItemParent(item, folderItem)
            else:
                shNode.CreateItem(folderItem, node)
        return folderItem

    # ------------------------------------------------------------------ display
    def infernoColorNode(self):
        """Slicer's Inferno colour table, or an equivalent one added to the scene when it is missing."""
        scene = self.scene
        node = scene.GetNodeByID("vtkMRMLColorTableNodeFileInferno.txt")
        if node is not None:
            return node
        node = scene.GetSingletonNode("PowdrOutpaintInferno", "vtkMRMLColorTableNode")
        if node is not None:
            return node
        node = slicer.vtkMRMLColorTableNode()
        node.SetTypeToUser()
        node.SetName("Inferno (PowdrOutpaint)")
        node.SetSingletonTag("PowdrOutpaintInferno")
        node.SetNumberOfColors(256)
        positions = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
        for index, value in enumerate(np.linspace(0.0, 1.0, 256)):
            red, green, blue = (float(np.interp(value, positions, _INFERNO_ANCHORS[:, channel])) for channel in range(3))
            node.SetColor(index, f"{index}", red, green, blue, 1.0)
        node.SetHideFromEditors(False)
        return scene.AddNode(node)

    def lesionColorNode(self):
        """A two-entry table: 0 transparent, 1 'lesion' in yellow (for the outline)."""
        scene = self.scene
        node = scene.GetSingletonNode("PowdrOutpaintLesion", "vtkMRMLColorTableNode")
        if node is not None:
            return node
        node = slicer.vtkMRMLColorTableNode()
        node.SetTypeToUser()
        node.SetName("Lesion (PowdrOutpaint)")
        node.SetSingletonTag("PowdrOutpaintLesion")
        node.SetNumberOfColors(2)
        node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        node.SetColor(1, "lesion", 1.0, 0.85, 0.0, 1.0)
        return scene.AddNode(node)

    def _setUpDisplay(self, result: PowdrOutpaintResult) -> None:
        """Grey samples and mean with the input's window/level; std in Inferno, thresholded; lesion outline."""
        inputDisplay = result.inputVolume.GetDisplayNode()
        window = None
        if inputDisplay is not None and not inputDisplay.GetAutoWindowLevel():
            window = (inputDisplay.GetWindowLevelMin(), inputDisplay.GetWindowLevelMax())
        if window is None:
            values = slicer.util.arrayFromVolume(result.inputVolume)
            low, high = np.percentile(values[values != 0] if np.any(values) else values, [0.5, 99.5])
            window = (float(low), float(high if high > low else low + 1))
        greyNodes = list(result.sampleNodes) + [result.meanNode]
        if result.proxyNode is not None:
            greyNodes.append(result.proxyNode)
        for node in greyNodes:
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            if display is None:
                continue
            if inputDisplay is not None and inputDisplay.GetColorNodeID():
                display.SetAndObserveColorNodeID(inputDisplay.GetColorNodeID())
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(*window)

        stdDisplay = result.stdNode.GetDisplayNode()
        if stdDisplay is not None:
            stdValues = slicer.util.arrayFromVolume(result.stdNode)
            lesionValues = slicer.util.arrayFromVolume(result.lesionNode)
            outside = stdValues[(lesionValues == 0) & (stdValues > 0)]
            top = float(np.percentile(outside, 99.0)) if outside.size else 0.0
            top = top if top > 0 else 1.0
            stdDisplay.SetAndObserveColorNodeID(self.infernoColorNode().GetID())
            stdDisplay.SetAutoWindowLevel(False)
            stdDisplay.SetWindowLevelMinMax(0.0, top)
            stdDisplay.SetAutoThreshold(False)
            stdDisplay.SetLowerThreshold(0.1 * top)
            stdDisplay.SetUpperThreshold(max(float(stdValues.max()), top))
            stdDisplay.SetApplyThreshold(True)

        lesionDisplay = result.lesionNode.GetDisplayNode()
        if lesionDisplay is not None:
            lesionDisplay.SetAndObserveColorNodeID(self.lesionColorNode().GetID())

    def lesionCenter(self, result: PowdrOutpaintResult) -> tuple[float, float, float] | None:
        """RAS position of the lesion's centre of mass (None if empty)."""
        values = slicer.util.arrayFromVolume(result.lesionNode)
        indices = np.argwhere(values > 0)
        if indices.size == 0:
            return None
        k, j, i = indices.mean(axis=0)
        ras = _matrix(result.lesionNode) @ np.array([i, j, k, 1.0])
        return float(ras[0]), float(ras[1]), float(ras[2])

    def showResults(self, result: PowdrOutpaintResult, stdOpacity: float = 0.5) -> bool:
        """Switch to the original | current sample | mean layout (needs the application's layout node).

        The std map is an Inferno overlay on the sample and mean views, the lesion an outline in
        every view, the views are linked and centred on the lesion. Returns False when there is no
        layout (batch mode).
        """
        scene = self.scene
        layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layoutNode is None:
            return False
        if not layoutNode.IsLayoutDescription(LAYOUT_ID):
            layoutNode.AddLayoutDescription(LAYOUT_ID, LAYOUT_XML)
        else:
            layoutNode.SetLayoutDescription(LAYOUT_ID, LAYOUT_XML)
        layoutNode.SetViewArrangement(LAYOUT_ID)

        sampleVolume = result.proxyNode or (result.sampleNodes[0] if result.sampleNodes else result.meanNode)
        views = {
            VIEW_ORIGINAL: (result.inputVolume, None),
            VIEW_SAMPLE: (sampleVolume, result.stdNode),
            VIEW_MEAN: (result.meanNode, result.stdNode),
        }
        compositeNodes = {}
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
            compositeNodes[node.GetLayoutName()] = node
        sliceNodes = {}
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
            sliceNodes[node.GetLayoutName()] = node
        found = False
        for viewName, (background, foreground) in views.items():
            compositeNode = compositeNodes.get(viewName)
            if compositeNode is None:
                continue
            found = True
            compositeNode.SetBackgroundVolumeID(background.GetID() if background else None)
            compositeNode.SetForegroundVolumeID(foreground.GetID() if foreground else None)
            compositeNode.SetForegroundOpacity(stdOpacity if foreground else 0.0)
            compositeNode.SetLabelVolumeID(result.lesionNode.GetID() if result.lesionNode else None)
            compositeNode.SetLabelOpacity(1.0)
            compositeNode.SetLinkedControl(True)
            sliceNode = sliceNodes.get(viewName)
            if sliceNode is not None:
                sliceNode.SetUseLabelOutline(True)
        self.centerViewsOnLesion(result, [sliceNodes[name] for name in views if name in sliceNodes])
        return found

    def centerViewsOnLesion(self, result: PowdrOutpaintResult, sliceNodes=None) -> None:
        """Centre the result views (default: the three PowdrOutpaint views) on the lesion."""
        center = self.lesionCenter(result)
        if center is None:
            return
        if sliceNodes is None:
            scene = self.scene
            sliceNodes = []
            for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
                node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
                if node.GetLayoutName() in (VIEW_ORIGINAL, VIEW_SAMPLE, VIEW_MEAN):
                    sliceNodes.append(node)
        for sliceNode in sliceNodes:
            sliceNode.JumpSliceByCentering(*center)

    # ------------------------------------------------------------------ export / removal
    def exportResult(self, result: PowdrOutpaintResult, folder: str, baseName: str | None = None) -> list[str]:
        """Write every sample with its lesion mask, the mean and the std map to ``folder`` (NIfTI).

        Names (``<base>`` is the input volume's name, made file-system safe)::

            <base>_outpaint_s00.nii.gz, <base>_outpaint_s00_lesion.nii.gz, ...
            <base>_outpaint_mean.nii.gz, <base>_outpaint_std.nii.gz, <base>_outpaint_lesion.nii.gz
            <base>_outpaint.json  (run settings and model card)

        Existing files with these names are replaced. Returns the paths written.
        """
        if not folder:
            raise ValueError("Choose a folder to export to.")
        os.makedirs(folder, exist_ok=True)
        base = _safeFileName(baseName or result.inputVolume.GetName())
        written = []

        def write(node, name):
            path = os.path.join(folder, name)
            self._writeVolume(node, path, compress=True)
            written.append(path)

        for index, node in enumerate(result.sampleNodes):
            write(node, f"{base}_outpaint_s{index:02d}.nii.gz")
            write(result.lesionNode, f"{base}_outpaint_s{index:02d}_lesion.nii.gz")
        write(result.meanNode, f"{base}_outpaint_mean.nii.gz")
        write(result.stdNode, f"{base}_outpaint_std.nii.gz")
        write(result.lesionNode, f"{base}_outpaint_lesion.nii.gz")
        metadata = dict(result.metadata)
        metadata.pop("outputs", None)
        metadata["exported_files"] = [os.path.basename(path) for path in written]
        metadata["input_volume"] = result.inputVolume.GetName()
        metadataPath = os.path.join(folder, f"{base}_outpaint.json")
        with open(metadataPath, "w", encoding="utf-8") as stream:
            json.dump(metadata, stream, indent=2, default=str)
        written.append(metadataPath)
        return written

    def removeResult(self, result: PowdrOutpaintResult) -> None:
        """Remove every node of a result (and its subject hierarchy folder) from the scene."""
        scene = self.scene
        for node in result.nodes:
            if node.GetScene() is not None:
                scene.RemoveNode(node)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if shNode is not None and result.folderItemId:
            shNode.RemoveItem(result.folderItemId)
