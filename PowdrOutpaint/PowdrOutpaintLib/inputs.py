"""The run's inputs: one MRI volume per sequence of the model, checked and written with the lesion for the worker."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import slicer
import vtk

from .modelcard import joinLabels, sequenceLabel
from .nodes import describeNode, writeVolume
from .progress import PowdrOutpaintError

__all__ = ["validateVolume", "selectedSegmentIds", "writeLesion", "resolveInputVolumes", "volumesMatchingSequences",
           "nameSaysSequence", "sequenceBaseName", "caseName"]

_SEPARATORS = ("_", "-", " ", ".")


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


# ---------------------------------------------------------------------------------------
# One volume per sequence of the model

def nameSaysSequence(name: str, sequence: str) -> bool:
    """True when ``name`` is the sequence's name or ends with it after a separator (``CASE_t2``)."""
    lowered, wanted = (name or "").lower(), sequence.lower()
    return lowered == wanted or any(lowered.endswith(separator + wanted) for separator in _SEPARATORS)


def sequenceBaseName(name: str, sequence: str) -> str:
    """The base of a sequence's result names: the volume's name, ending in the sequence's name.

    ``Brats18_X_t2`` stays as it is; a volume called ``Volume`` chosen for T2 gives
    ``Volume_t2`` (as the engine names its files).
    """
    name = name or "volume"
    return name if nameSaysSequence(name, sequence) else f"{name}_{sequence}"


def caseName(volumeName: str, sequence: str) -> str:
    """``Brats18_X_t1`` -> ``Brats18_X`` (the name without its sequence suffix), else the name."""
    name = volumeName or "volume"
    if nameSaysSequence(name, sequence) and len(name) > len(sequence) + 1:
        return name[: -len(sequence) - 1]
    return name


def resolveInputVolumes(inputVolume, sequences: tuple[str, ...] | None) -> list[tuple[str | None, Any]]:
    """The (sequence, volume) pairs of a run, in the model's channel order.

    :param inputVolume: one volume node, or {sequence name: volume node} (names as in the
        checkpoint, any case).
    :param sequences: the model's sequences from its card; None when the card could not be
        read (the worker then checks the inputs itself).
    :raises ValueError: one sentence naming the sequences without a volume, the ones the
        model does not make, or a volume chosen for two sequences.
    """
    if not isinstance(inputVolume, Mapping):
        if sequences and len(sequences) > 1:
            missing, too = (sequences, "") if inputVolume is None else (sequences[1:], " too")
            raise ValueError(f"This model makes {joinLabels(sequences)} together: select a volume for "
                             f"{joinLabels(missing)}{too}.")
        return [(sequences[0] if sequences else None, inputVolume)]

    given = {str(name).lower(): node for name, node in inputVolume.items()}
    if len(given) != len(inputVolume):
        raise ValueError("A sequence is named twice in the input volumes.")
    if sequences is None:  # the card could not be read: pass what was given, the worker decides
        pairs = [(str(name), node) for name, node in inputVolume.items()]
        if len(pairs) == 1:
            return [(None, pairs[0][1])]
    else:
        extra = [name for name in inputVolume if str(name).lower() not in {s.lower() for s in sequences}]
        if extra:
            raise ValueError(f"This model makes {joinLabels(sequences)}; {joinLabels(extra)} "
                             f"{'is' if len(extra) == 1 else 'are'} not one of its sequences.")
        pairs = [(name, given.get(name.lower())) for name in sequences]
    missing = [name for name, node in pairs if node is None]
    if missing:
        together = " together" if len(pairs) > 1 else ""
        raise ValueError(f"This model makes {joinLabels([name for name, _ in pairs])}{together}: "
                         f"select a volume for {joinLabels(missing)}.")
    seen: dict[str, str] = {}
    for name, node in pairs:
        key = (node.GetID() if hasattr(node, "GetID") else None) or str(id(node))
        if key in seen:
            volumeName = node.GetName() if hasattr(node, "GetName") else "?"
            raise ValueError(f"The same volume '{volumeName}' is selected for {sequenceLabel(seen[key])} and "
                             f"{sequenceLabel(name)}: select each sequence's own volume.")
        seen[key] = name
    return pairs


def volumesMatchingSequences(volumes, sequences) -> dict[str, Any]:
    """{sequence: volume} for the volumes whose names say a sequence (``CASE_t1ce`` -> t1ce).

    Only unambiguous matches: a sequence that two volumes' names end with is left out.
    """
    matches: dict[str, Any] = {}
    for sequence in sequences:
        found = [volume for volume in volumes if nameSaysSequence(volume.GetName(), sequence)]
        if len(found) == 1:
            matches[sequence] = found[0]
    return matches
