"""The ``segshap`` command line: ``explain``, ``worker`` (the protocol of the Slicer module) and ``demo``.

Every command computes in a background thread while the main thread waits for it, so SIGINT and SIGTERM are
handled within a fraction of a second even while the model runs; outputs are written through
:class:`segshap.io.StagedOutput`, so an interrupted or failed run leaves the output folder as it was. Bad input
(a missing file, an unreadable image, an unknown target, a bad option) ends with one ``segshap: error: ...`` line
(the worker: one ``error`` event) and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .estimator import DESIGNS
from .explain import explain
from .game import BASELINES, FEATURE_KINDS
from .geometry import Grid, transfer
from .inputs import resolve_device
from .io import NRRD_SUFFIXES, StagedOutput, read_image, read_json, read_segmentation, volume_suffix, write_image
from .models import LoadedModel, load_model
from .predict import DEFAULT_BATCH_SIZE, predict
from .values import VALUE_NAMES

__all__ = ["main", "REQUEST_KEYS", "OPTION_KEYS", "TASKS", "halving_batch_on_oom"]

EXIT_USAGE = 2
EXIT_INTERNAL = 1

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
    "out",
    "options",
)
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
TASKS = ("explain", "segment", "describe")
"""What a worker request can ask for: an explanation, the model's segmentation of the image, or the model itself."""
_REQUIRED_KEYS = {
    "explain": {"image", "model", "target", "out"},
    "segment": {"image", "model", "out"},
    "describe": {"model"},
}
DEMO_TARGET = "white_matter"
DEMO_ROI = ((36, 56), (56, 76), (46, 66))
"""Demo ROI (voxels of the 2 mm MNI152 grid): white matter of the left centrum semiovale and the cortex around it."""


class UsageError(Exception):
    """Bad input: reported as one line and exit code 2."""


class OutOfMemory(Exception):
    """The GPU ran out of memory even one window at a time: reported with ``reason: "out_of_memory"``."""


class _Cancelled(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------------------------------------------- the job


def _resources() -> Path:
    """``Resources/`` beside the module (Slicer install) or at the repository's top (source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "Resources", here.parent.parent / "Resources"):
        if (candidate / "Models").is_dir():
            return candidate
    raise UsageError(f"The demo's model and image were not found in a Resources folder near {here}.")


def _parse_roi(text, image_grid: Grid):
    """A box ``x0:x1,y0:y1,z0:z1`` (image voxels), a list of pairs, or a mask file (placed by its geometry)."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return tuple(tuple(int(v) for v in pair) for pair in text)
    if ":" in text and not Path(text).exists():
        try:
            return tuple(tuple(int(v) for v in part.split(":")) for part in text.split(","))
        except ValueError:
            raise UsageError(f"--roi {text!r} is not a box x0:x1,y0:y1,z0:z1 nor an existing mask file.") from None
    if volume_suffix(text) == ".seg.nrrd":
        segments, affine = read_segmentation(text)
        mask = np.logical_or.reduce(list(segments.values()))
    else:
        mask, affine = read_image(text)
        if mask.ndim != 3:
            raise UsageError(f"The ROI mask {text} has shape {mask.shape}; give a 3D mask (non-zero inside).")
    return transfer(mask > 0, Grid(mask.shape, affine), image_grid)


def _read_reference(path, segment: str | None, targets: dict[int, str], image_grid: Grid):
    """The reference on the image's grid: a mask for one target, a label map (``t`` marks target ``t``) for several.

    A ``.seg.nrrd`` gives its segments by name: ``segment`` names the one to use, else each target's segment is
    the one named like the target's class (or the only segment). A label map marks target ``t`` with ``t``; for
    one target a 0/1 file is the segment itself.
    """
    if segment is not None and (path is None or volume_suffix(path) != ".seg.nrrd"):
        raise UsageError("--reference-segment picks a segment of a .seg.nrrd reference; give one with --reference.")
    if path is None:
        return None
    if volume_suffix(path) == ".seg.nrrd":
        segments, affine = read_segmentation(path)
        grid = Grid(next(iter(segments.values())).shape, affine)
        by_name = {name.lower(): mask for name, mask in segments.items()}

        def pick(name: str):
            if name.lower() not in by_name:
                raise UsageError(
                    f"The reference {path} has no segment named {name!r}; its segments are "
                    f"{', '.join(repr(n) for n in segments)}. Choose one with --reference-segment."
                )
            return _carried(by_name[name.lower()], grid, image_grid, path)

        if segment is not None:
            if len(targets) > 1:
                raise UsageError(
                    "--reference-segment names one segment; with several targets, name the segments "
                    "after the targets' classes instead."
                )
            return pick(segment)
        if len(targets) == 1 and len(segments) == 1:
            return _carried(next(iter(segments.values())), grid, image_grid, path)
        if len(targets) == 1:
            return pick(next(iter(targets.values())))
        labels = np.zeros(image_grid.shape, np.int64)
        for index, name in targets.items():
            labels[pick(name)] = index
        return labels
    data, affine = read_image(path)
    if data.ndim != 3 or not np.array_equal(data, np.round(data)) or data.min() < 0:
        raise UsageError(f"The reference {path} must be a 3D segmentation (non-negative integer labels).")
    labels = _carried(data.astype(np.int64), Grid(data.shape, affine), image_grid, path)
    return labels > 0 if len(targets) == 1 and labels.max() <= 1 else labels


def _carried(labels: np.ndarray, grid: Grid, image_grid: Grid, path) -> np.ndarray:
    """``labels`` on the image's grid; refused when labelled voxels exist but none lies inside the image."""
    moved = transfer(labels, grid, image_grid)
    if labels.any() and not moved.any():
        raise UsageError(
            f"The reference {path} does not overlap the image: none of its labelled voxels lies inside the "
            "image's volume (in RAS). Was it drawn on another image, or saved without its geometry?"
        )
    return moved


def _load(job: dict) -> tuple[np.ndarray, np.ndarray, LoadedModel, dict]:
    """The image, its affine, the model and the options of a job (``device`` among them, validated)."""
    options = dict(job.get("options") or {})
    unknown = set(options) - set(OPTION_KEYS)
    if unknown:
        raise UsageError(f"Unknown option(s) {sorted(unknown)}; known: {', '.join(OPTION_KEYS)}.")
    options.setdefault("device", "auto")
    image, affine = read_image(job["image"])
    model = _load_model(job, options["device"])
    if image.ndim == 4 and image.shape[3] != model.in_channels:
        raise UsageError(
            f"{job['image']} has {image.shape[3]} channels (shape {image.shape}) but the model takes "
            f"{model.in_channels}; pass a 3D image (one volume of the series), e.g. exported from 3D Slicer."
        )
    return image, affine, model, options


def _load_model(job: dict, device: str) -> LoadedModel:
    return load_model(job["model"], config=job.get("model_config"), trust=bool(job.get("trust_model")), device=device)


def _run(job: dict, progress: Callable[[int, int], None] | None) -> object:
    """Load everything and explain: the part that runs in the background thread. Returns the explanation."""
    image, affine, model, options = _load(job)
    target = job["target"]
    if isinstance(target, str) and "," in target:
        target = target.split(",")
    targets = [target] if not isinstance(target, (list, tuple)) else list(target)
    indices = [model.class_index(t) for t in targets]
    image_grid = Grid(image.shape[:3], affine)
    reference = _read_reference(
        job.get("reference"), job.get("reference_segment"), {i: model.classes[i] for i in indices}, image_grid
    )
    roi = _parse_roi(job.get("roi"), image_grid)
    batch_size = options.pop("batch_size", DEFAULT_BATCH_SIZE)
    return halving_batch_on_oom(
        lambda batch: explain(
            model,
            image,
            target=target,
            reference=reference,
            roi=roi,
            affine=affine,
            progress=progress,
            batch_size=batch,
            **options,
        ),
        batch_size,
    )


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


def _segment(job: dict) -> dict:
    """The model's segmentation of the image, saved as a label map on the image's grid; the ``done`` fields."""
    image, affine, model, options = _load(job)
    unused = set(options) - {"device", "batch_size"}
    if unused:
        raise UsageError(f"Option(s) {sorted(unused)} do not apply to segmenting; give device and batch_size only.")
    logging.getLogger("segshap").info("Segmenting with the model")
    labels = halving_batch_on_oom(
        lambda batch: predict(model, image, device=options["device"], batch_size=batch, affine=affine),
        options.get("batch_size", DEFAULT_BATCH_SIZE),
    )
    name = "segmentation" + (".nrrd" if volume_suffix(job["image"]) in NRRD_SUFFIXES else ".nii.gz")
    with StagedOutput(job["out"]) as staging:
        write_image(staging / name, labels, affine)
    present = sorted(int(v) for v in np.unique(labels))
    return {
        "outputs": {"segmentation": str((Path(job["out"]) / name).absolute())},
        "classes": {str(index): model.classes[index] for index in present if index in model.classes},
        "summary": f"{len(present)} label(s) present: {', '.join(model.classes.get(i, str(i)) for i in present)}",
    }


def _describe(job: dict) -> dict:
    """What the worker knows of a model and of the machine, without an image; the ``done`` fields."""
    device = (job.get("options") or {}).get("device", "auto")
    model = _load_model(job, device)
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


def _compute_in_background(work: Callable[[], object]) -> object:
    """Run ``work`` in a thread; the main thread stays free to take signals."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the main thread, which reports it
            outcome["error"] = error

    thread = threading.Thread(target=run, name="segshap-compute", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---------------------------------------------------------------------------------------------------- reporting


class _ProgressBar:
    """A one-line bar with percentage and ETA on a terminal; a line per 10 % otherwise."""

    def __init__(self, stream) -> None:
        self.stream, self.rate, self.last_tenth = stream, _Rate(), -1
        self.terminal = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        eta = self.rate.eta(done, total)
        percent = 100.0 * done / max(total, 1)
        text = f"{percent:5.1f}% {done}/{total} window forwards, ETA {'...' if eta is None else _duration(eta)}"
        if self.terminal:
            filled = int(percent / 4)
            self.stream.write(f"\r|{'#' * filled}{' ' * (25 - filled)}| {text}   ")
            if done >= total:
                self.stream.write("\n")
        elif int(percent // 10) > self.last_tenth:
            self.last_tenth = int(percent // 10)
            self.stream.write(text + "\n")
        self.stream.flush()


class _Rate:
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _EventWriter:
    """The worker protocol: one JSON object per line on the real stdout."""

    def __init__(self, stream) -> None:
        self.stream, self.lock, self.rate = stream, threading.Lock(), _Rate()

    def emit(self, event: str, **fields) -> None:
        with self.lock:
            self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            self.stream.flush()

    def progress(self, done: int, total: int) -> None:
        eta = self.rate.eta(done, total)
        self.emit("progress", done=done, total=total, eta_s=None if eta is None else round(eta, 1))


class _EventLogHandler(logging.Handler):
    def __init__(self, events: _EventWriter) -> None:
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.emit("log", level=record.levelname.lower(), message=record.getMessage())


def _faithfulness_share(stats: dict) -> str:
    forwards = stats.get("faithfulness_forwards", 0)
    return f", {forwards} of them for the faithfulness curves" if forwards else ""


def _summary(explanation) -> str:
    stats = explanation.stats
    return (
        f"{len(explanation.feature_ids)} features, {stats['evaluations']} coalitions "
        f"({'exact' if explanation.exact else stats['design']}, stopped by {stats['stop_reason']}), "
        f"{stats['patch_forwards']} patch forwards ({stats['forwards_per_coalition']:.1f} per coalition"
        f"{_faithfulness_share(stats)}), "
        f"{stats['seconds']:.1f} s"
        + "".join(
            f"; {name}: {curves.summary()}" if len(explanation.faithfulness) > 1 else f"; {curves.summary()}"
            for name, curves in zip(explanation.target_names, explanation.faithfulness)
        )
    )


# ---------------------------------------------------------------------------------------------------- commands


def _explain_job(args: argparse.Namespace) -> dict:
    options = {key: getattr(args, key) for key in OPTION_KEYS if getattr(args, key) is not None}
    return {
        "image": args.image,
        "model": args.model,
        "model_config": args.model_config,
        "trust_model": args.trust_model,
        "target": args.target,
        "reference": args.reference,
        "reference_segment": args.reference_segment,
        "roi": args.roi,
        "out": args.out,
        "options": options,
        "slices": args.slices,
    }


def _demo_job(args: argparse.Namespace) -> dict:
    resources = _resources()
    options = {"device": args.device}
    if args.n_features is not None:
        options["n_features"] = args.n_features
    return {
        "image": str(resources / "Demo" / "mni152_t1_2mm.nii.gz"),
        "model": str(resources / "Models" / "demo_gmwm.pt"),
        "model_config": None,
        "target": DEMO_TARGET,
        "reference": None,
        "roi": [list(pair) for pair in DEMO_ROI],
        "out": args.out,
        "options": options,
        "slices": None,  # when slicer-core is installed
    }


def _explain_and_save(job: dict, progress, log: logging.Logger) -> tuple[object, dict]:
    explanation = _compute_in_background(lambda: _run(job, progress))
    log.info("Writing outputs to %s", job["out"])
    volume_format = ".nrrd" if volume_suffix(job["image"]) in NRRD_SUFFIXES else ".nii.gz"
    outputs = explanation.save(job["out"], volume_format=volume_format, slices=job.get("slices", False))
    return explanation, {name: str(path.absolute()) for name, path in outputs.items()}


@contextlib.contextmanager
def _logging_to(handler: logging.Handler | None):
    """Send the engine's stage messages to ``handler`` for the duration of one command."""
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


def _command_explain(job: dict, quiet: bool) -> int:
    handler = None
    if not quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("segshap: %(message)s"))
    with _logging_to(handler) as log:
        explanation, outputs = _explain_and_save(job, None if quiet else _ProgressBar(sys.stderr), log)
    print(f"Explained {', '.join(explanation.target_names)}: {_summary(explanation)}")
    print(f"Outputs in {Path(job['out']).absolute()}:")
    for name, path in outputs.items():
        print(f"  {name:9s} {path}")
    return 0


def _read_request(path: str) -> dict:
    request_path = Path(path)
    job = read_json(request_path, "request file")
    task = job.get("task", "explain")
    if task not in TASKS:
        raise UsageError(f"The request {request_path} asks for task {task!r}; tasks: {', '.join(TASKS)}.")
    unknown = set(job) - set(REQUEST_KEYS)
    missing = _REQUIRED_KEYS[task] - set(job)
    if unknown or missing:
        raise UsageError(
            f"The request {request_path} has unknown keys {sorted(unknown)} or misses {sorted(missing)}; "
            f"keys: {', '.join(REQUEST_KEYS)} ({', '.join(sorted(_REQUIRED_KEYS[task]))} required for {task})."
        )
    return job


def _command_worker(request: str, events: _EventWriter, parent_pid: int | None = None) -> int:
    _exit_with_parent(parent_pid)
    job = _read_request(request)
    events.emit("log", level="info", message=f"segshap worker, pid {os.getpid()}")
    with _logging_to(_EventLogHandler(events)) as log:
        task = job.get("task", "explain")
        if task == "describe":
            fields = _compute_in_background(lambda: _describe(job))
        elif task == "segment":
            fields = _compute_in_background(lambda: _segment(job))
        else:
            explanation, outputs = _explain_and_save(job, events.progress, log)
            fields = {"outputs": outputs, "summary": _summary(explanation)}
    events.emit("done", **fields)
    return 0


def _exit_with_parent(parent_pid: int | None = None, poll_s: float = 1.0) -> None:
    """End the worker when the process that started it is gone (e.g. 3D Slicer crashed or killed a launcher).

    The launcher passes its pid (``--parent-pid``) and the worker ends once no live process has it. That is
    race-free: a launcher that died while the worker was still starting (importing torch can take seconds on a
    busy machine) is noticed at once, and it holds when a launcher such as ``PythonSlicer`` stands in between.
    Without a pid, POSIX's re-parenting of orphans is watched: a parent id other than the one at start-up. Elsewhere
    than POSIX this watches nothing.
    """
    if os.name != "posix":
        return
    if parent_pid is None:
        first = os.getppid()

        def gone() -> bool:
            return os.getppid() != first
    else:

        def gone() -> bool:
            return not _alive(parent_pid)

    if gone():
        os._exit(128 + signal.SIGTERM)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if gone():
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="segshap-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie (dead, waiting for its parent to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:  # no /proc (macOS): existence is all there is to know
        return True
    return state not in ("Z", "X")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="segshap", description="Explain 3D segmentation models with exact, efficient KernelSHAP.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    command = commands.add_parser("explain", help="explain a model's segmentation of a target")
    command.add_argument("--image", required=True, help="input image (NIfTI or NRRD)")
    command.add_argument(
        "--model",
        required=True,
        help="TorchScript file (.pt/.ts) with a JSON sidecar, MONAI bundle folder or nnU-Net v2 model folder",
    )
    command.add_argument(
        "--model-config", help="TorchScript: the JSON sidecar, if not beside the model; nnU-Net: a JSON of options"
    )
    command.add_argument(
        "--trust-model",
        dest="trust_model",
        action="store_true",
        help="allow a MONAI bundle, whose config can run code: only for bundles you trust",
    )
    command.add_argument("--target", required=True, help="class index or name (several: comma-separated)")
    command.add_argument(
        "--reference",
        help="segmentation of the target (.seg.nrrd, NIfTI or NRRD label map); default: the model's prediction",
    )
    command.add_argument(
        "--reference-segment",
        dest="reference_segment",
        help="the segment of a .seg.nrrd to use (default: the one named like the target)",
    )
    command.add_argument("--roi", help="region values are read on: x0:x1,y0:y1,z0:z1 (voxels) or a mask file")
    command.add_argument("--out", required=True, help="output folder")
    command.add_argument("--features", choices=FEATURE_KINDS, default="slic")
    command.add_argument("--n-features", dest="n_features", type=int, help="about how many features (default 100)")
    command.add_argument("--value", choices=VALUE_NAMES, help="value function (default soft_dice)")
    command.add_argument("--nsamples", type=_nsamples, help="coalitions to evaluate, or 'auto' (default)")
    command.add_argument("--tolerance", type=float, help="stop once max stderr / value spread falls below this")
    command.add_argument("--design", choices=DESIGNS, help="coalition design (default auto)")
    command.add_argument(
        "--max-forwards", dest="max_forwards", type=int, help="stop sampling before this many window forwards"
    )
    command.add_argument(
        "--max-seconds",
        dest="max_seconds",
        type=float,
        help="stop sampling before the estimation runs this many seconds",
    )
    command.add_argument(
        "--slices",
        action="store_true",
        help="also write slices.png: the views as 3D Slicer draws them (needs slicer-core)",
    )
    command.add_argument(
        "--no-faithfulness",
        dest="faithfulness",
        action="store_const",
        const=False,
        help="skip the deletion and insertion curves computed after the values",
    )
    command.add_argument("--baseline", type=_baseline, help=f"{', '.join(BASELINES)} or a number (default mean)")
    command.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    command.add_argument("--seed", type=int)
    command.add_argument("--batch-size", dest="batch_size", type=int, help="windows per forward pass")
    command.add_argument("--margin", type=int, help="voxels around the target's box when no --roi is given")
    command.add_argument("--quiet", action="store_true", help="no progress bar or log lines")

    worker = commands.add_parser("worker", help="run a request file, reporting JSON events on stdout")
    worker.add_argument("--request", required=True, help="request JSON (see README: worker protocol)")
    worker.add_argument(
        "--parent-pid",
        dest="parent_pid",
        type=int,
        help="pid of the launching process: the worker ends as soon as it is gone",
    )

    demo = commands.add_parser("demo", help="explain the embedded demo model on the embedded MRI")
    demo.add_argument("--out", default="segshap-demo", help="output folder (default ./segshap-demo)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    demo.add_argument("--n-features", dest="n_features", type=int, help="about how many supervoxels (default 100)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    return parser


def _nsamples(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


def _baseline(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segshap`` command; returns the exit code."""
    real_stdout = sys.stdout
    arguments = sys.argv[1:] if argv is None else argv
    is_worker = bool(arguments) and arguments[0] == "worker"
    events = _EventWriter(real_stdout) if is_worker else None
    if is_worker:
        sys.stdout = sys.stderr  # the protocol owns stdout: anything else printed goes to stderr

    def interrupt(signum, frame):
        raise _Cancelled(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    debug = "--debug" in arguments
    try:
        args = _parser().parse_args(arguments)
        if args.command == "explain":
            return _command_explain(_explain_job(args), args.quiet)
        if args.command == "demo":
            return _command_explain(_demo_job(args), args.quiet)
        return _command_worker(args.request, events, args.parent_pid)
    except _Cancelled as cancelled:
        sys.stderr.write(f"segshap: cancelled ({cancelled}); no outputs were written\n")
        sys.stderr.flush()
        # The compute thread may be inside the model; end the process without waiting for it.
        os._exit(128 + cancelled.signum)
    except OutOfMemory as error:
        return _fail(events, str(error), EXIT_INTERNAL, debug, reason="out_of_memory")
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        return _fail(events, str(error), EXIT_USAGE, debug)
    except Exception as error:  # anything else is a bug: still one line, the traceback only with --debug
        message = f"internal error: {error.__class__.__name__}: {error} (run with --debug for the traceback)"
        return _fail(events, message, EXIT_INTERNAL, debug)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stdout = real_stdout


def _fail(events: _EventWriter | None, message: str, code: int, debug: bool, reason: str | None = None) -> int:
    if debug:
        traceback.print_exc()
    if events is not None:
        events.emit("error", message=message, **({"reason": reason} if reason else {}))
    else:
        sys.stderr.write(f"segshap: error: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
