"""Requests and what runs them: the part of the command line shared by ``segshap explain``/``demo`` and the worker.

A *request* is a dict with the keys of :data:`REQUEST_KEYS`: the worker reads it from a JSON file, the command
line builds it from its flags. :func:`explain_and_save`, :func:`segment` and :func:`describe` carry one out in a
background thread (:func:`compute_in_background`), so the main thread stays free to take signals. Bad input raises
:class:`UsageError` or ``ValueError``, whose :class:`~segshap.inputs.ArgumentError` kind names the request key at
fault; each front end renders that name as its user knows it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .explain import explain
from .explanation import Explanation
from .game import ORGAN_FEATURES
from .geometry import Grid, transfer
from .inputs import ArgumentError, resolve_device
from .io import NRRD_SUFFIXES, StagedOutput, read_image, read_json, read_segmentation, volume_suffix, write_image
from .models import LoadedModel, load_model
from .predict import DEFAULT_BATCH_SIZE, predict

__all__ = [
    "REQUEST_KEYS",
    "OPTION_KEYS",
    "TASKS",
    "UsageError",
    "OutOfMemory",
    "read_request",
    "demo_request",
    "explain_and_save",
    "segment",
    "describe",
    "halving_batch_on_oom",
    "compute_in_background",
    "summary",
    "logging_to",
    "Rate",
    "format_duration",
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
)
"""Keys of a request file (``labelmap``: the organ label map of organ features, a ``.seg.nrrd`` naming its organs;
default the model's prediction; ``manifest``, ``address``, ``gpus_per_case`` and ``resume``: a cohort's, as
:func:`segshap.explain_cohort` takes them)."""
OPTION_KEYS = (
    "features",
    "n_features",
    "value",
    "nsamples",
    "tolerance",
    "design",
    "max_forwards",
    "max_seconds",
    "faithfulness",
    "baseline",
    "device",
    "seed",
    "batch_size",
    "margin",
)
"""Keys of a request's ``options``: keyword arguments of :func:`segshap.explain`."""
TASKS = ("explain", "segment", "describe", "cohort")
"""What a request can ask for: an explanation, the model's segmentation of the image, the model itself, or the
explanations of a cohort (:func:`segshap.cohort.cohort_from_request`)."""
REQUIRED_KEYS = {
    "explain": frozenset({"image", "model", "target", "out"}),
    "cohort": frozenset({"manifest", "model", "target", "out"}),
    "segment": frozenset({"image", "model", "out"}),
    "describe": frozenset({"model"}),
}
"""The keys each task needs."""


_COHORT_KEYS = frozenset({"manifest", "address", "gpus_per_case", "resume"})
_CASE_KEYS = frozenset({"image", "reference", "reference_segment", "roi", "labelmap"})


class UsageError(Exception):
    """Bad input that is not a bad argument of the library: reported as one line and exit code 2."""


class OutOfMemory(Exception):
    """The GPU ran out of memory even one window at a time: reported with ``reason: "out_of_memory"``."""


# ------------------------------------------------------------------------------------------------ the request


def read_request(path: str | Path) -> dict:
    """The request in a JSON file, with its task and keys checked."""
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
    return request


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


def _load(request: dict) -> tuple[np.ndarray, np.ndarray, LoadedModel, dict]:
    """The image, its affine, the model and the options of a request (``device`` among them, validated)."""
    options = dict(request.get("options") or {})
    unknown = set(options) - set(OPTION_KEYS)
    if unknown:
        raise UsageError(f"Unknown option(s) {sorted(unknown)}; known: {', '.join(OPTION_KEYS)}.")
    options.setdefault("device", "auto")
    image, affine = read_image(request["image"])
    model = _load_model(request, options["device"])
    if image.ndim == 4 and image.shape[3] != model.in_channels:
        raise UsageError(
            f"{request['image']} has {image.shape[3]} channels (shape {image.shape}) but the model takes "
            f"{model.in_channels}; pass a 3D image (one volume of the series), e.g. exported from 3D Slicer."
        )
    return image, affine, model, options


def _load_model(request: dict, device: str) -> LoadedModel:
    return load_model(
        request["model"], config=request.get("model_config"), trust=bool(request.get("trust_model")), device=device
    )


def _roi(text, image_grid: Grid):
    """A box ``x0:x1,y0:y1,z0:z1`` (image voxels), a list of pairs, or a mask file (placed by its geometry)."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return tuple(tuple(int(v) for v in pair) for pair in text)
    if ":" in text and not Path(text).exists():
        try:
            return tuple(tuple(int(v) for v in part.split(":")) for part in text.split(","))
        except ValueError:
            raise ArgumentError(
                "roi", f"{{argument}} {text!r} is not a box x0:x1,y0:y1,z0:z1 nor an existing mask file."
            ) from None
    if volume_suffix(text) == ".seg.nrrd":
        segments, affine = read_segmentation(text)
        mask = np.logical_or.reduce(list(segments.values()))
    else:
        mask, affine = read_image(text)
        if mask.ndim != 3:
            raise ArgumentError("roi", f"The ROI mask {text} has shape {mask.shape}; give a 3D mask (non-zero inside).")
    return transfer(mask > 0, Grid(mask.shape, affine), image_grid)


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
    if volume_suffix(path) == ".seg.nrrd":
        segments, affine = read_segmentation(path)
        grid = Grid(next(iter(segments.values())).shape, affine)
        by_name = {name.lower(): mask for name, mask in segments.items()}

        def pick(name: str):
            if name.lower() not in by_name:
                raise ArgumentError(
                    "reference_segment",
                    f"The reference {path} has no segment named {name!r}; its segments are "
                    f"{', '.join(repr(n) for n in segments)}. Choose one with {{argument}}.",
                )
            return _carried(by_name[name.lower()], grid, image_grid, path, "reference")

        if segment is not None:
            if len(targets) > 1:
                raise ArgumentError(
                    "reference_segment",
                    "{argument} names one segment; with several targets, name the segments after the targets' "
                    "classes instead.",
                )
            return pick(segment)
        if len(targets) == 1 and len(segments) == 1:
            return _carried(next(iter(segments.values())), grid, image_grid, path, "reference")
        if len(targets) == 1:
            return pick(next(iter(targets.values())))
        labels = np.zeros(image_grid.shape, np.int64)
        for index, name in targets.items():
            labels[pick(name)] = index
        return labels
    labels = _label_file(path, image_grid, "reference")
    return labels > 0 if len(targets) == 1 and labels.max() <= 1 else labels


def _label_file(path, image_grid: Grid, what: str) -> np.ndarray:
    """A label-map file's labels on the image's grid (placed by its geometry)."""
    data, affine = read_image(path)
    if data.ndim != 3 or not np.array_equal(data, np.round(data)) or data.min() < 0:
        raise UsageError(f"The {what} {path} must be a 3D segmentation (non-negative integer labels).")
    return _carried(data.astype(np.int64), Grid(data.shape, affine), image_grid, path, what)


def _organ_label_map(path, image_grid: Grid) -> tuple[np.ndarray, dict[int, str] | None]:
    """The organ label map of a request on the image's grid, and its labels' names when the file has them.

    A ``.seg.nrrd`` gives its segments labels 1, 2, ... in file order, named as in the file (where segments
    overlap, the later one takes the voxel); a label map is taken as it is, its labels named by the model.
    """
    if volume_suffix(path) != ".seg.nrrd":
        return _label_file(path, image_grid, "label map"), None
    segments, affine = read_segmentation(path)
    labels = np.zeros(next(iter(segments.values())).shape, np.int64)
    for label, mask in enumerate(segments.values(), start=1):
        labels[mask] = label
    names = dict(enumerate(segments, start=1))
    return _carried(labels, Grid(labels.shape, affine), image_grid, path, "label map"), names


def _carried(labels: np.ndarray, grid: Grid, image_grid: Grid, path, what: str) -> np.ndarray:
    """``labels`` on the image's grid; refused when labelled voxels exist but none lies inside the image."""
    moved = transfer(labels, grid, image_grid)
    if labels.any() and not moved.any():
        raise UsageError(
            f"The {what} {path} does not overlap the image: none of its labelled voxels lies inside the "
            "image's volume (in RAS). Was it drawn on another image, or saved without its geometry?"
        )
    return moved


# ------------------------------------------------------------------------------------------------ the tasks


def _explanation(request: dict, progress: Callable[[int, int], None] | None) -> Explanation:
    """Load everything and explain: the part that runs in the background thread."""
    image, affine, model, options = _load(request)
    target = request["target"]
    if isinstance(target, str) and "," in target:
        target = target.split(",")
    targets = [target] if not isinstance(target, (list, tuple)) else list(target)
    indices = [model.class_index(t) for t in targets]
    image_grid = Grid(image.shape[:3], affine)
    reference = _reference(
        request.get("reference"), request.get("reference_segment"), {i: model.classes[i] for i in indices}, image_grid
    )
    roi = _roi(request.get("roi"), image_grid)
    labelmap, organ_names = None, None
    if request.get("labelmap") is not None:
        if options.get("features", "slic") not in ORGAN_FEATURES:
            raise ArgumentError("labelmap", f"{{argument}} makes organ features: ask for one of {ORGAN_FEATURES}.")
        labelmap, organ_names = _organ_label_map(request["labelmap"], image_grid)
    batch_size = options.pop("batch_size", DEFAULT_BATCH_SIZE)
    return halving_batch_on_oom(
        lambda batch: explain(
            model,
            image,
            target=target,
            reference=reference,
            roi=roi,
            labelmap=labelmap,
            organ_names=organ_names,
            affine=affine,
            progress=progress,
            batch_size=batch,
            **options,
        ),
        batch_size,
    )


def explain_and_save(
    request: dict, progress: Callable[[int, int], None] | None, log: logging.Logger
) -> tuple[Explanation, dict[str, str]]:
    """Carry out an ``explain`` request: the explanation, and its output files by name (absolute paths)."""
    explanation = compute_in_background(lambda: _explanation(request, progress))
    log.info("Writing outputs to %s", request["out"])
    volume_format = ".nrrd" if volume_suffix(request["image"]) in NRRD_SUFFIXES else ".nii.gz"
    outputs = explanation.save(request["out"], volume_format=volume_format, slices=request.get("slices", False))
    return explanation, {name: str(path.absolute()) for name, path in outputs.items()}


def segment(request: dict) -> dict:
    """Carry out a ``segment`` request: the model's segmentation of the image, saved as a label map on the
    image's grid. Returns the fields of the worker's ``done`` event."""
    return compute_in_background(lambda: _segmentation(request))


def _segmentation(request: dict) -> dict:
    image, affine, model, options = _load(request)
    unused = set(options) - {"device", "batch_size"}
    if unused:
        raise UsageError(f"Option(s) {sorted(unused)} do not apply to segmenting; give device and batch_size only.")
    logging.getLogger("segshap").info("Segmenting with the model")
    labels = halving_batch_on_oom(
        lambda batch: predict(model, image, device=options["device"], batch_size=batch, affine=affine),
        options.get("batch_size", DEFAULT_BATCH_SIZE),
    )
    name = "segmentation" + (".nrrd" if volume_suffix(request["image"]) in NRRD_SUFFIXES else ".nii.gz")
    with StagedOutput(request["out"]) as staging:
        write_image(staging / name, labels, affine)
    present = sorted(int(v) for v in np.unique(labels))
    return {
        "outputs": {"segmentation": str((Path(request["out"]) / name).absolute())},
        "classes": {str(index): model.classes[index] for index in present if index in model.classes},
        "summary": f"{len(present)} label(s) present: {', '.join(model.classes.get(i, str(i)) for i in present)}",
    }


def describe(request: dict) -> dict:
    """Carry out a ``describe`` request: what the worker knows of a model and of the machine, without an image.
    Returns the fields of the worker's ``done`` event."""
    return compute_in_background(lambda: _description(request))


def _description(request: dict) -> dict:
    device = (request.get("options") or {}).get("device", "auto")
    model = _load_model(request, device)
    cuda = torch.cuda.is_available()
    description = {
        "format": model.format,
        "classes": {str(index): name for index, name in model.classes.items()},
        "in_channels": model.in_channels,
        "patch_size": list(model.patch_size),
        "tiling": model.tiling,
        "folds": model.folds,
        "device": str(resolve_device(device)),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    }
    return {"model": description, "summary": f"{model.format} model, classes: {', '.join(model.classes.values())}"}


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
                    "The GPU ran out of memory even with one window at a time; run on the CPU (device 'cpu'), or "
                    "close what else uses the GPU and try again."
                ) from None
            batch_size = max(1, batch_size // 2)
            log.warning("The GPU ran out of memory; trying again with %d window(s) per batch.", batch_size)


def compute_in_background(work: Callable[[], object]) -> object:
    """Run ``work`` in a thread and return what it returns (or raise what it raised); the calling thread stays
    free to take signals."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the calling thread, which reports it
            outcome["error"] = error

    thread = threading.Thread(target=run, name="segshap-compute", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ------------------------------------------------------------------------------------------------ reporting


def summary(explanation: Explanation) -> str:
    """One line on what an explanation cost and how faithful it is."""
    stats = explanation.stats
    forwards = stats.get("faithfulness_forwards", 0)
    curves = "".join(
        f"; {name}: {curves.summary()}" if len(explanation.faithfulness) > 1 else f"; {curves.summary()}"
        for name, curves in zip(explanation.target_names, explanation.faithfulness)
    )
    return (
        f"{len(explanation.feature_ids)} features, {stats['evaluations']} coalitions "
        f"({'exact' if explanation.exact else stats['design']}, stopped by {stats['stop_reason']}), "
        f"{stats['patch_forwards']} patch forwards ({stats['forwards_per_coalition']:.1f} per coalition"
        f"{f', {forwards} of them for the faithfulness curves' if forwards else ''}), "
        f"{stats['seconds']:.1f} s{curves}"
    )


@contextlib.contextmanager
def logging_to(handler: logging.Handler | None):
    """Send the engine's stage messages to ``handler`` for the duration of the block; yields the logger."""
    log = logging.getLogger("segshap")
    if handler is None:
        yield log
        return
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


class Rate:
    """Seconds left, from the pace since the first report (set-up before it does not count)."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None

    def eta(self, done: int, total: int) -> float | None:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        started, done_then = self.first
        if done >= total:
            return 0.0
        if done <= done_then:
            return None
        return (now - started) / (done - done_then) * (total - done)


def format_duration(seconds: float | None) -> str:
    """``"42s"``, ``"3m05s"``; ``"..."`` when not known yet."""
    if seconds is None:
        return "..."
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
