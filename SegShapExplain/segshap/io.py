"""Reading and writing the files of an explanation: images (NIfTI, NRRD) with their affine (voxel indices to RAS
millimetres), 3D Slicer segmentations, label maps and masks carried onto a grid (:func:`read_labels`), and JSON.
Output folders are written all or nothing through :class:`segshap.staging.StagedOutput`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .geometry import Grid, transfer
from .modelinfo import read_json  # the one reader of JSON files, standard library only

__all__ = [
    "read_image",
    "read_image_shape",
    "read_segmentation",
    "read_labels",
    "segment_names",
    "read_json",
    "json_number",
    "write_image",
    "write_segmentation",
    "volume_suffix",
    "NIFTI_SUFFIXES",
    "NRRD_SUFFIXES",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
_RAS_AXIS = {"right": 0, "left": 0, "anterior": 1, "posterior": 1, "superior": 2, "inferior": 2}
_SPACE_ABBREVIATIONS = {
    "ras": "right-anterior-superior",
    "las": "left-anterior-superior",
    "lps": "left-posterior-superior",
}


def volume_suffix(path: str | os.PathLike) -> str:
    """``".nii.gz"``, ``".nii"``, ``".seg.nrrd"``, ``".nrrd"`` or ``".nhdr"``: the format part of a file name."""
    name = Path(path).name.lower()
    for suffix in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".nhdr"):
        if name.endswith(suffix):
            return suffix
    raise ValueError(
        f"Cannot read {path}: images are read from NIfTI (.nii, .nii.gz) or NRRD (.nrrd, .nhdr, .seg.nrrd) files; "
        "convert it, e.g. in 3D Slicer (Save as NRRD)."
    )


def _checked(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such image file: {path}. Check the path.")
    return path, volume_suffix(path)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel

    image = nibabel.load(str(path))
    return np.asarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


def _nrrd_affine(header: dict, spatial: list[int], path: Path) -> np.ndarray:
    """Voxel to RAS affine from the header's space, directions and origin."""
    space = str(header.get("space", "")).lower()
    names = _SPACE_ABBREVIATIONS.get(space, space).split("-")
    axes = [_RAS_AXIS.get(name) for name in names]
    if len(names) != 3 or sorted(a for a in axes if a is not None) != [0, 1, 2]:
        raise ValueError(
            f"{path} has space {space!r}; only anatomical 3D spaces (e.g. left-posterior-superior) are read."
        )
    to_ras = np.zeros((3, 3))
    for column, (name, axis) in enumerate(zip(names, axes)):
        to_ras[axis, column] = 1.0 if name in ("right", "anterior", "superior") else -1.0
    affine = np.eye(4)
    affine[:3, :3] = to_ras @ np.asarray(header["space directions"], dtype=np.float64)[spatial].T
    affine[:3, 3] = to_ras @ np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    return affine


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    import nrrd

    data, header = nrrd.read(str(path))
    if header.get("space directions") is None:
        raise ValueError(f"{path} has no 'space directions': its voxels cannot be placed in world space.")
    directions = np.asarray(header["space directions"], dtype=np.float64)
    spatial = [axis for axis in range(data.ndim) if np.isfinite(directions[axis]).all()]
    if len(spatial) != 3 or data.ndim > 4:
        raise ValueError(
            f"{path} has {data.ndim} axes of which {len(spatial)} are spatial; a 3D image (with at most one "
            "channel or layer axis) is needed."
        )
    affine = _nrrd_affine(header, spatial, path)
    if data.ndim == 4:
        data = np.moveaxis(data, [a for a in range(4) if a not in spatial][0], -1)
    return data, affine, header


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An image's voxels and its ``(4, 4)`` affine.

    Parameters
    ----------
    path : str or path-like
        A NIfTI (``.nii``, ``.nii.gz``) or NRRD (``.nrrd``, ``.nhdr``) file.

    Returns
    -------
    data : np.ndarray
        The voxels as stored (NIfTI scaling applied), ``(X, Y, Z)`` or, with channels, ``(X, Y, Z, C)``; a
        single channel is dropped.
    affine : np.ndarray
        Voxel indices to RAS millimetres (NRRD's LPS directions are converted).

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it is neither NIfTI nor NRRD, cannot be read, or has no 3D geometry.
    """
    path, suffix = _checked(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            data, affine = _read_nifti(path)
        else:
            data, affine, _ = _read_nrrd(path)
    except ValueError:
        raise
    except Exception as error:  # readers raise many types for damaged files; all mean the same to a user
        kind = "a NIfTI" if suffix in NIFTI_SUFFIXES else "an NRRD"
        raise ValueError(f"Cannot read {path} as {kind} image: {error}.") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise ValueError(f"{path} has shape {data.shape}; a 3D image, or 3D with channels, is needed.")
    return np.asarray(data), affine


def read_image_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape an image's header states, without reading its voxels: a cheap check that a file is an image.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it is neither NIfTI nor NRRD or its header cannot be read.
    """
    path, suffix = _checked(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            import nibabel

            return tuple(int(n) for n in nibabel.load(str(path)).shape)
        import nrrd

        return tuple(int(n) for n in nrrd.read_header(str(path))["sizes"])
    except Exception as error:  # readers raise many types for damaged files; all mean the same to a user
        kind = "a NIfTI" if suffix in NIFTI_SUFFIXES else "an NRRD"
        raise ValueError(f"Cannot read {path} as {kind} image: {error}.") from error


def read_segmentation(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The segments of a segmentation file, by name, and its affine.

    Parameters
    ----------
    path : str or path-like
        A 3D Slicer ``.seg.nrrd`` (segments named in its header, one or several layers), or a label map in NIfTI
        or NRRD, whose non-zero labels become segments named ``"1"``, ``"2"``, ...

    Returns
    -------
    segments : dict of str to np.ndarray
        Segment name to its ``(X, Y, Z)`` bool mask, in file order.
    affine : np.ndarray
        Voxel indices to RAS millimetres (the segmentation's own grid, which may be a crop of its image's).
    """
    path, suffix = _checked(path)
    if suffix != ".seg.nrrd":
        labels, affine = read_image(path)
        if labels.ndim != 3 or not np.array_equal(labels, np.round(labels)) or labels.min() < 0:
            raise ValueError(f"The segmentation {path} must be a 3D label map of non-negative integers.")
        labels = labels.astype(np.int64)
        return {str(v): labels == v for v in np.unique(labels) if v > 0}, affine
    try:
        data, affine, header = _read_nrrd(path)
    except ValueError:
        raise
    except Exception as error:  # as in read_image
        raise ValueError(f"Cannot read {path} as a segmentation: {error}.") from error
    layers = data if data.ndim == 4 else data[..., None]
    segments = {}
    index = 0
    while f"Segment{index}_ID" in header or f"Segment{index}_Name" in header:
        name = str(header.get(f"Segment{index}_Name", header.get(f"Segment{index}_ID")))
        layer = int(header.get(f"Segment{index}_Layer", index if layers.shape[3] > 1 else 0))
        label = int(header.get(f"Segment{index}_LabelValue", 1))
        if layer >= layers.shape[3]:
            raise ValueError(f"{path}: segment {name!r} is on layer {layer}, but the file has {layers.shape[3]}.")
        segments[name] = layers[..., layer] == label
        index += 1
    if not segments:
        raise ValueError(f"{path} names no segment (no Segment0_Name in its header); save it from 3D Slicer.")
    return segments, affine


def segment_names(path: str | os.PathLike) -> list[str]:
    """The names of a ``.seg.nrrd``'s segments, in file order, read from its header alone."""
    import nrrd

    path, _ = _checked(path)
    try:
        header = nrrd.read_header(str(path))
    except Exception as error:  # as in read_image
        raise ValueError(f"Cannot read {path} as a segmentation: {error}.") from error
    names, index = [], 0
    while f"Segment{index}_ID" in header or f"Segment{index}_Name" in header:
        names.append(str(header.get(f"Segment{index}_Name", header.get(f"Segment{index}_ID"))))
        index += 1
    return names


def read_labels(
    path: str | os.PathLike,
    onto: Grid | None = None,
    *,
    segments: list[str] | None = None,
    mask: bool = False,
    what: str = "label map",
) -> tuple[np.ndarray, dict[int, str] | None]:
    """The labels of a mask, label map or segmentation file, placed on a grid by the file's geometry: the one
    reader of every file that marks voxels (a reference, a ROI mask, an organ label map).

    Parameters
    ----------
    path : str or path-like
        A 3D Slicer ``.seg.nrrd``, or a NIfTI or NRRD label map or mask (non-negative integer values).
    onto : Grid, optional
        The grid to carry the labels to (nearest neighbour, through RAS); default the file's own.
    segments : list of str, optional
        For a ``.seg.nrrd``: the segments to read, by name (case does not matter), labelled ``1..K`` in this
        order; default every segment, in file order.
    mask : bool
        For a NIfTI or NRRD file: a mask, whose voxels above 0 are label 1 whatever their values (a probability
        map thresholded at 0, say), rather than a label map of integers.
    what : str
        What the file is, for errors (``"reference"``, ``"ROI mask"``...).

    Returns
    -------
    labels : np.ndarray
        ``(X, Y, Z)`` int64 labels on ``onto``; where segments overlap, the later one takes the voxel.
    names : dict of int to str or None
        A ``.seg.nrrd``'s segment names by label; ``None`` for a label map, whose labels carry no names.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it holds no 3D labels, lacks a segment asked for (the message lists those it has), or none of its
        labelled voxels lies inside ``onto``'s volume.
    """
    if volume_suffix(path) == ".seg.nrrd":
        masks, affine = read_segmentation(path)
        by_name = {name.lower(): (name, mask) for name, mask in masks.items()}
        wanted = list(masks) if segments is None else segments
        missing = [name for name in wanted if name.lower() not in by_name]
        if missing:
            raise ValueError(
                f"The {what} {path} has no segment named {missing[0]!r}; its segments are "
                f"{', '.join(repr(name) for name in masks)}."
            )
        chosen = [by_name[name.lower()] for name in wanted]
        labels = np.zeros(next(iter(masks.values())).shape, np.int64)
        for label, (_, mask) in enumerate(chosen, start=1):
            labels[mask] = label
        names: dict[int, str] | None = {label: name for label, (name, _) in enumerate(chosen, start=1)}
    else:
        data, affine = read_image(path)
        if mask and data.ndim == 3:
            data = data > 0
        if data.ndim != 3 or not np.array_equal(data, np.round(data)) or data.min() < 0:
            raise ValueError(
                f"The {what} {path} must be a 3D label map or mask of non-negative integers; got shape {data.shape}."
            )
        labels, names = data.astype(np.int64), None
    if onto is None:
        return labels, names
    moved = transfer(labels, Grid(labels.shape, affine), onto)
    if labels.any() and not moved.any():
        raise ValueError(
            f"The {what} {path} does not overlap the image: none of its labelled voxels lies inside the image's "
            "volume (in RAS). Was it drawn on another image, or saved without its geometry?"
        )
    return moved, names


def json_number(value) -> float | list | None:
    """A number, or an array of them, as JSON can hold it: floats (a list for an array), ``None`` for NaN and
    infinities (which JSON has no words for)."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return float(array) if np.isfinite(array) else None
    return [float(v) if np.isfinite(v) else None for v in array.ravel()]


def write_image(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` (``(X, Y, Z)``, or ``(T, X, Y, Z)`` stored with T last) with ``affine``, as NIfTI or NRRD.

    The format follows the suffix. NRRD keeps the affine in double precision (in LPS, as 3D Slicer writes it);
    NIfTI stores it in its header's single-precision sform and qform.
    """
    data = np.asarray(array)
    suffix = volume_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        import nibabel

        image = nibabel.Nifti1Image(np.moveaxis(data, 0, -1) if data.ndim == 4 else data, np.asarray(affine, float))
        image.set_qform(image.affine, code=1)
        image.set_sform(image.affine, code=1)
        nibabel.save(image, str(path))
        return
    import nrrd

    nrrd.write(str(path), np.ascontiguousarray(data), _nrrd_header(affine, data.ndim == 4), compression_level=1)


def write_segmentation(path: str | os.PathLike, labels: np.ndarray, affine: np.ndarray, names: dict[int, str]) -> None:
    """Write a label map as a 3D Slicer ``.seg.nrrd``: one layer, label ``k`` the segment ``names[k]``.

    Parameters
    ----------
    path : str or path-like
        Where to write; must end in ``.seg.nrrd``.
    labels : np.ndarray
        ``(X, Y, Z)`` integer labels in 0..255, 0 for no segment.
    affine : np.ndarray
        Voxel indices to RAS millimetres.
    names : dict of int to str
        The name of every label > 0 in ``labels`` (:func:`read_segmentation` reads the segments back by them).
    """
    import nrrd

    if not str(path).endswith(".seg.nrrd"):
        raise ValueError(f"write_segmentation writes a .seg.nrrd, got {path}.")
    labels = np.asarray(labels)
    present = {int(label) for label in np.unique(labels)} - {0}
    if labels.ndim != 3 or not np.array_equal(labels, np.round(labels)) or labels.min() < 0 or labels.max() > 255:
        raise ValueError("labels must be a 3D array of integers in 0..255 (one layer of a .seg.nrrd).")
    if present - set(names):
        raise ValueError(f"names gives no name to label(s) {sorted(present - set(names))}; name every label > 0.")
    header = _nrrd_header(affine, list_axis=False)
    for index, (label, name) in enumerate(sorted(names.items())):
        header.update(
            {
                f"Segment{index}_ID": f"Segment_{label}",
                f"Segment{index}_Name": name,
                f"Segment{index}_Layer": "0",
                f"Segment{index}_LabelValue": str(label),
            }
        )
    nrrd.write(str(path), np.ascontiguousarray(labels.astype(np.uint8)), header, compression_level=1)


def _nrrd_header(affine: np.ndarray, list_axis: bool) -> dict:
    """NRRD geometry in LPS at full precision, as 3D Slicer writes it (``list_axis``: a first, non-spatial axis)."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)[:3]
    directions = lps[:, :3].T
    kinds = ["domain"] * 3
    if list_axis:
        directions = np.vstack([np.full((1, 3), np.nan), directions])
        kinds = ["list"] + kinds
    return {
        "space": "left-posterior-superior",
        "space directions": directions,
        "space origin": lps[:, 3],
        "kinds": kinds,
    }
