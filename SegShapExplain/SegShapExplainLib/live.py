"""The live view of a running explanation: the worker's latest estimate as a heatmap over the input volume, refreshed
in place while it samples, gone when the run ends.

With ``update_every`` in its request the worker sends an ``estimate`` event at that interval, naming a heatmap file
(NRRD, float32, on the exported input volume's grid, each update replacing the previous file atomically). The first
event makes one scalar volume node of it, shown as the slice views' foreground layer; each later one copies the
new voxels into that node. Its colours are the result heatmap's (white to the sign's colour, red supporting the
segmentation, blue working against it), over a window that reaches the strongest |value| of each update, so the
picture settles as the estimate does. A slice layer's pixels are either drawn or not (Slicer's layer alpha is a
mask, not an opacity), so strength shows as saturation, the layer is drawn at :data:`LIVE_OPACITY` to let the anatomy
through, and, as in the result (``segshap.palette``), features under ``UNPAINTED_FRACTION`` of the strongest are not
drawn at all. The background layer, its window/level and the slice positions stay as they are.

The overlay is temporary: its nodes are hidden from the node selectors and the subject hierarchy, are not saved
with the scene, and leave when the run ends: in the same scene batch as the final result's import (:meth:`LiveOverlay
.replacedBy`), or when it is cancelled or fails, restoring the views' layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import slicer
import slicer.util

from segshap.palette import UNPAINTED_FRACTION, feature_color

from .exchange import readVolume
from .results import ROLE_ATTRIBUTE, SceneAdditions, showDiverging
from .worker import JobCallbacks

LIVE_UPDATE_SECONDS = 5.0
"""Seconds between two live estimates of a panel run: often enough to watch the picture settle, seldom enough that
the worker spends its time sampling rather than writing heatmaps (and Slicer reading them)."""
LIVE_ROLE = "live"
"""The :data:`~SegShapExplainLib.results.ROLE_ATTRIBUTE` of the overlay's nodes (no result has it)."""
LIVE_OPACITY = 0.5
"""Opacity of the overlay's layer: the strongest features clearly coloured, the anatomy still readable under them."""
LIVE_COLOR_NAME = "SegShapExplain live estimate"
_COLOR_COUNT = 255
"""Entries of the overlay's colour table: odd, so that one sits exactly on 0; a slice layer indexes at most 256."""


@dataclasses.dataclass
class _Layers:
    """A slice view's layers before the overlay took its foreground."""

    composite: object
    foreground: str | None
    opacity: float
    givenBackground: str | None = None
    """Set when the view had no background and the overlay gave it the input volume."""


class LiveOverlay:
    """The latest estimate of a running explanation, shown over ``inputVolume`` in every slice view.

    Nothing is added to the scene before the first :meth:`update`.

    Parameters
    ----------
    scene : vtkMRMLScene
    inputVolume : vtkMRMLScalarVolumeNode
        The explained volume: the heatmap files lie on its grid, and the overlay goes under its parent transform.
    name : str
        The overlay's node name.

    Attributes
    ----------
    node : vtkMRMLScalarVolumeNode or None
        The overlay's volume while it is shown.
    """

    def __init__(self, scene, inputVolume, name: str) -> None:
        self.scene = scene
        self.inputVolume = inputVolume
        self.name = name
        self.node = None
        self._color = None
        self._layers: list[_Layers] = []
        self._hidden: list = []  # display nodes of other results' segments, hidden in the slice views meanwhile

    def update(self, fields: dict) -> None:
        """Show the heatmap of an ``estimate`` event: the first makes the overlay, later ones refresh the same node.

        Raises
        ------
        OSError
            The heatmap file cannot be read.
        ValueError
            The file is not on the grid of the first one.
        """
        path = fields.get("heatmap")
        if not path:
            return
        fresh = readVolume(path, "vtkMRMLScalarVolumeNode", self.name)
        if self.node is None:
            self._show(fresh)
            return
        voxels = slicer.util.arrayFromVolume(self.node)
        incoming = slicer.util.arrayFromVolume(fresh)
        if incoming.shape != voxels.shape:
            raise ValueError(
                f"The live estimate {path} has {incoming.shape[::-1]} voxels, the overlay {voxels.shape[::-1]}."
            )
        voxels[:] = incoming  # in place: the views keep the node and only redraw its voxels
        slicer.util.arrayFromVolumeModified(self.node)
        showDiverging(self.node.GetDisplayNode(), self._color, _strongest(voxels))

    def remove(self) -> None:
        """Take the overlay away: the slice views get back the layers it replaced (where it still shows), other
        results' segments show again, and its nodes leave the scene. Does nothing when it is not shown."""
        node, color = self.node, self._color
        if node is None:
            return
        self.node = self._color = None
        self.scene.StartState(self.scene.BatchProcessState)
        try:
            for layers in self._layers:
                self._restore(layers, node)
            for display in self._hidden:
                if display.GetScene() is self.scene:
                    display.SetVisibility2D(True)
            for temporary in (node.GetDisplayNode(), node, color):
                if temporary is not None and temporary.GetScene() is self.scene:
                    self.scene.RemoveNode(temporary)
        finally:
            self._layers, self._hidden = [], []
            self.scene.EndState(self.scene.BatchProcessState)

    @contextmanager
    def replacedBy(self) -> Iterator[None]:
        """Context in which the final result is imported: the overlay is removed in the same scene batch (also when
        the import fails), so the views never show both, nor neither in between."""
        self.scene.StartState(self.scene.BatchProcessState)
        try:
            yield
        finally:
            try:
                self.remove()
            finally:
                self.scene.EndState(self.scene.BatchProcessState)

    def jobCallbacks(self, callbacks: JobCallbacks | None) -> JobCallbacks:
        """``callbacks`` with the overlay following the job: refreshed before ``onEstimate``, removed before
        ``onCancelled`` and ``onError`` (a cancelled or failed run leaves the scene as it was)."""
        given = callbacks or JobCallbacks()

        def onEstimate(fields: dict) -> None:
            self.update(fields)
            if given.onEstimate:
                given.onEstimate(fields)

        def onCancelled() -> None:
            self.remove()
            if given.onCancelled:
                given.onCancelled()

        def onError(error: BaseException) -> None:
            self.remove()
            if given.onError:
                given.onError(error)

        return dataclasses.replace(given, onEstimate=onEstimate, onCancelled=onCancelled, onError=onError)

    def _show(self, heatmap) -> None:
        """Add the first heatmap and its colour table (both temporary), and make it every slice view's foreground."""
        with SceneAdditions(self.scene) as added:
            color = added.add(_temporary(_liveColorTable()))
            added.add(_temporary(heatmap))
            heatmap.SetAndObserveTransformNodeID(self.inputVolume.GetTransformNodeID())
            display = slicer.vtkMRMLScalarVolumeDisplayNode()
            display.SetName(f"{self.name} display")  # a name of its own: a default one would rename the result's
            added.add(_temporary(display))
            heatmap.SetAndObserveDisplayNodeID(display.GetID())
            showDiverging(display, color, _strongest(slicer.util.arrayFromVolume(heatmap)))
            self._cover(heatmap)
        self.node, self._color = heatmap, color

    def _cover(self, heatmap) -> None:
        """Make ``heatmap`` the foreground of every slice view (a view without a background gets the input volume,
        as a result does) and hide other results' segments there: they would cover it."""
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = self.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
            layers = _Layers(composite, composite.GetForegroundVolumeID(), composite.GetForegroundOpacity())
            if self._existing(composite.GetBackgroundVolumeID()) is None:
                layers.givenBackground = self.inputVolume.GetID()
                composite.SetBackgroundVolumeID(layers.givenBackground)
            self._layers.append(layers)
            composite.SetForegroundVolumeID(heatmap.GetID())
            composite.SetForegroundOpacity(LIVE_OPACITY)
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            segmentation = self.scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
            display = segmentation.GetDisplayNode()
            if segmentation.GetAttribute(ROLE_ATTRIBUTE) == "segments" and display and display.GetVisibility2D():
                display.SetVisibility2D(False)
                self._hidden.append(display)

    def _restore(self, layers: _Layers, node) -> None:
        """Give a slice view back what the overlay replaced, unless the user has changed it since."""
        composite = layers.composite
        if composite.GetScene() is not self.scene or composite.GetForegroundVolumeID() != node.GetID():
            return
        composite.SetForegroundVolumeID(self._existing(layers.foreground))
        composite.SetForegroundOpacity(layers.opacity)
        if layers.givenBackground is not None and composite.GetBackgroundVolumeID() == layers.givenBackground:
            composite.SetBackgroundVolumeID(None)

    def _existing(self, nodeId: str | None) -> str | None:
        """``nodeId`` while its node is in the scene, else ``None`` (no layer refers to a removed node)."""
        return nodeId if nodeId and self.scene.GetNodeByID(nodeId) is not None else None


def liveColor(share: float) -> tuple[float, float, float, float]:
    """The overlay's RGBA (0..1) for a value that is ``share`` of the strongest |value| (-1..1): from white to the
    sign's colour as |share| grows, as the result heatmap's table; transparent under ``UNPAINTED_FRACTION``."""
    rgb = tuple(1.0 + (channel - 1.0) * abs(share) for channel in feature_color(share))
    return (*rgb, 1.0 if abs(share) >= UNPAINTED_FRACTION else 0.0)


def _liveColorTable():
    """The overlay's colour table (not in a scene): :func:`liveColor` over the window's ``[-1, 1]``."""
    color = slicer.vtkMRMLColorTableNode()
    color.SetName(LIVE_COLOR_NAME)
    color.SetTypeToUser()
    color.SetNumberOfColors(_COLOR_COUNT)
    middle = (_COLOR_COUNT - 1) / 2
    for index in range(_COLOR_COUNT):
        share = (index - middle) / middle
        color.SetColor(index, f"{share:+.3f}", *liveColor(share))
    return color


def _temporary(node):
    """Mark a node of the overlay: not saved with the scene, not offered by node selectors nor listed in the subject
    hierarchy (its plugins make no item for a node hidden from editors)."""
    node.SetSaveWithScene(False)
    node.SetHideFromEditors(True)
    node.SetAttribute(ROLE_ATTRIBUTE, LIVE_ROLE)
    return node


def _strongest(voxels: np.ndarray) -> float:
    return float(np.abs(voxels).max(initial=0.0))
