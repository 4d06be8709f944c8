"""Output folders written all or nothing, so that a failed or cancelled run leaves nothing half-written.

Outputs are written into a staging folder beside the destination and moved into place only once all of them exist
(:class:`StagedOutput`); the moves run with SIGINT and SIGTERM held back (:class:`segshap.processes.DeferredSignals`),
so an interruption leaves either the old folder or the complete new outputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .inputs import ArgumentError
from .processes import DeferredSignals

__all__ = ["StagedOutput", "output_folder"]


def output_folder(destination: str | os.PathLike) -> Path:
    """``destination`` as a path, refused when it exists and is not a folder: a check worth making before the
    work whose outputs it is to hold."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise ArgumentError(
            "out_dir", f"The output path {destination} exists and is not a folder; choose another {{argument}}."
        )
    return destination


class StagedOutput:
    """Write files into a staging folder, then move them all into ``destination`` at once.

    Use as a context manager: the body writes into the returned folder; leaving the body normally commits, leaving
    it by an exception (``KeyboardInterrupt`` included) removes the staging folder and leaves ``destination`` as
    it was.

    Parameters
    ----------
    destination : str or path-like
        The output folder; created if missing (with its missing parents, when committing). Files of the same name
        in it are replaced, others are kept. A folder that exists when this is made and is removed before the end
        (by whoever owns it: a cohort run removing its staging folder) is not made again: nothing is written.
    """

    def __init__(self, destination: str | os.PathLike) -> None:
        self.destination = output_folder(destination)
        self.existed = self.destination.is_dir()
        self.staging: Path | None = None

    def __enter__(self) -> Path:
        # Stage beside the destination (same file system, so the final moves are renames); for a new one, in the
        # nearest folder that exists: its missing parents are created only when committing.
        parent = self.destination.absolute().parent
        while not self.existed and not parent.is_dir():
            parent = parent.parent
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.partial-", dir=parent))
        except OSError as error:
            raise ArgumentError(
                "out_dir", f"Cannot write outputs next to {self.destination}: {error}. Choose another {{argument}}."
            ) from error
        return self.staging

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _commit(self) -> None:
        with DeferredSignals():
            self.destination.mkdir(parents=not self.existed, exist_ok=True)
            for path in sorted(self.staging.iterdir()):
                os.replace(path, self.destination / path.name)
