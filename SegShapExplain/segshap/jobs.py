"""The tasks a request can ask for (:data:`segshap.request.TASKS`), carried out for the command line and the worker
alike: an explanation saved to its folder, the model's segmentation, a description of the model, and a cohort.

Each runs its work in a background thread (:func:`run_in_background`; a cohort in Ray's workers), so the main
thread stays free to take signals. **A new worker task goes here** (and into ``TASKS`` and ``worker.py``'s
dispatch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .cohort import COHORT_FEATURES, explain_cohort
from .explanation import Explanation
from .inference import predict
from .inputs import resolve_device
from .io import write_image
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

__all__ = ["explain_and_save", "segment", "describe", "cohort_from_request"]

_SEGMENT_OPTIONS = frozenset({"device", "batch_size"})


def explain_and_save(
    request: dict, progress: Callable[[int, int], None] | None, log: logging.Logger
) -> tuple[Explanation, dict[str, str]]:
    """Carry out an ``explain`` request: the explanation, and its output files by name (absolute paths)."""
    output_folder(request["out"])  # refused before the work, not after it
    explanation = run_in_background(lambda: explain_request(request, progress))
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
    Returns the fields of the worker's ``done`` event."""
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
    return {"model": description, "summary": f"{model.format} model, classes: {', '.join(model.classes.values())}"}


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
