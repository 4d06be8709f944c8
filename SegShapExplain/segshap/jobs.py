"""The tasks a request can ask for (:data:`segshap.request.TASKS`), carried out for the command line and the worker
alike: an explanation saved to its folder, the model's segmentation, a description of the model, and a cohort.

Each runs its work in a background thread (:func:`run_in_background`; a cohort in Ray's workers), so the main
thread stays free to take signals. **A new worker task goes here** (and into ``TASKS`` and ``worker.py``'s
dispatch).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .anytime import Stop, Update
from .cohort import COHORT_FEATURES, explain_cohort
from .explanation import Explanation
from .inference import predict
from .inputs import resolve_device
from .io import write_image
from .live import StopRequest, stop_when_stable
from .options import ExplainOptions
from .processes import run_in_background
from .request import (
    UsageError,
    explain_request,
    halving_batch_on_oom,
    load_inputs,
    load_model_of,
    request_targets,
    volume_format_of,
)
from .staging import StagedOutput, output_folder

__all__ = ["explain_and_save", "segment", "describe", "torch_facts", "cohort_from_request"]

_SEGMENT_OPTIONS = frozenset({"device", "batch_size"})


def explain_and_save(
    request: dict,
    progress: Callable[[int, int], None] | None,
    log: logging.Logger,
    on_update: Callable[[Update], bool | None] | None = None,
) -> tuple[Explanation, dict[str, str]]:
    """Carry out an ``explain`` request: the explanation, and its output files by name (absolute paths).

    ``on_update`` gets the live estimates (:class:`segshap.Update`) every ``update_every`` seconds of the request;
    its ``stop_file`` and SIGUSR1 stop the sampling and its ``stop_when_stable`` stops it once the top 10 hold
    still (:mod:`segshap.live`), the run finishing with the last estimate given."""
    output_folder(request["out"])  # refused before the work, not after it
    if on_update is not None and request.get("stop_when_stable"):
        on_update = stop_when_stable(on_update, request["stop_when_stable"])
    stop = Stop()
    with StopRequest(request.get("stop_file"), stop):
        explanation = run_in_background(lambda: explain_request(request, progress, on_update, stop))
    log.info("Writing outputs to %s", request["out"])
    outputs = explanation.save(
        request["out"], volume_format=volume_format_of(request), slices=request.get("slices", False)
    )
    return explanation, {name: str(path.absolute()) for name, path in outputs.items()}


def segment(request: dict) -> dict:
    """Carry out a ``segment`` request: the model's segmentation of the image, saved as a label map on the
    image's grid. Returns the fields of the worker's ``done`` event."""
    return run_in_background(lambda: _segmentation(request))


def _segmentation(request: dict) -> dict:
    unused = set(request.get("options") or {}) - _SEGMENT_OPTIONS
    if unused:
        raise UsageError(f"Option(s) {sorted(unused)} do not apply to segmenting; give device and batch_size only.")
    output_folder(request["out"])
    image, affine, model, options = load_inputs(request)
    logging.getLogger("segshap").info("Segmenting with the model")
    labels = halving_batch_on_oom(
        lambda batch: predict(model, image, device=options.device, batch_size=batch, affine=affine),
        options.batch_size,
    )
    name = "segmentation" + volume_format_of(request)
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

    Returns the fields of the worker's ``done`` event: ``model`` (``format``, ``classes``, ``in_channels``,
    ``patch_size``, ``tiling``, ``folds``, ``device``, ``cuda_devices``), ``torch`` (:func:`torch_facts`) and
    ``summary``.
    """
    return run_in_background(lambda: _description(request))


def _description(request: dict) -> dict:
    device = ExplainOptions.from_dict(request.get("options")).device
    model = load_model_of(request, device)
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
    return {
        "model": description,
        "torch": torch_facts(),
        "summary": f"{model.format} model, classes: {', '.join(model.classes.values())}",
    }


def torch_facts() -> dict:
    """The worker's PyTorch and what it can do with the machine's GPUs, for the panel to tell why it cannot use one
    (``SegShapExplainLib.dependencies.torchGpuMessage`` words it).

    Returns
    -------
    dict
        ``version``; ``cuda``: the CUDA version PyTorch was built for (``None`` for a CPU-only build);
        ``cuda_available``; ``unsupported_gpus``: the GPUs it sees but was not built for (``name``, ``capability``
        as ``"sm_120"``); ``nvidia_gpus``: the GPUs the NVIDIA driver lists when PyTorch sees none (empty without a
        driver), ``None`` when PyTorch sees GPUs.
    """
    available = torch.cuda.is_available()
    unsupported = []
    if available:
        arches = torch.cuda.get_arch_list()
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            if not _built_for(major, minor, arches):
                unsupported.append({"name": torch.cuda.get_device_name(index), "capability": f"sm_{major}{minor}"})
    return {
        "version": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cuda_available": available,
        "unsupported_gpus": unsupported,
        "nvidia_gpus": None if available else _nvidia_gpus(),
    }


def _built_for(major: int, minor: int, arches: list[str]) -> bool:
    """Whether a PyTorch built for ``arches`` (``torch.cuda.get_arch_list()``) runs on a GPU of compute capability
    ``major.minor``: an ``sm_XY`` binary runs on GPUs of major version X and minor version Y or higher, ``compute_XY``
    code is compiled when loaded for any GPU of capability X.Y or higher. An empty list tells nothing: it may."""
    for arch in arches:
        match = re.fullmatch(r"(sm|compute)_(\d+)[a-z]?", arch)
        if match is None:
            continue
        built = divmod(int(match.group(2)), 10)
        if built <= (major, minor) and (match.group(1) == "compute" or built[0] == major):
            return True
    return not arches


def _nvidia_gpus() -> list[str]:
    """The GPUs the NVIDIA driver lists (``nvidia-smi -L``); empty without the driver's tool or when it fails."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        listing = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):  # a driver in a bad state fails or hangs: no GPU to use
        return []
    # "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-...)"; MIG instances follow, indented.
    return [
        line.split(":", 1)[1].split(" (UUID", 1)[0].strip() for line in listing.splitlines() if line.startswith("GPU ")
    ]


def cohort_from_request(
    request: dict,
    progress: Callable[[int, int], None] | None = None,
    on_case: Callable[[str, str | None], None] | None = None,
) -> tuple[object, dict]:
    """Carry out a ``cohort`` request with :func:`segshap.explain_cohort` (Ray, on a local instance unless the
    request names a cluster's ``address``).

    Parameters
    ----------
    request : dict
        The request: ``manifest``, ``model``, ``target`` (a list, or names separated by commas) and ``out``;
        optionally ``model_config``, ``trust_model``, ``address``, ``gpus_per_case``, ``resume`` and ``options``
        (``features`` default ``"organs"``).
    progress, on_case : callable, optional
        As for :func:`segshap.explain_cohort`.

    Returns
    -------
    result : segshap.cohort.CohortResult
    fields : dict
        The ``done`` event's fields: ``outputs`` (the aggregated files and ``cases/`` by name, absolute),
        ``cases`` (how many are complete), ``failed`` (case id to reason) and ``summary`` (one line).
    """
    options = {"features": COHORT_FEATURES, **(request.get("options") or {})}
    result = explain_cohort(
        request["manifest"],
        request["model"],
        targets=request_targets(request["target"]),
        out=request["out"],
        address=request.get("address"),
        gpus_per_case=request.get("gpus_per_case"),
        resume=request.get("resume", True),
        progress=progress,
        on_case=on_case,
        model_config=request.get("model_config"),
        trust_model=request.get("trust_model", False),
        options=ExplainOptions.from_dict(options),
    )
    return result, {
        "outputs": result.outputs,
        "cases": result.cases,
        "failed": result.failed,
        "summary": result.summary,
    }
