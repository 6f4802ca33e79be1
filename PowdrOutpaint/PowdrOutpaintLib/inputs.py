"""The run's inputs: checking the MRI and writing it and the lesion as files for the worker."""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .nodes import describeNode, writeVolume
from .progress import PowdrOutpaintError

__all__ = ["validateVolume", "selectedSegmentIds", "writeLesion"]


def validateVolume(inputVolume) -> None:
    if inputVolume is None or not inputVolume.IsA("vtkMRMLScalarVolumeNode") or inputVolume.IsA(
            "vtkMRMLLabelMapVolumeNode"):
        raise ValueError("Select an MRI volume (a scalar volume) as input.")
    imageData = inputVolume.GetImageData()
    if imageData is None or min(imageData.GetDimensions()) < 1:
        raise ValueError(f"The input volume {describeNode(inputVolume)} has no image data.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"The input volume {describeNode(inputVolume)} has several components; "
                         "a single-channel MRI volume is needed.")
    if min(imageData.GetDimensions()) < 2:
        raise ValueError(f"The input volume {describeNode(inputVolume)} is not 3-D.")


def selectedSegmentIds(segmentationNode, segmentIds=None) -> list[str]:
    """``segmentIds`` if given, else the visible segments, else all segments."""
    segmentation = segmentationNode.GetSegmentation()
    allIds = [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]
    if segmentIds is not None:
        unknown = [segmentId for segmentId in segmentIds if segmentId not in allIds]
        if unknown:
            raise ValueError(f"The segmentation {describeNode(segmentationNode)} has no segment {unknown[0]!r}.")
        return list(segmentIds)
    displayNode = segmentationNode.GetDisplayNode()
    if displayNode is not None:
        visible = vtk.vtkStringArray()
        displayNode.GetVisibleSegmentIDs(visible)
        visibleIds = [visible.GetValue(index) for index in range(visible.GetNumberOfValues())]
        if visibleIds:
            return visibleIds
        if allIds:
            raise ValueError(f"No segment of {describeNode(segmentationNode)} is visible: "
                             "show the lesion segments or choose them explicitly.")
    return allIds


def writeLesion(scene, inputVolume, lesionNode, segmentIds, path: str) -> int:
    """Write the lesion as a label map file; return the number of lesion voxels (on its own grid)."""
    if lesionNode is None:
        raise ValueError("Select the lesion: a segmentation or a label map volume.")
    if lesionNode is inputVolume:
        raise ValueError("The lesion must be a segmentation or label map, not the input volume itself.")
    if lesionNode.IsA("vtkMRMLSegmentationNode"):
        ids = selectedSegmentIds(lesionNode, segmentIds)
        if not ids:
            raise ValueError(f"The segmentation {describeNode(lesionNode)} has no segments: "
                             "draw the lesion in Segment Editor first.")
        return _exportSegmentsToFile(scene, inputVolume, lesionNode, ids, path)
    if lesionNode.IsA("vtkMRMLScalarVolumeNode"):
        imageData = lesionNode.GetImageData()
        if imageData is None:
            raise ValueError(f"The lesion volume {describeNode(lesionNode)} has no image data.")
        count = int(np.count_nonzero(slicer.util.arrayFromVolume(lesionNode) > 0))
        if count:
            # Written on its own grid: the engine resamples it (nearest neighbour, physical space)
            writeVolume(lesionNode, path)
        return count
    raise ValueError(f"{describeNode(lesionNode)} is neither a segmentation nor a label map volume.")


def _exportSegmentsToFile(scene, inputVolume, segmentationNode, segmentIds: list[str], path: str) -> int:
    """Export segments to a label map on the input volume's grid (labels 1..n) and write it."""
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
            raise PowdrOutpaintError(f"The segments of {describeNode(segmentationNode)} could not be exported "
                                     "to a label map on the input volume's grid.")
        count = int(np.count_nonzero(slicer.util.arrayFromVolume(labelmapNode)))
        if count:
            writeVolume(labelmapNode, path)
        return count
    finally:
        added = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
        for node in added:
            if node is not None and node.GetID() not in existing:
                scene.RemoveNode(node)
