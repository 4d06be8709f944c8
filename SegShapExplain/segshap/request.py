"""A request: what the command line and the worker ask for, as a dict of the keys of :data:`REQUEST_KEYS`.

The worker reads it from a JSON file (:func:`read_request`, which checks every key and value before anything is
loaded), the command line builds it from its flags. Its files are read here: the image, the model and the options
(:func:`load_inputs`), the ROI, the reference and the organ label map, each placed on the image's grid by its own
geometry (:func:`segshap.io.read_labels`); :func:`explain_request` turns a request into an
:class:`~segshap.Explanation`. Bad input raises :class:`UsageError` or ``ValueError``, whose
:class:`~segshap.inputs.ArgumentError` kind names the request key at fault; each front end renders that name as its
user knows it. The tasks that carry requests out are in :mod:`segshap.jobs`.
"""

from __future__ import annotations

import logging
import numbers
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .anytime import Update
from .explanation import Explanation
from .features import ORGAN_FEATURES
from .geometry import Grid
from .inputs import ArgumentError, parse_box, target_list
from .io import NRRD_SUFFIXES, read_image, read_json, read_labels, segment_names, volume_suffix
from .models import LoadedModel, load_model
from .options import ExplainOptions
from .pipeline import explain

__all__ = [
    "REQUEST_KEYS",
    "TASKS",
    "REQUIRED_KEYS",
    "UsageError",
    "OutOfMemory",
    "read_request",
    "request_targets",
    "demo_request",
    "load_inputs",
    "load_model_of",
    "explain_request",
    "volume_format_of",
    "halving_batch_on_oom",
]

REQUEST_KEYS = (
    "task",
    "image",
    "model",
    "model_config",
    "trust_model",
    "target",
    "reference",
    "reference_segment",
    "roi",
    "labelmap",
    "out",
    "options",
    "manifest",
    "address",
    "gpus_per_case",
    "resume",
    "update_every",
    "live_folder",
    "stop_file",
    "stop_when_stable",
)
"""Keys of a request file (``labelmap``: the organ label map of organ features, a ``.seg.nrrd`` naming its organs;
default the model's prediction; ``options``: :class:`~segshap.options.ExplainOptions` by name; ``manifest``,
``address``, ``gpus_per_case`` and ``resume``: a cohort's, as :func:`segshap.explain_cohort` takes them;
``update_every``, ``live_folder``, ``stop_file`` and ``stop_when_stable``: an explanation's live estimates, as
:mod:`segshap.live` describes them)."""
TASKS = ("explain", "segment", "describe", "cohort")
"""What a request can ask for: an explanation, the model's segmentation of the image, the model itself, or the
explanations of a cohort (:func:`cohort_from_request`)."""
REQUIRED_KEYS = {
    "explain": frozenset({"image", "model", "target", "out"}),
    "cohort": frozenset({"manifest", "model", "target", "out"}),
    "segment": frozenset({"image", "model", "out"}),
    "describe": frozenset({"model"}),
}
"""The keys each task needs."""

_COHORT_KEYS = frozenset({"manifest", "address", "gpus_per_case", "resume"})
_CASE_KEYS = frozenset({"image", "reference", "reference_segment", "roi", "labelmap"})
_LIVE_KEYS = frozenset({"update_every", "live_folder", "stop_file", "stop_when_stable"})
_PATH_KEYS = (
    "image",
    "model",
    "model_config",
    "reference",
    "reference_segment",
    "labelmap",
    "out",
    "manifest",
    "live_folder",
    "stop_file",
)


class UsageError(Exception):
    """Bad input that is not a bad argument of the library: reported as one line and exit code 2."""


class OutOfMemory(Exception):
    """The GPU ran out of memory even one window at a time: reported with ``reason: "out_of_memory"``."""


def read_request(path: str | Path) -> dict:
    """The request in a JSON file, with its task, its keys and the type of every value checked.

    Raises
    ------
    UsageError
        For an unknown task, unknown or missing keys, or keys of the other kind of task.
    ArgumentError
        For a value of the wrong type or a bad option, named by its key.
    """
    path = Path(path)
    request = read_json(path, "request file")
    task = request.get("task", "explain")
    if task not in TASKS:
        raise UsageError(f"The request {path} asks for task {task!r}; tasks: {', '.join(TASKS)}.")
    unknown = set(request) - set(REQUEST_KEYS)
    missing = REQUIRED_KEYS[task] - set(request)
    if unknown or missing:
        raise UsageError(
            f"The request {path} has unknown keys {sorted(unknown)} or misses {sorted(missing)}; "
            f"keys: {', '.join(REQUEST_KEYS)} ({', '.join(sorted(REQUIRED_KEYS[task]))} required for {task})."
        )
    misplaced = set(request) & (_CASE_KEYS if task == "cohort" else _COHORT_KEYS)
    if misplaced:
        where = "each case's come from the manifest" if task == "cohort" else "they are a cohort's"
        raise UsageError(f"The request {path} (task {task}) cannot take {sorted(misplaced)}: {where}.")
    live = set(request) & _LIVE_KEYS
    if live and task != "explain":
        raise UsageError(f"The request {path} (task {task}) cannot take {sorted(live)}: they are an explanation's.")
    if request.get("update_every") is not None and request.get("live_folder") is None:
        raise UsageError(
            f"The request {path} asks for live estimates (update_every) but names no live_folder for their heatmaps."
        )
    _check_values(request)
    return request


def _check_values(request: dict) -> None:
    """Refuse a request value of the wrong type, naming its key, before anything is loaded."""
    for key in _PATH_KEYS:
        if request.get(key) is not None and not isinstance(request[key], str):
            raise ArgumentError(key, f"{{argument}} must be a path (a string), got {request[key]!r}.")
    for key in ("trust_model", "resume"):
        if request.get(key) is not None and not isinstance(request[key], bool):
            raise ArgumentError(key, f"{{argument}} must be true or false, got {request[key]!r}.")
    every = request.get("update_every")
    if every is not None and (isinstance(every, bool) or not isinstance(every, numbers.Real) or not every > 0):
        raise ArgumentError("update_every", f"{{argument}} must be a number of seconds > 0, got {every!r}.")
    stable = request.get("stop_when_stable")
    if stable is not None and (isinstance(stable, bool) or not isinstance(stable, int) or stable < 1):
        raise ArgumentError("stop_when_stable", f"{{argument}} must be a whole number of updates >= 1, got {stable!r}.")
    if request.get("address") is not None and not isinstance(request["address"], str):
        raise ArgumentError("address", f"{{argument}} must be a string, got {request['address']!r}.")
    gpus = request.get("gpus_per_case")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, numbers.Real) or gpus < 0):
        raise ArgumentError("gpus_per_case", f"{{argument}} must be a number >= 0, got {gpus!r}.")
    if "target" in request:
        request_targets(request["target"])
    roi = request.get("roi")
    if roi is not None and not isinstance(roi, str) and not _is_box(roi):
        raise ArgumentError(
            "roi",
            f"{{argument}} must be a box x0:x1,y0:y1,z0:z1, three [start, stop] pairs or a mask file; got {roi!r}.",
        )
    options = request.get("options")
    if options is not None and not isinstance(options, dict):
        raise ArgumentError("options", f"{{argument}} must be an object of options by name, got {options!r}.")
    ExplainOptions.from_dict(options)


def _is_box(value) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            for pair in value
        )
    )


def request_targets(target) -> list[str | int]:
    """A request's targets as a list: a class name or index, names separated by commas, or a list of them.

    Raises
    ------
    ArgumentError
        For anything else (an object, an empty list, ``true``...).
    """
    return target_list([part.strip() for part in target.split(",")] if isinstance(target, str) else target)[0]


def demo_request(out: str, options: dict) -> dict:
    """The request that explains the embedded demo model on the embedded MRI (``Resources/Demo/demo.json``)."""
    here = Path(__file__).resolve().parent
    for resources in (here.parent / "Resources", here.parent.parent / "Resources"):
        case = resources / "Demo" / "demo.json"
        if case.is_file():
            break
    else:
        raise UsageError(
            f"The demo (Resources/Demo/demo.json) was not found near {here}; it ships with a source checkout or "
            "the 3D Slicer extension, not with the segshap package alone."
        )
    demo = read_json(case, "demo description")
    return {
        "image": str(case.parent / demo["image"]),
        "model": str(case.parent / demo["model"]),
        "target": demo["target"],
        "roi": demo["roi"],
        "out": out,
        "options": options,
        "slices": None,  # slices.png where slicer-core is installed
    }


def load_inputs(request: dict) -> tuple[np.ndarray, np.ndarray, LoadedModel, ExplainOptions]:
    """The image, its affine, the model and the options of a request."""
    options = ExplainOptions.from_dict(request.get("options"))
    image, affine = read_image(request["image"])
    model = load_model_of(request, options.device)
    if image.ndim == 4 and image.shape[3] != model.in_channels:
        raise UsageError(
            f"{request['image']} has {image.shape[3]} channels (shape {image.shape}) but the model takes "
            f"{model.in_channels}; pass a 3D image (one volume of the series), e.g. exported from 3D Slicer."
        )
    return image, affine, model, options


def load_model_of(request: dict, device: str) -> LoadedModel:
    return load_model(
        request["model"], config=request.get("model_config"), trust=bool(request.get("trust_model")), device=device
    )


def _roi(value, image_grid: Grid):
    """A box ``x0:x1,y0:y1,z0:z1`` (image voxels), a list of pairs, or a mask file (placed by its geometry)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(tuple(int(v) for v in pair) for pair in value)
    if ":" in value and not Path(value).exists():
        try:
            return parse_box(value)
        except ValueError:
            raise ArgumentError(
                "roi", f"{{argument}} {value!r} is not a box x0:x1,y0:y1,z0:z1 nor an existing mask file."
            ) from None
    labels, _ = read_labels(value, image_grid, mask=True, what="ROI mask")
    return labels > 0


def _reference(path, segment: str | None, targets: dict[int, str], image_grid: Grid):
    """The reference on the image's grid: a mask for one target, a label map (``t`` marks target ``t``) for several.

    A ``.seg.nrrd`` gives its segments by name: ``segment`` names the one to use, else each target's segment is
    the one named like the target's class (or the only segment). A label map marks target ``t`` with ``t``; for
    one target a 0/1 file is the segment itself.
    """
    if segment is not None and (path is None or volume_suffix(path) != ".seg.nrrd"):
        raise ArgumentError(
            "reference_segment", "{argument} picks a segment of a .seg.nrrd reference; give one as the reference."
        )
    if path is None:
        return None
    if volume_suffix(path) != ".seg.nrrd":
        labels, _ = read_labels(path, image_grid, what="reference")
        return labels > 0 if len(targets) == 1 and labels.max() <= 1 else labels
    names = segment_names(path)
    if segment is not None and len(targets) > 1:
        raise ArgumentError(
            "reference_segment",
            "{argument} names one segment; with several targets, name the segments after the targets' classes instead.",
        )
    if segment is not None:
        chosen = [segment]
    elif len(targets) == 1 and len(names) == 1:
        chosen = names
    else:
        chosen = list(targets.values())
    known = {name.lower() for name in names}
    for name in chosen:
        if name.lower() not in known:
            raise ArgumentError(
                "reference_segment",
                f"The reference {path} has no segment named {name!r}; its segments are "
                f"{', '.join(repr(n) for n in names)}. Choose one with {{argument}}.",
            )
    labels, _ = read_labels(path, image_grid, segments=chosen, what="reference")
    if len(targets) == 1:
        return labels > 0
    return np.array([0, *targets], dtype=np.int64)[labels]


def explain_request(
    request: dict,
    progress: Callable[[int, int], None] | None = None,
    on_update: Callable[[Update], bool | None] | None = None,
    stop: threading.Event | None = None,
) -> Explanation:
    """Load a request's image, model, files and options and explain (with ``on_update`` every ``update_every``
    seconds of the request, 5 by default, and ``stop``, as :func:`segshap.explain` takes them); on a GPU that runs
    out of memory, again with fewer windows per batch (:func:`halving_batch_on_oom`)."""
    image, affine, model, options = load_inputs(request)
    targets = request_targets(request["target"])
    single = len(targets) == 1 and not isinstance(request["target"], list)
    indices = [model.class_index(t) for t in targets]
    image_grid = Grid(image.shape[:3], affine)
    # The files of the request, on the image's grid: what explain takes beside the model, the image and the options.
    given = {
        "reference": _reference(
            request.get("reference"),
            request.get("reference_segment"),
            {i: model.classes[i] for i in indices},
            image_grid,
        ),
        "roi": _roi(request.get("roi"), image_grid),
        "affine": affine,
    }
    if request.get("labelmap") is not None:
        if options.features not in ORGAN_FEATURES:
            raise ArgumentError("labelmap", f"{{argument}} makes organ features: ask for one of {ORGAN_FEATURES}.")
        given["labelmap"], given["organ_names"] = read_labels(request["labelmap"], image_grid, what="label map")
    target = targets[0] if single else targets
    return halving_batch_on_oom(
        lambda batch: explain(
            model,
            image,
            target=target,
            progress=progress,
            on_update=on_update,
            update_every=request.get("update_every") or 5.0,
            stop=stop,
            options=options.replace(batch_size=batch),
            **given,
        ),
        options.batch_size,
    )


def volume_format_of(request: dict) -> str:
    """The format of a request's output volumes: the image's own (``.nrrd`` for NRRD, else ``.nii.gz``)."""
    return ".nrrd" if volume_suffix(request["image"]) in NRRD_SUFFIXES else ".nii.gz"


def halving_batch_on_oom(work: Callable[[int], object], batch_size: int) -> object:
    """``work(batch_size)``; whenever the GPU runs out of memory, again with half as many windows per batch.

    Raises
    ------
    OutOfMemory
        When even one window at a time does not fit.
    """
    log = logging.getLogger("segshap")
    while True:
        try:
            return work(batch_size)
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if batch_size <= 1:
                raise OutOfMemory(
                    "The GPU ran out of memory even with one window at a time; run on the CPU (device cpu), or "
                    "close what else uses the GPU and try again."
                ) from None
            batch_size = max(1, batch_size // 2)
            log.warning("The GPU ran out of memory; trying again with %d window(s) per batch.", batch_size)
