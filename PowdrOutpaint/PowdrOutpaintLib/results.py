"""Bringing a finished run into the scene: result nodes on the input grid, a sequence, a folder."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import slicer

from .display import setUpDisplay
from .nodes import readVolumeOnGrid
from .progress import PowdrOutpaintError

__all__ = ["PowdrOutpaintResult", "importResults", "placeInSubjectHierarchy", "removeResult"]


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


def importResults(scene, request: dict, doneEvent: dict, log: str) -> PowdrOutpaintResult:
    """Create the result nodes from the worker's files (all files are read before any node is added)."""
    inputVolume = request["inputVolume"]
    if inputVolume.GetScene() is None:
        raise PowdrOutpaintError("The input volume was removed from the scene during the run.")
    outputs = doneEvent.get("outputs") or {}
    dimensions, gridMatrix = request["inputDimensions"], request["inputIJKToRAS"]
    samplePaths = list(outputs.get("samples") or [])
    if len(samplePaths) != request["numberOfSamples"]:
        raise PowdrOutpaintError(f"The worker wrote {len(samplePaths)} samples instead of "
                                 f"{request['numberOfSamples']}.")
    sampleData = [readVolumeOnGrid(path, False, dimensions, gridMatrix) for path in samplePaths]
    meanData = readVolumeOnGrid(outputs.get("mean"), False, dimensions, gridMatrix)
    stdData = readVolumeOnGrid(outputs.get("std"), False, dimensions, gridMatrix)
    lesionData = readVolumeOnGrid(outputs.get("lesion"), True, dimensions, gridMatrix)
    metadata = {}
    metadataPath = outputs.get("metadata")
    if metadataPath and os.path.isfile(metadataPath):
        try:
            with open(metadataPath, encoding="utf-8") as stream:
                metadata = json.load(stream)
        except ValueError:
            logging.warning("PowdrOutpaint: the run's metadata file could not be parsed")
    baseName = inputVolume.GetName() or "volume"
    addedNodes = []
    try:
        def addVolume(dataNode, className, name):
            node = scene.AddNewNodeByClass(className, name)
            addedNodes.append(node)
            node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(gridMatrix))
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
        setUpDisplay(scene, result)
        result.folderItemId = placeInSubjectHierarchy(scene, result)
        return result
    except BaseException:
        for node in reversed(addedNodes):
            if node is not None and node.GetScene() is not None:
                scene.RemoveNode(node)
        raise


def placeInSubjectHierarchy(scene, result: PowdrOutpaintResult) -> int:
    """Put the result nodes in a folder under the input volume's parent (its study)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
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


def removeResult(scene, result: PowdrOutpaintResult) -> None:
    """Remove every node of a result (and its subject hierarchy folder) from the scene."""
    for node in result.nodes:
        if node.GetScene() is not None:
            scene.RemoveNode(node)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is not None and result.folderItemId:
        shNode.RemoveItem(result.folderItemId)
