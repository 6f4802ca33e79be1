"""Bringing a finished run into the scene: result nodes on each input's grid, sequences, a browser, a folder."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import slicer
import vtk

from .display import setUpDisplay
from .modelcard import joinLabels, sequenceLabel
from .nodes import readVolumeOnGrid
from .progress import PowdrOutpaintError

__all__ = ["PowdrOutpaintResult", "importResults", "placeInSubjectHierarchy", "removeResult"]


@dataclass
class PowdrOutpaintResult:
    """The nodes a run added to the scene.

    For a single-sequence model these are all. For a model of several sequences the fields
    hold the first sequence's nodes and :attr:`otherSequences` one result per further
    sequence, in the model's order, each with its own input volume, samples, mean, std,
    lesion and sequence node; they share one browser node (its slider shows the same sample
    of every sequence) and one subject hierarchy folder. :attr:`sequenceResults` lists them all.
    """

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
    #: The MRI sequence of these nodes as the checkpoint names it ("t1", "flair"); "" if unknown
    sequenceName: str = ""
    #: The start of these nodes' names (the input's name; for several sequences it ends with the sequence)
    baseName: str = ""
    #: The results of the model's further sequences (several-sequence models only)
    otherSequences: list = field(default_factory=list)

    @property
    def sequenceResults(self) -> list:
        """Every sequence's result, in the model's order (just this one for a single-sequence model)."""
        return [self] + list(self.otherSequences)

    @property
    def bySequence(self) -> dict:
        """{sequence name: its result}."""
        return {result.sequenceName: result for result in self.sequenceResults}

    @property
    def proxyNode(self):
        """The volume that shows the browser's current sample (None without the Sequences logic)."""
        if self.browserNode is None or self.sequenceNode is None:
            return None
        return self.browserNode.GetProxyNode(self.sequenceNode)

    def _ownNodes(self) -> list:
        """This sequence's nodes (not the shared browser)."""
        return list(self.sampleNodes) + [self.meanNode, self.stdNode, self.lesionNode, self.sequenceNode,
                                         self.proxyNode]

    @property
    def nodes(self) -> list:
        """Every node of the run (all sequences), each once; the browser before the proxies it drives."""
        nodes = []
        for result in self.sequenceResults:
            nodes += result._ownNodes()[:-1]
        nodes.append(self.browserNode)
        nodes += [result.proxyNode for result in self.sequenceResults]
        unique = []
        for node in nodes:
            if node is not None and not any(node is other for other in unique):
                unique.append(node)
        return unique


def _readMetadata(path) -> dict:
    if path and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as stream:
                return json.load(stream)
        except ValueError:
            logging.warning("PowdrOutpaint: the run's metadata file could not be parsed")
    return {}


def _outputsPerInput(request: dict, outputs: dict) -> list[dict]:
    """The worker's outputs of each input of the request, in the request's order."""
    inputs = request["inputs"]
    perSequence = outputs.get("sequences")
    if not isinstance(perSequence, dict):
        if len(inputs) != 1:
            raise PowdrOutpaintError("The worker reported the results of one sequence instead of "
                                     f"{joinLabels([entry['sequence'] for entry in inputs])}.")
        return [outputs]
    found = {str(name).lower(): value for name, value in perSequence.items()}
    missing = [entry["sequence"] for entry in inputs if not isinstance(found.get(str(entry["sequence"]).lower()),
                                                                        dict)]
    if missing or len(found) != len(inputs):
        raise PowdrOutpaintError(f"The worker's results do not match the sequences asked for "
                                 f"({', '.join(map(str, found)) or 'none'} instead of "
                                 f"{', '.join(str(entry['sequence']) for entry in inputs)}).")
    return [found[str(entry["sequence"]).lower()] for entry in inputs]


def importResults(scene, request: dict, doneEvent: dict, log: str) -> PowdrOutpaintResult:
    """Create the result nodes from the worker's files (all files are read before any node is added).

    ``request["inputs"]`` lists one entry per input volume (one per sequence of the model):
    ``volume``, ``sequence``, ``baseName``, ``dimensions`` and ``ijkToRAS`` (the grid its
    results must be on).
    """
    inputs = request["inputs"]
    several = len(inputs) > 1
    for entry in inputs:
        if entry["volume"].GetScene() is None:
            which = f"The {sequenceLabel(entry['sequence'])} input volume" if several else "The input volume"
            raise PowdrOutpaintError(f"{which} was removed from the scene during the run.")
    outputs = _outputsPerInput(request, doneEvent.get("outputs") or {})
    read = []
    for entry, own in zip(inputs, outputs):
        dimensions, gridMatrix = entry["dimensions"], entry["ijkToRAS"]
        samplePaths = list(own.get("samples") or [])
        if len(samplePaths) != request["numberOfSamples"]:
            which = f" of {sequenceLabel(entry['sequence'])}" if several else ""
            raise PowdrOutpaintError(f"The worker wrote {len(samplePaths)} samples{which} instead of "
                                     f"{request['numberOfSamples']}.")
        read.append({
            "samples": [readVolumeOnGrid(path, False, dimensions, gridMatrix) for path in samplePaths],
            "mean": readVolumeOnGrid(own.get("mean"), False, dimensions, gridMatrix),
            "std": readVolumeOnGrid(own.get("std"), False, dimensions, gridMatrix),
            "lesion": readVolumeOnGrid(own.get("lesion"), True, dimensions, gridMatrix),
            "metadata": _readMetadata(own.get("metadata")),
        })

    addedNodes = []
    try:
        def addVolume(inputVolume, gridMatrix, dataNode, className, name):
            node = scene.AddNewNodeByClass(className, name)
            addedNodes.append(node)
            node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(gridMatrix))
            node.SetAndObserveImageData(dataNode.GetImageData())
            if inputVolume.GetParentTransformNode() is not None:
                node.SetAndObserveTransformNodeID(inputVolume.GetParentTransformNode().GetID())
            node.SetAttribute("PowdrOutpaint.Input", inputVolume.GetID())
            node.CreateDefaultDisplayNodes()
            return node

        results = []
        for entry, data in zip(inputs, read):
            inputVolume, gridMatrix, baseName = entry["volume"], entry["ijkToRAS"], entry["baseName"]

            def add(dataNode, name, className="vtkMRMLScalarVolumeNode"):
                return addVolume(inputVolume, gridMatrix, dataNode, className, name)

            sampleNodes = [add(sample, f"{baseName}_outpaint_s{index:02d}")
                           for index, sample in enumerate(data["samples"])]
            meanNode = add(data["mean"], f"{baseName}_outpaint_mean")
            stdNode = add(data["std"], f"{baseName}_outpaint_std")
            lesionNode = add(data["lesion"], f"{baseName}_outpaint_lesion", "vtkMRMLLabelMapVolumeNode")
            for node in sampleNodes + [meanNode, stdNode, lesionNode]:
                if entry["sequence"]:
                    node.SetAttribute("PowdrOutpaint.Sequence", str(entry["sequence"]))

            sequenceNode = scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{baseName}_outpaint_samples")
            addedNodes.append(sequenceNode)
            sequenceNode.SetIndexName("sample")
            sequenceNode.SetIndexUnit("")
            sequenceNode.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
            for index, node in enumerate(sampleNodes):
                sequenceNode.SetDataNodeAtValue(node, str(index))
            results.append(PowdrOutpaintResult(
                inputVolume=inputVolume, sampleNodes=sampleNodes, meanNode=meanNode, stdNode=stdNode,
                lesionNode=lesionNode, sequenceNode=sequenceNode, metadata=data["metadata"], log=log,
                sequenceName=str(entry["sequence"] or ""), baseName=baseName))

        # One browser for every sequence: its slider shows the same sample of all of them
        first = results[0]
        browserName = f"{request.get('caseName') or first.baseName}_outpaint_browser"
        browserNode = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", browserName)
        addedNodes.append(browserNode)
        if hasattr(browserNode, "SetAndObservePrimarySequenceNodeID"):
            browserNode.SetAndObservePrimarySequenceNodeID(first.sequenceNode.GetID())
        else:
            browserNode.SetAndObserveMasterSequenceNodeID(first.sequenceNode.GetID())
        for result in results[1:]:
            browserNode.AddSynchronizedSequenceNodeID(result.sequenceNode.GetID())
        browserNode.SetSelectedItemNumber(0)
        for result in results:
            result.browserNode = browserNode
            proxyNode = result.proxyNode
            if proxyNode is not None:
                addedNodes.append(proxyNode)
                proxyNode.SetName(f"{result.baseName}_outpaint_sample")
                if result.inputVolume.GetParentTransformNode() is not None:
                    proxyNode.SetAndObserveTransformNodeID(result.inputVolume.GetParentTransformNode().GetID())
            setUpDisplay(scene, result)
        first.otherSequences = results[1:]
        first.folderItemId = placeInSubjectHierarchy(scene, first, request.get("caseName"))
        return first
    except BaseException:
        for node in reversed(addedNodes):
            if node is not None and node.GetScene() is not None:
                scene.RemoveNode(node)
        raise


def placeInSubjectHierarchy(scene, result: PowdrOutpaintResult, caseName: str | None = None) -> int:
    """Put the result nodes in a folder under the input volume's parent (its study).

    Several sequences: one sub-folder per sequence (``T1``, ``FLAIR``...), the browser in the folder.
    """
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return 0
    inputItem = shNode.GetItemByDataNode(result.inputVolume)
    parentItem = shNode.GetItemParent(inputItem) if inputItem else shNode.GetSceneItemID()
    if not parentItem:
        parentItem = shNode.GetSceneItemID()
    folderItem = shNode.CreateFolderItem(parentItem, f"{caseName or result.inputVolume.GetName()} outpaint")

    def place(node, parent):
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, parent)
        else:
            shNode.CreateItem(parent, node)

    if not result.otherSequences:
        for node in result.nodes:
            place(node, folderItem)
        return folderItem
    for sequenceResult in result.sequenceResults:
        subfolder = shNode.CreateFolderItem(folderItem, sequenceLabel(sequenceResult.sequenceName))
        for node in sequenceResult._ownNodes():
            if node is not None:
                place(node, subfolder)
    if result.browserNode is not None:
        place(result.browserNode, folderItem)
    return folderItem


def removeResult(scene, result: PowdrOutpaintResult) -> None:
    """Remove every node of a result, their display and storage nodes, and its subject hierarchy folder."""
    for node in result.nodes:
        if node.GetScene() is None:
            continue
        helpers = []
        if hasattr(node, "GetNumberOfDisplayNodes"):
            helpers += [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
        if hasattr(node, "GetStorageNode"):
            helpers.append(node.GetStorageNode())
        scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None and helper.GetScene() is not None:
                scene.RemoveNode(helper)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is not None and result.folderItemId and shNode.GetItemName(result.folderItemId):
        _removeItemTree(shNode, result.folderItemId)


def _removeItemTree(shNode, item: int) -> None:
    """Remove a subject hierarchy item and everything under it, deepest items first, items only.

    In Slicer the subject hierarchy logic has already dropped the items of the removed nodes;
    where there is none (slicer-core) they linger, and a recursive RemoveItem of a folder with
    sub-folders would wait for them forever.
    """
    children = vtk.vtkIdList()
    shNode.GetItemChildren(item, children, False)
    for index in range(children.GetNumberOfIds()):
        _removeItemTree(shNode, children.GetId(index))
    shNode.RemoveItem(item, False, False)
