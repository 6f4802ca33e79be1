"""How results look: grey samples with the input's window, the std map in Inferno, the lesion outline,
and the original | sample | mean layout centred on the lesion."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import slicer

from .nodes import ijkToRAS

if TYPE_CHECKING:
    from .results import PowdrOutpaintResult

__all__ = ["LAYOUT_ID", "infernoColorNode", "lesionColorNode", "setUpDisplay", "lesionCenter", "showResults",
           "centerViewsOnLesion"]

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

# Inferno colour map anchors (0, 1/8, ..., 1), interpolated to 256 entries when Slicer's
# own "Inferno" table is not available (e.g. under slicer-core).
_INFERNO_ANCHORS = np.array([
    [0.001, 0.000, 0.014], [0.122, 0.047, 0.282], [0.335, 0.060, 0.428],
    [0.533, 0.134, 0.416], [0.729, 0.212, 0.333], [0.891, 0.349, 0.198],
    [0.976, 0.550, 0.039], [0.975, 0.779, 0.185], [0.988, 0.998, 0.645],
])


def _singletonColorTable(scene, tag: str, name: str, colors: list[tuple[str, float, float, float, float]]):
    """The scene's colour table with singleton ``tag``, added with ``colors`` (name, r, g, b, a) if missing."""
    node = scene.GetSingletonNode(tag, "vtkMRMLColorTableNode")
    if node is not None:
        return node
    node = slicer.vtkMRMLColorTableNode()
    node.SetTypeToUser()
    node.SetName(name)
    node.SetSingletonTag(tag)
    node.SetNumberOfColors(len(colors))
    for index, color in enumerate(colors):
        node.SetColor(index, *color)
    return scene.AddNode(node)


def infernoColorNode(scene):
    """Slicer's Inferno colour table, or an equivalent one added to the scene when it is missing."""
    node = scene.GetNodeByID("vtkMRMLColorTableNodeFileInferno.txt")
    if node is not None:
        return node
    positions = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
    colors = [(f"{index}", *(float(np.interp(value, positions, _INFERNO_ANCHORS[:, channel])) for channel in range(3)),
               1.0) for index, value in enumerate(np.linspace(0.0, 1.0, 256))]
    return _singletonColorTable(scene, "PowdrOutpaintInferno", "Inferno (PowdrOutpaint)", colors)


def lesionColorNode(scene):
    """A two-entry table: 0 transparent, 1 'lesion' in yellow (for the outline)."""
    return _singletonColorTable(scene, "PowdrOutpaintLesion", "Lesion (PowdrOutpaint)",
                                [("background", 0.0, 0.0, 0.0, 0.0), ("lesion", 1.0, 0.85, 0.0, 1.0)])


def setUpDisplay(scene, result: PowdrOutpaintResult) -> None:
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
        stdDisplay.SetAndObserveColorNodeID(infernoColorNode(scene).GetID())
        stdDisplay.SetAutoWindowLevel(False)
        stdDisplay.SetWindowLevelMinMax(0.0, top)
        stdDisplay.SetAutoThreshold(False)
        stdDisplay.SetLowerThreshold(0.1 * top)
        stdDisplay.SetUpperThreshold(max(float(stdValues.max()), top))
        stdDisplay.SetApplyThreshold(True)

    lesionDisplay = result.lesionNode.GetDisplayNode()
    if lesionDisplay is not None:
        lesionDisplay.SetAndObserveColorNodeID(lesionColorNode(scene).GetID())


def lesionCenter(result: PowdrOutpaintResult) -> tuple[float, float, float] | None:
    """RAS position of the lesion's centre of mass (None if empty)."""
    values = slicer.util.arrayFromVolume(result.lesionNode)
    indices = np.argwhere(values > 0)
    if indices.size == 0:
        return None
    k, j, i = indices.mean(axis=0)
    ras = ijkToRAS(result.lesionNode) @ np.array([i, j, k, 1.0])
    return float(ras[0]), float(ras[1]), float(ras[2])


def showResults(scene, result: PowdrOutpaintResult, stdOpacity: float = 0.5, sequence: str | None = None) -> bool:
    """Switch to the original | current sample | mean layout (needs the application's layout node).

    The std map is an Inferno overlay on the sample and mean views, the lesion an outline in
    every view, the views are linked and centred on the lesion. For a model of several
    sequences the views show ``sequence`` (default: the first; the browser's slider moves
    every sequence's sample together). Returns False when there is no layout (batch mode).
    """
    if sequence:
        chosen = {name.lower(): own for name, own in result.bySequence.items()}.get(sequence.lower())
        if chosen is None:
            raise ValueError(f"The result has no sequence {sequence!r}.")
        result = chosen
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
    centerViewsOnLesion(scene, result, [sliceNodes[name] for name in views if name in sliceNodes])
    return found


def centerViewsOnLesion(scene, result: PowdrOutpaintResult, sliceNodes=None) -> None:
    """Centre the result views (default: the three PowdrOutpaint views) on the lesion."""
    center = lesionCenter(result)
    if center is None:
        return
    if sliceNodes is None:
        sliceNodes = []
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
            if node.GetLayoutName() in (VIEW_ORIGINAL, VIEW_SAMPLE, VIEW_MEAN):
                sliceNodes.append(node)
    for sliceNode in sliceNodes:
        sliceNode.JumpSliceByCentering(*center)
