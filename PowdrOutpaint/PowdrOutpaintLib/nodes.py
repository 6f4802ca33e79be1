"""Reading and writing volume nodes as files, and small node helpers shared by the library."""

from __future__ import annotations

import os

import numpy as np
import slicer
import vtk

from .progress import PowdrOutpaintError

__all__ = ["ijkToRAS", "describeNode", "writeVolume", "readVolumeOnGrid"]


def ijkToRAS(node) -> np.ndarray:
    """The node's IJK-to-RAS matrix as a 4x4 array."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def describeNode(node) -> str:
    return f"'{node.GetName()}'" if node is not None and node.GetName() else "the selected node"


def writeVolume(node, path: str, compress: bool = False) -> None:
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(path)
    storageNode.SetUseCompression(1 if compress else 0)
    if not storageNode.WriteData(node) or not os.path.isfile(path):
        raise PowdrOutpaintError(f"{describeNode(node)} could not be written to {path}.")


def readVolumeOnGrid(path: str, labelmap: bool, dimensions: tuple, expectedIJKToRAS: np.ndarray):
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
    readMatrix = ijkToRAS(node)
    scale = max(1.0, float(np.abs(expectedIJKToRAS[:3, 3]).max()))
    if not np.allclose(readMatrix[:3, :3], expectedIJKToRAS[:3, :3], rtol=1e-4, atol=1e-4) or not np.allclose(
            readMatrix[:3, 3], expectedIJKToRAS[:3, 3], rtol=0, atol=1e-4 * scale + 1e-3):
        raise PowdrOutpaintError(f"The result {os.path.basename(path)} is not on the input volume's grid.")
    return node
