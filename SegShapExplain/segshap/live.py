"""Live explanations at the front ends: the worker's ``estimate`` events and heatmap files, its stop request, and
stopping once the top features hold still.

The protocol (``docs/cli.md``, "Worker protocol"): a request with ``update_every`` gets an ``estimate`` event per
:class:`segshap.Update` (:func:`estimate_event`), with the heatmap written into ``live_folder`` first
(:func:`write_heatmaps`, atomically); a file appearing at ``stop_file``, or SIGUSR1 on POSIX, stops the sampling and
the run finishes with the last estimate sent (:class:`StopRequest`); ``stop_when_stable`` stops it once the top 10
have not changed for that many updates (:func:`stop_when_stable`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .anytime import Stop, Update
from .io import json_number, write_image
from .reporting import update_text

__all__ = ["LIVE_HEATMAP", "StopRequest", "estimate_event", "stop_when_stable", "write_heatmaps"]

LIVE_HEATMAP = "estimate.nrrd"
"""The live heatmap's file name in ``live_folder`` (``estimate-<t>.nrrd`` per target with several targets)."""


def stop_when_stable(on_update: Callable[[Update], bool | None], updates: int) -> Callable[[Update], bool | None]:
    """``on_update``, then ``False`` (stop) once the top 10 have not changed for ``updates`` updates in a row."""

    def relay(update: Update) -> bool | None:
        answer = on_update(update)
        return False if update.stable_updates >= updates else answer

    return relay


def write_heatmaps(update: Update, folder: str | os.PathLike) -> list[Path]:
    """The update's heatmap on the image's grid (with its :attr:`~segshap.Update.affine`, else the identity) as NRRD
    in ``folder``, one file per target, each written under a temporary name and renamed into place, so that a
    reader never sees half a file."""
    affine = np.eye(4) if update.affine is None else update.affine
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    heat = update.heatmap()
    volumes = [heat] if heat.ndim == 3 else list(heat)
    names = [LIVE_HEATMAP] if len(volumes) == 1 else [f"estimate-{t}.nrrd" for t in range(len(volumes))]
    paths = []
    for name, volume in zip(names, volumes):
        path = folder / name
        partial = folder / f".{name}.partial.nrrd"
        write_image(partial, volume, affine)
        os.replace(partial, path)
        paths.append(path.absolute())
    return paths


def estimate_event(update: Update, heatmaps: list[Path]) -> dict:
    """The fields of the worker's ``estimate`` event for an update whose heatmaps are in ``heatmaps``."""
    ids = np.asarray(update.feature_ids)
    values, stderr = np.asarray(update.values), np.asarray(update.stderr)
    top = [{"feature": int(ids[i]), "value": _numbers(values[i]), "stderr": _numbers(stderr[i])} for i in update.top()]
    return {
        "update": update.number,
        "level": update.level,
        "regions": update.regions,
        "feature_ids": ids.tolist(),
        "values": _numbers(values),
        "stderr": _numbers(stderr),
        "coalitions": update.coalitions,
        "forwards": update.forwards,
        "seconds": round(update.seconds, 3),
        "fraction": round(update.fraction, 4),
        "top_changed": update.top_changed,
        "stable_updates": update.stable_updates,
        "top": top,
        "heatmap": str(heatmaps[0]),
        "heatmaps": [str(path) for path in heatmaps],
        "text": update_text(update),
        "final": update.final,
    }


def _numbers(array: np.ndarray):
    """Floats, or nested lists of them, with ``None`` where NaN (JSON has no NaN)."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 0:
        return json_number(float(array))
    return [_numbers(row) for row in array]


class StopRequest:
    """Requests ``stop`` when a file appears at ``path`` (checked every ``poll_s`` seconds; a file holding an
    update's number keeps that update, the one a viewer was showing) or, on POSIX in the main thread, when the
    process gets SIGUSR1; a context manager, which stops watching on exit."""

    def __init__(self, path: str | os.PathLike | None, stop: Stop, poll_s: float = 0.2) -> None:
        self.path, self.stop, self.poll_s = (None if path is None else Path(path)), stop, poll_s
        self.ended = threading.Event()
        self.signal_handled = False
        self.previous = None

    def __enter__(self) -> StopRequest:
        if self.path is not None:
            threading.Thread(target=self._watch, name="segshap-stop-file", daemon=True).start()
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGUSR1, lambda number, frame: self.stop.set())
            self.signal_handled = True
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.ended.set()
        if self.signal_handled:  # None: a handler set outside Python, which the default stands for
            signal.signal(signal.SIGUSR1, signal.SIG_DFL if self.previous is None else self.previous)

    def _watch(self) -> None:
        while not self.ended.wait(self.poll_s):
            if self.path.exists():
                text = self.path.read_text().strip()
                self.stop.request(int(text) if text.isdigit() else None)
                return
