"""Voxel grids in world space, and moving arrays between an image's own grid and the model's grid.

A :class:`Grid` is a shape and an affine (voxel indices to RAS millimetres). Preprocessing puts an image on the
grid the model was trained on: :func:`reorient` flips and transposes axes to the model's axis codes (exact: no
voxel value changes) and :func:`resample` interpolates to the model's spacing. Everything the engine computes lives
on that grid, and :func:`transfer` brings it back: each voxel of the image takes the value of the model voxel its
centre falls in (nearest neighbour), so a map that is constant per feature, such as the heatmap or the feature map,
lands on exactly the image voxels whose centres the feature covers. Oblique affines keep their rotation: the model
grid is the image grid reoriented and rescaled, never rotated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Grid", "ModelInput", "reorient", "resample", "transfer", "INTERPOLATION_ORDERS"]

INTERPOLATION_ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}
"""Spline order of each interpolation name :func:`resample` accepts."""

_AXIS_LETTERS = ("LR", "PA", "IS")
_TIE_NUDGE = 1e-6
"""Centres that fall exactly on a boundary between two voxels go to the higher index, whatever the float noise."""


@dataclass(frozen=True)
class Grid:
    """A voxel grid: its spatial ``shape`` and its ``affine`` from voxel indices to RAS millimetres."""

    shape: tuple[int, ...]
    affine: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))
        if self.affine.shape != (4, 4) or len(self.shape) != 3:
            raise ValueError(f"A grid needs a 3D shape and a 4x4 affine, got {self.shape} and {self.affine.shape}.")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-12:
            raise ValueError(f"The affine {self.affine.tolist()} is singular: the image has no valid geometry.")

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each axis, in millimetres."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def axcodes(self) -> tuple[str, ...]:
        """Closest anatomical direction of each axis, e.g. ``("R", "A", "S")``."""
        from nibabel.orientations import aff2axcodes

        return tuple(aff2axcodes(self.affine))

    def same_as(self, other: Grid, atol: float = 1e-6) -> bool:
        """Whether both grids have the same shape and (within ``atol`` mm) the same affine."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, rtol=0.0, atol=atol)


def _channels_first(data: np.ndarray) -> np.ndarray:
    if data.ndim != 4:
        raise ValueError(f"Expected a (C, X, Y, Z) array, got shape {data.shape}.")
    return data


def reorient(data: np.ndarray, affine: np.ndarray, axcodes: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Flip and transpose the spatial axes of ``data`` so that they point along ``axcodes``.

    Parameters
    ----------
    data : np.ndarray
        ``(C, X, Y, Z)`` image.
    affine : np.ndarray
        Its voxel-to-RAS affine.
    axcodes : str or sequence of str
        The direction each axis should point to, e.g. ``"RAS"`` or ``"LPS"``; oblique axes go to the closest.

    Returns
    -------
    data, affine
        The reoriented array (a view where possible) and its affine; the world position of every voxel is kept.
    """
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    data = _channels_first(data)
    codes = tuple(str(c).upper() for c in axcodes)
    axes = sorted(i for c in codes for i, pair in enumerate(_AXIS_LETTERS) if c in pair)
    if len(codes) != 3 or axes != [0, 1, 2]:
        raise ValueError(
            f"orientation must name one direction per axis from L/R, P/A and I/S, like 'RAS' or 'LPS'; got {axcodes!r}."
        )
    wanted = axcodes2ornt(codes, labels=tuple(zip("LPI", "RAS")))
    transform = ornt_transform(io_orientation(affine), wanted)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return data, np.asarray(affine, dtype=np.float64)
    moved = apply_orientation(np.moveaxis(data, 0, -1), transform)
    new_affine = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(transform, data.shape[1:])
    return np.moveaxis(moved, -1, 0), new_affine


def resample(
    data: np.ndarray, affine: np.ndarray, spacing: Sequence[float], interpolation: str = "linear"
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``data`` to voxels of ``spacing`` mm along its own axes.

    The new grid keeps the axes' directions and centre; its size along an axis is the old extent divided by the
    new spacing, rounded. Values are interpolated with ``interpolation`` (``"nearest"``, ``"linear"`` or
    ``"cubic"``); outside the old grid the nearest edge value is used. When the spacing already matches (within
    0.1 %), ``data`` and ``affine`` come back unchanged.

    Parameters
    ----------
    data : np.ndarray
        ``(C, X, Y, Z)`` image.
    affine : np.ndarray
        Its voxel-to-RAS affine.
    spacing : sequence of float
        The wanted voxel size per axis, in millimetres.
    interpolation : str
        One of :data:`INTERPOLATION_ORDERS`.

    Returns
    -------
    data, affine
    """
    from scipy import ndimage

    data = _channels_first(data)
    if interpolation not in INTERPOLATION_ORDERS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATION_ORDERS)}, got {interpolation!r}.")
    wanted = np.asarray(spacing, dtype=np.float64)
    if wanted.shape != (3,) or not np.all(wanted > 0):
        raise ValueError(f"spacing needs three positive values (mm), got {spacing!r}.")
    grid = Grid(data.shape[1:], affine)
    current = np.asarray(grid.spacing)
    if np.allclose(current, wanted, rtol=1e-3, atol=0.0):
        return data, grid.affine
    size = np.asarray(grid.shape, dtype=np.float64)
    new_shape = np.maximum(np.round(size * current / wanted), 1).astype(int)
    step = wanted / current  # new voxel -> old voxel, per axis
    offset = (size - 1) / 2 - (new_shape - 1) / 2 * step  # both grids share their centre
    to_old = np.eye(4)
    to_old[:3, :3] = np.diag(step)
    to_old[:3, 3] = offset
    order = INTERPOLATION_ORDERS[interpolation]
    channels = [
        ndimage.affine_transform(
            np.asarray(channel, dtype=np.float32),
            step,
            offset,
            output_shape=tuple(new_shape),
            order=order,
            mode="nearest",
        )
        for channel in data
    ]
    return np.stack(channels), grid.affine @ to_old


def transfer(array: np.ndarray, source: Grid, target: Grid, fill: float = 0) -> np.ndarray:
    """Nearest-neighbour copy of ``array`` from the ``source`` grid onto the ``target`` grid.

    Each target voxel takes the value of the source voxel its centre falls in (``fill`` outside the source).
    When the grids differ by flips, transposes and scaling only (the usual case, oblique affines included), this
    is an exact index lookup per axis; otherwise each voxel centre is mapped through the affines.

    Parameters
    ----------
    array : np.ndarray
        ``(..., X, Y, Z)``: the last three axes lie on ``source``.
    source, target : Grid

    Returns
    -------
    np.ndarray
        ``(..., *target.shape)``, the dtype of ``array``.
    """
    array = np.asarray(array)
    if array.shape[-3:] != source.shape:
        raise ValueError(f"The array's spatial shape {array.shape[-3:]} is not the source grid's {source.shape}.")
    if target.same_as(source):
        return array
    to_source = np.linalg.solve(source.affine, target.affine)  # target voxel -> source voxel
    linear = to_source[:3, :3]
    scale = np.abs(linear).max()
    axis_of = np.abs(linear).argmax(axis=0)  # the source axis each target axis runs along
    separable = sorted(axis_of.tolist()) == [0, 1, 2] and np.allclose(
        np.abs(linear)[axis_of, [0, 1, 2]].sum(), np.abs(linear).sum(), rtol=0, atol=1e-9 * scale
    )
    lead = array.shape[:-3]
    out = np.full(lead + target.shape, fill, dtype=array.dtype)
    if separable:
        indices, valid = [], []
        for axis in range(3):
            source_axis = axis_of[axis]
            coordinate = linear[source_axis, axis] * np.arange(target.shape[axis]) + to_source[source_axis, 3]
            index = np.floor(coordinate + 0.5 + _TIE_NUDGE).astype(np.int64)
            inside = (index >= 0) & (index < source.shape[source_axis])
            indices.append(np.clip(index, 0, source.shape[source_axis] - 1))
            valid.append(inside)
        order = list(range(len(lead))) + [len(lead) + int(a) for a in axis_of]
        moved = array.transpose(order)
        gathered = moved[(..., *np.ix_(*indices))]
        keep = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
        out[...] = np.where(keep, gathered, out)
        return out
    j, k = np.meshgrid(np.arange(target.shape[1]), np.arange(target.shape[2]), indexing="ij")
    for i in range(target.shape[0]):
        coordinate = to_source[:3, :3] @ np.stack([np.full_like(j, i), j, k]).reshape(3, -1) + to_source[:3, 3:4]
        index = np.floor(coordinate + 0.5 + _TIE_NUDGE).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(source.shape)[:, None]), axis=0)
        plane = out[..., i, :, :].reshape(lead + (-1,))
        plane[..., inside] = array[(..., *index[:, inside])]
        out[..., i, :, :] = plane.reshape(lead + target.shape[1:])
    return out


@dataclass
class ModelInput:
    """An image prepared for a model: the network's input on the model's grid, and the grid it came from.

    Attributes
    ----------
    image : np.ndarray
        ``(C, X, Y, Z)`` float32: what the network's sliding window runs over.
    grid : Grid
        The model grid ``image`` lies on.
    source : Grid
        The image's own grid, where outputs are shown.
    """

    image: np.ndarray
    grid: Grid
    source: Grid

    @classmethod
    def unchanged(cls, image: np.ndarray, affine: np.ndarray | None = None) -> ModelInput:
        """An input that is its own model grid (no reorientation or resampling)."""
        grid = Grid(image.shape[1:], np.eye(4) if affine is None else affine)
        return cls(image, grid, grid)

    def to_model_grid(self, array: np.ndarray, fill: float = 0) -> np.ndarray:
        """An array on the image's grid (masks, label maps), nearest-neighbour onto the model grid."""
        return transfer(array, self.source, self.grid, fill)

    def to_image_grid(self, array: np.ndarray, fill: float = 0) -> np.ndarray:
        """An array on the model grid (heatmaps, feature maps), nearest-neighbour onto the image's grid."""
        return transfer(array, self.grid, self.source, fill)
