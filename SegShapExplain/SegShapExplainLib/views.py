"""3D Slicer's own slice and 3D views, rendered without Qt or a screen.

:class:`HeadlessViews` gives a scene what 3D Slicer's application gives it: the application, colour and volume
rendering logics, the Red (axial), Yellow (sagittal) and Green (coronal) slice logics and a 3D view, each drawn
by Slicer's displayable managers into an offscreen render window (Mesa's EGL). Where no OpenGL can be had, the
slice views still come from the slice logic's blended layers, which are the same pixels. :func:`explanationPicture`
renders a saved explanation this way (``slices.png``), each slice view with the anatomical direction (L/R, A/P, S/I)
at its edges and its position in RAS millimetres in its title, read from its slice node, and the 3D view with 3D
Slicer's own orientation marker (labelled R, A, S axes); ``python -m SegShapExplainLib.views`` does it in a process
of its own, which the engine uses so that a crash in a graphics driver cannot take an explanation with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

# The anatomical letters, slice positions and colours shared with overview.png (standard library only).
from segshap.palette import UNPAINTED_FRACTION, direction_letter, edge_letters, position_text

from .display import showInSliceViews
from .exchange import readVolume
from .results import ExplanationNodes, importExplanations
from .settings import OutlineStyle

SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
"""Layout name of each slice view and the orientation 3D Slicer gives it."""
THREE_D_VIEW = "1"
_SLICE_MANAGERS = (
    "vtkMRMLVolumeGlyphSliceDisplayableManager",
    "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager2D",
)
_THREE_D_MANAGERS = (
    "vtkMRMLCameraDisplayableManager",
    "vtkMRMLViewDisplayableManager",
    "vtkMRMLModelDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager3D",
    "vtkMRMLVolumeRenderingDisplayableManager",
    "vtkMRMLOrientationMarkerDisplayableManager",
)
_CAMERA_DIRECTIONS = {
    "anterior": ((0, 1, 0), (0, 0, 1)),
    "posterior": ((0, -1, 0), (0, 0, 1)),
    "superior": ((0, 0, 1), (0, 1, 0)),
    "right": ((1, 0, 0), (0, 0, 1)),
    "left": ((-1, 0, 0), (0, 0, 1)),
}
"""From the focal point towards the camera, and the view-up, of each 3D view direction (RAS)."""
PICTURE_SIZE = 360
"""Pixels of each view's side in ``slices.png``."""
PANEL_GAP = 10
"""Pixels between the panels of ``slices.png`` and around them."""
TITLE_HEIGHT = 24
"""Pixels of each panel's title, above it."""
HEADER_HEIGHT = 40
"""Pixels of the picture's caption, above the titles."""
_EGL_PROBE = """
import os
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.SetSize(8, 8)
window.Render()
print(window.GetClassName(), window.SupportsOpenGL())
"""


def openGLAvailable(python: str | None = None, timeout: float = 120) -> bool:
    """Whether an offscreen EGL render window works here, asked of a separate process (a missing driver can crash
    the process that tries)."""
    try:
        result = subprocess.run(
            [python or sys.executable, "-c", _EGL_PROBE], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.split()[:2] == ["vtkEGLRenderWindow", "1"]


class _OffscreenView:
    """An offscreen render window whose renderer holds a displayable-manager group for one view node; a slice
    view also gets, beneath it, the slice logic's blended image (as 3D Slicer's slice view layers them)."""

    def __init__(self, factory, viewNode, size: tuple[int, int], image=None) -> None:
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # else VTK tries X first
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.SetSize(*size)
        self.renderer = vtk.vtkRenderer()
        if image is not None:
            beneath = vtk.vtkRenderer()
            mapper = vtk.vtkImageMapper()  # the blended layers at identity window/level, on a 2D actor
            mapper.SetInputConnection(image)
            mapper.SetColorWindow(255)
            mapper.SetColorLevel(127.5)
            actor = vtk.vtkActor2D()
            actor.SetMapper(mapper)
            beneath.AddViewProp(actor)
            self.window.AddRenderer(beneath)
            self.renderer.SetLayer(1)
        self.window.SetNumberOfLayers(2 if image is not None else 1)
        self.window.AddRenderer(self.renderer)
        # The displayable managers' widgets crash without an initialised interactor.
        self.interactor = vtk.vtkGenericRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        self.managers = factory.InstantiateDisplayableManagers(self.renderer)
        self.managers.SetMRMLDisplayableNode(viewNode)

    def render(self, size: tuple[int, int]) -> np.ndarray:
        if tuple(self.window.GetSize()) != tuple(size):
            self.window.SetSize(*size)
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        return _pixels(grab.GetOutput())

    def close(self) -> None:
        self.managers.SetMRMLDisplayableNode(None)
        self.window.Finalize()


def _pixels(image) -> np.ndarray:
    """``(rows, columns, 3)`` uint8 of a VTK image, top row first (VTK's rows start at the bottom)."""
    width, height, _ = image.GetDimensions()
    scalars = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(scalars[::-1, :, :3])


class HeadlessViews:
    """What 3D Slicer's application gives a scene for display, without Qt: logics, slice views and a 3D view.

    Parameters
    ----------
    scene : vtkMRMLScene
        Gets the application logic, colour tables, the slice nodes Red/Yellow/Green and the 3D view node "1".
    openGL : bool
        Render through offscreen OpenGL (EGL). Without it the slice views come from the slice logic's blended
        layers (the same pixels) and the 3D view cannot be rendered.

    Attributes
    ----------
    volumeRendering : vtkSlicerVolumeRenderingLogic
        The volume rendering logic, to pass to :class:`~SegShapExplainLib.SegShapExplainLogic`.
    """

    def __init__(self, scene, openGL: bool = True) -> None:
        self.scene = scene
        self.openGL = openGL
        self.application = slicer.vtkSlicerApplicationLogic()
        self.application.SetMRMLScene(scene)
        # The colour logic reads colour files from <home>/share/ColorFiles; slicer-core ships none, and without a
        # home it logs errors. An empty one keeps it quiet; the built-in tables are made in code.
        self._home = tempfile.TemporaryDirectory(prefix="segshap-slicer-home-")
        (Path(self._home.name) / "share" / "ColorFiles").mkdir(parents=True)
        self.application.SetHomeDirectory(self._home.name)
        self.application.SetShareDirectory("share")
        self.colors = slicer.vtkSlicerColorLogic()
        self.colors.SetMRMLApplicationLogic(self.application)
        self.colors.SetMRMLScene(scene)
        self.application.SetColorLogic(self.colors)
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
        self.volumeRendering = slicer.vtkSlicerVolumeRenderingLogic()
        self.volumeRendering.SetMRMLApplicationLogic(self.application)
        self.volumeRendering.SetMRMLScene(scene)
        self.application.SetModuleLogic("VolumeRendering", self.volumeRendering)
        self.application.SetSliceLogics(vtk.vtkCollection())
        self.application.SetViewLogics(vtk.vtkCollection())
        self.sliceLogics = {}
        for name, orientation in SLICE_VIEWS.items():
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.application)
            logic.SetMRMLScene(scene)
            logic.AddSliceNode(name).SetOrientation(orientation)  # a new slice node is "Reformat", identity
            self.application.GetSliceLogics().AddItem(logic)
            self.sliceLogics[name] = logic
        self.viewLogic = slicer.vtkMRMLViewLogic()
        self.viewLogic.SetMRMLApplicationLogic(self.application)
        self.viewLogic.SetMRMLScene(scene)
        self.viewNode = self.viewLogic.AddViewNode(THREE_D_VIEW)
        self.viewNode.SetBoxVisible(False)
        self.viewNode.SetAxisLabelsVisible(False)
        self.viewNode.SetOrientationMarkerType(self.viewNode.OrientationMarkerTypeNone)
        self.application.GetViewLogics().AddItem(self.viewLogic)
        for factory, managers in (
            (slicer.vtkMRMLSliceViewDisplayableManagerFactory, _SLICE_MANAGERS),
            (slicer.vtkMRMLThreeDViewDisplayableManagerFactory, _THREE_D_MANAGERS),
        ):
            instance = factory.GetInstance()
            instance.SetMRMLApplicationLogic(self.application)
            for manager in managers:
                if not instance.IsDisplayableManagerRegistered(manager):
                    instance.RegisterDisplayableManager(manager)
        self._views: dict[str, _OffscreenView] = {}

    def sliceNode(self, name: str):
        return self.sliceLogics[name].GetSliceNode()

    def showSlicesThrough(self, point: tuple[float, float, float], size: tuple[int, int], volume=None) -> None:
        """Fit every slice view of ``size`` pixels to ``volume`` (default: what it shows) and move its plane
        through ``point`` (RAS)."""
        for logic in self.sliceLogics.values():
            logic.ResizeSliceNode(*size)
            if volume is not None:
                logic.FitSliceToVolume(volume, *size)
            else:
                logic.FitSliceToAll(*size)
            # Along the slice normal, which points to patient left in the sagittal view: jump to the point instead.
            logic.GetSliceNode().JumpSliceByOffsetting(*point)

    def renderSlice(self, name: str) -> np.ndarray:
        """``(rows, columns, 3)`` uint8 pixels of slice view ``name`` at its slice node's size, as Slicer draws it
        (through OpenGL when available, else from the blended layers)."""
        logic = self.sliceLogics[name]
        size = tuple(logic.GetSliceNode().GetDimensions()[:2])
        if not self.openGL or logic.GetImageDataConnection() is None:  # no layer: black, as in Slicer
            return self.blendedSlice(name)
        view = self._views.get(name)
        if view is None:
            view = _OffscreenView(
                slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance(),
                logic.GetSliceNode(),
                size,
                image=logic.GetImageDataConnection(),
            )
            self._views[name] = view
        return view.render(size)

    def blendedSlice(self, name: str) -> np.ndarray:
        """The same pixels as :meth:`renderSlice`, from the slice logic's blended layers, with no OpenGL."""
        logic = self.sliceLogics[name]
        connection = logic.GetImageDataConnection()
        if connection is None:  # no volume in any layer yet
            width, height = logic.GetSliceNode().GetDimensions()[:2]
            return np.zeros((height, width, 3), np.uint8)
        producer = connection.GetProducer()
        producer.Update()
        return _pixels(producer.GetOutputDataObject(connection.GetIndex()))

    def sliceLayerValues(self, name: str, layer: str) -> np.ndarray:
        """``(rows, columns)`` the values of the volume in ``layer`` ("Background", "Foreground" or "Label") on
        the view's pixels (nearest voxel, as the layer reslices it), top row first."""
        logic = self.sliceLogics[name]
        self.blendedSlice(name)
        reslice = getattr(logic, f"Get{layer}Layer")().GetReslice()
        reslice.Update()
        image = reslice.GetOutput()
        width, height, _ = image.GetDimensions()
        return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width)[::-1].copy()

    def renderThreeD(self, size: tuple[int, int], bounds: list[float], direction: str = "anterior") -> np.ndarray:
        """Pixels of the 3D view looking at the box ``bounds`` (RAS: r0, r1, a0, a1, s0, s1) from ``direction``."""
        if not self.openGL:
            raise RuntimeError(
                "The 3D view needs OpenGL (Mesa's EGL: Debian packages libegl1 libegl-mesa0 "
                "libgl1-mesa-dri); none could be had here."
            )
        view = self._views.get(THREE_D_VIEW)
        if view is None:
            view = _OffscreenView(slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance(), self.viewNode, size)
            self._views[THREE_D_VIEW] = view
        centre = np.array(bounds, float).reshape(3, 2).mean(axis=1)
        radius = 0.5 * float(np.linalg.norm(np.diff(np.array(bounds, float).reshape(3, 2), axis=1)))
        toCamera, up = _CAMERA_DIRECTIONS[direction]
        cameraNode = self.viewLogic.GetCameraNode()
        # The camera displayable manager puts its camera on the renderer; a camera node, when the scene has one.
        camera = cameraNode.GetCamera() if cameraNode is not None else view.renderer.GetActiveCamera()
        camera.SetViewAngle(30)
        camera.SetFocalPoint(*centre)
        camera.SetPosition(*(centre + np.array(toCamera, float) * radius / np.sin(np.radians(15))))
        camera.SetViewUp(*up)
        view.renderer.ResetCameraClippingRange()
        return view.render(size)

    def close(self) -> None:
        """Release the render windows (the scene and its nodes stay)."""
        for view in self._views.values():
            view.close()
        self._views.clear()
        self._home.cleanup()


def _rasBounds(node) -> list[float]:
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return bounds


def _nonzeroBounds(node, values: set[int]) -> list[float]:
    """RAS bounds of the voxels of ``node`` whose value is in ``values`` (all of the node when there are none)."""
    voxels = slicer.util.arrayFromVolume(node)  # k, j, i
    where = np.argwhere(np.isin(voxels, list(values)))
    if where.size == 0:
        return _rasBounds(node)
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    toRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    low, high = where.min(axis=0)[::-1], where.max(axis=0)[::-1]
    box = low - 0.5 + corners * (high - low + 1)  # the voxels' outer faces
    ras = box @ toRas[:3, :3].T + toRas[:3, 3]
    return [v for axis in range(3) for v in (ras[:, axis].min(), ras[:, axis].max())]


def _matrix(vtkMatrix) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def screenLetters(sliceNode) -> dict[str, str]:
    """The anatomical direction (R/L, A/P, S/I) that each edge (``left``, ``right``, ``top``, ``bottom``) of a slice
    view points to: the nearest RAS axis of its slice node's screen right and up (SliceToRAS columns 0 and 1)."""
    sliceToRas = _matrix(sliceNode.GetSliceToRAS())
    letters = {}
    for (positive, negative), column in ((("right", "left"), 0), (("top", "bottom"), 1)):
        direction = sliceToRas[:3, column]
        axis = int(np.argmax(np.abs(direction)))
        letters[positive] = direction_letter(axis, direction[axis])
        letters[negative] = direction_letter(axis, -direction[axis])
    return letters


def slicePosition(sliceNode) -> str:
    """Where a slice view's plane is, in RAS millimetres along the nearest RAS axis of its normal: e.g.
    ``"S 12.0 mm"`` (for an oblique plane, where it crosses the slice's centre)."""
    sliceToRas = _matrix(sliceNode.GetSliceToRAS())
    axis = int(np.argmax(np.abs(sliceToRas[:3, 2])))
    return position_text(axis, float(sliceToRas[axis, 3]))


def panelOrigins(size: int, count: int = 4) -> list[tuple[int, int]]:
    """The (row, column) pixel of each panel's top left corner in ``slices.png`` (panels of ``size`` pixels)."""
    top = HEADER_HEIGHT + TITLE_HEIGHT
    return [(top, PANEL_GAP + index * (size + PANEL_GAP)) for index in range(count)]


def explanationPicture(
    image: str | os.PathLike,
    outputs: dict,
    path: str | os.PathLike,
    centre: tuple[float, float, float],
    *,
    size: int = PICTURE_SIZE,
    openGL: bool | None = None,
    outlines: OutlineStyle = OutlineStyle.TOP,
    target: int = 0,
) -> Path:
    """Render an explanation as 3D Slicer shows it: axial, sagittal and coronal views through ``centre`` (RAS)
    and a 3D view of the top features, side by side in one PNG.

    Each slice view has L/R, A/P, S/I at its edges (from its slice node, yellow as in overview.png) and its
    position in RAS millimetres in its title; the 3D view, seen from the front, has 3D Slicer's orientation marker
    (the R, A and S axes, drawn by its orientation marker displayable manager) in its lower right corner. The
    panels lie at :func:`panelOrigins`, pixel for pixel as the views rendered them.

    Parameters
    ----------
    image : path
        The explained image (NIfTI or NRRD); the views' background.
    outputs : dict
        ``heatmap``, ``features`` and ``report`` paths of a saved explanation.
    path : path
        The PNG to write.
    centre : tuple of float
        RAS point the slice planes go through (e.g. the target's centre).
    size : int
        Pixels of each view's side.
    openGL : bool, optional
        Render through EGL; default: when :func:`openGLAvailable`. Without it the 3D panel says it is missing.
    outlines : OutlineStyle
        Which features the slice views outline.
    target : int
        Which target of a multi-target explanation to show (its position in the report's ``targets``).
    """
    from matplotlib.figure import Figure

    openGL = openGLAvailable() if openGL is None else openGL
    scene = slicer.vtkMRMLScene()
    views = HeadlessViews(scene, openGL=openGL)
    try:
        volume = readVolume(image, "vtkMRMLScalarVolumeNode", "image")
        scene.AddNode(volume)
        volume.CreateDefaultDisplayNodes()
        nodes: ExplanationNodes = importExplanations(
            scene, outputs, volume, "explanation", volumeRenderingLogic=views.volumeRendering if openGL else None
        )[target]
        showInSliceViews(scene, volume, nodes, outlines=outlines)
        views.showSlicesThrough(centre, (size, size), volume)
        panels = []
        for name, orientation in SLICE_VIEWS.items():
            sliceNode = views.sliceNode(name)
            title = f"{orientation.lower()} ({name}), {slicePosition(sliceNode)}"
            panels.append((title, views.renderSlice(name), screenLetters(sliceNode)))
        top = nodes.topFeatures
        if openGL:
            views.viewNode.SetOrientationMarkerType(views.viewNode.OrientationMarkerTypeAxes)
            views.viewNode.SetOrientationMarkerSize(views.viewNode.OrientationMarkerSizeLarge)
            bounds = _nonzeroBounds(nodes.features, set(top))
            panels.append((f"3D: top {len(top)} features (anterior)", views.renderThreeD((size, size), bounds), None))
        else:
            blank = np.zeros((size, size, 3), np.uint8)
            panels.append(("3D: needs OpenGL (EGL), not available here", blank, None))
    finally:
        views.close()
    report = json.loads(Path(outputs["report"]).read_text())
    # Panels at whole pixels, drawn unresampled: slices.png holds the views' own pixels.
    width = len(panels) * (size + PANEL_GAP) + PANEL_GAP
    height = HEADER_HEIGHT + TITLE_HEIGHT + size + PANEL_GAP
    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    for (row, column), (title, pixels, letters) in zip(panelOrigins(size, len(panels)), panels):
        ax = figure.add_axes((column / width, 1 - (row + size) / height, size / width, size / height))
        ax.imshow(pixels, interpolation="none")
        ax.set_axis_off()
        figure.text((column + size / 2) / width, 1 - (row - 4) / height, title, ha="center", va="bottom", fontsize=9)
        if letters is not None:
            edge_letters(ax, letters)
    target = ", ".join(t["name"] for t in report["targets"])
    figure.text(
        0.5,
        1 - 4 / height,
        f"{target}: red supports the segmentation, blue works against it; opacity proportional to |value|, none "
        f"under {UNPAINTED_FRACTION:.0%} of the strongest.\nOutlined: the top {len(top)} features. Rendered headless "
        "by 3D Slicer's own view code.",
        ha="center",
        va="top",
        fontsize=8,
    )
    figure.savefig(path, dpi=100)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m SegShapExplainLib.views``: render ``slices.png`` of a saved explanation."""
    parser = argparse.ArgumentParser(prog="python -m SegShapExplainLib.views", description=main.__doc__)
    parser.add_argument("--image", required=True, help="the explained image (NIfTI or NRRD)")
    parser.add_argument("--outputs", required=True, help="folder holding heatmap, features and explanation.json")
    parser.add_argument("--volume-format", dest="volume_format", default=".nii.gz")
    parser.add_argument("--centre", required=True, help="R,A,S point the slices go through")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--target-index", dest="target_index", type=int, default=0, help="which target to show")
    args = parser.parse_args(argv)
    folder = Path(args.outputs)
    outputs = {
        "heatmap": folder / f"heatmap{args.volume_format}",
        "features": folder / f"features{args.volume_format}",
        "report": folder / "explanation.json",
    }
    centre = tuple(float(v) for v in args.centre.split(","))
    explanationPicture(args.image, outputs, args.out, centre, target=args.target_index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
