"""Reading images and writing outputs so that a failed or cancelled run leaves nothing half-written.

Images are read with their affine (voxel indices to RAS millimetres). Outputs are written into a staging folder
beside the destination and moved into place only once all of them exist (:class:`StagedOutput`); the moves run
with SIGINT and SIGTERM held back, so an interruption leaves either the old folder or the complete new outputs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np

__all__ = ["read_image", "write_nifti", "StagedOutput", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An image's voxels and its ``(4, 4)`` affine.

    Parameters
    ----------
    path : str or path-like
        A NIfTI file (``.nii`` or ``.nii.gz``).

    Returns
    -------
    data : np.ndarray
        The voxels as stored (scaling applied), ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
    affine : np.ndarray
        Voxel indices to RAS millimetres.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When it is not a NIfTI file or cannot be read as one.
    """
    import nibabel

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such image file: {path}. Check the path.")
    if not _is_nifti(path):
        raise ValueError(f"Cannot read {path}: only NIfTI images (.nii, .nii.gz) are read; convert it, e.g. in 3D Slicer.")
    try:
        image = nibabel.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for damaged files; all mean the same to a user
        raise ValueError(f"Cannot read {path} as a NIfTI image: {error}.") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return np.asarray(data), np.asarray(image.affine, dtype=np.float64)


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` (``(X, Y, Z)``, or ``(T, X, Y, Z)`` stored as ``(X, Y, Z, T)``) with ``affine``."""
    import nibabel

    data = np.asarray(array)
    if data.ndim == 4:
        data = np.moveaxis(data, 0, -1)
    image = nibabel.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    nibabel.save(image, str(path))


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM until the block ends (only possible, and only needed, in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: received.append(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for number in received:
            signal.raise_signal(number)


class StagedOutput:
    """Write files into a staging folder, then move them all into ``destination`` at once.

    Use as a context manager: the body writes into the returned folder; leaving the body normally commits, leaving
    it by an exception (``KeyboardInterrupt`` included) removes the staging folder and leaves ``destination`` as
    it was.

    Parameters
    ----------
    destination : str or path-like
        The output folder; created if missing. Files of the same name in it are replaced, others are kept.
    """

    def __init__(self, destination: str | os.PathLike) -> None:
        self.destination = Path(destination)
        if self.destination.exists() and not self.destination.is_dir():
            raise ValueError(f"The output path {self.destination} exists and is not a folder; choose another --out.")
        self.staging: Path | None = None

    def __enter__(self) -> Path:
        # Stage in the nearest folder that exists (same file system, so the final moves are renames); missing
        # parents of the destination are created only when committing.
        parent = self.destination.absolute().parent
        while not parent.is_dir():
            parent = parent.parent
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.partial-", dir=parent))
        except OSError as error:
            raise ValueError(f"Cannot write outputs next to {self.destination}: {error}. Choose another --out.") from error
        return self.staging

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _commit(self) -> None:
        with _signals_held():
            self.destination.mkdir(parents=True, exist_ok=True)
            for path in sorted(self.staging.iterdir()):
                os.replace(path, self.destination / path.name)
