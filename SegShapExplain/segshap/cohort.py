"""Cohorts: explanations of many cases as Ray tasks, and their aggregation across the cohort.

:func:`explain_cohort` runs one Ray task per case (all its targets from the same forwards), on a local Ray
instance started for the run or on an existing cluster. The model's files travel once through Ray's object store.
Each case is written into a staging folder and renamed to ``OUT/cases/<case_id>/`` when complete, so a case folder
exists only when the case is whole; a rerun with ``resume`` skips those. A failing case is retried once, then
recorded in ``OUT/failed.csv`` with a one-line reason, and the other cases go on. :func:`aggregate` rebuilds
``OUT/cohort.csv``, ``OUT/cohort.json`` and ``OUT/cohort.png`` from the case folders. Ray is the optional extra
``segshap[cohort]``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import logging
import os
import shutil
import signal
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .figure import cohort_figure
from .game import ORGAN_FEATURES
from .io import StagedOutput
from .jobs import OPTION_KEYS, UsageError
from .manifest import Case, read_manifest
from .models.torchscript import sidecar_candidates
from .processes import descendants, process_alive

__all__ = ["explain_cohort", "aggregate", "cohort_from_request", "CohortResult", "COHORT_COLUMNS"]

COHORT_COLUMNS = ("case_id", "target", "feature", "organ", "value", "stderr", "voxels", "normalised")
"""The columns of ``cohort.csv``: one row per case, target and feature. ``normalised`` is the value divided by the
case's ``full_value - base_value`` for that target, so cases of different size compare."""

_CASES = "cases"
_STAGING = ".staging"
_FAILED = "failed.csv"
_PER_CASE_SETTINGS = ("roi_box", "support_box")
_WORKER_EXIT_SECONDS = 3.0
_log = logging.getLogger("segshap")


@dataclass
class CohortResult:
    """What a cohort run produced, read back from its output folder.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per case, target and feature (:data:`COHORT_COLUMNS`).
    failed : dict of str to str
        Case id to a one-line reason, for the cases that failed twice.
    out : Path
        The output folder.
    """

    table: object
    failed: dict[str, str] = field(default_factory=dict)
    out: Path | None = None

    @property
    def cases(self) -> int:
        """How many cases are complete."""
        return int(self.table["case_id"].nunique()) if len(self.table) else 0

    @property
    def summary(self) -> str:
        """One line: how many cases are complete, and the failures with their reasons."""
        failures = "; ".join(f"{case}: {reason}" for case, reason in self.failed.items())
        return f"Cohort: {self.cases} case(s) explained, {len(self.failed)} failed" + (
            f": {failures}" if failures else ""
        )

    def matrix(self, target: str) -> object:
        """Per organ, the ``mean``, ``sd`` and ``n`` across cases of the normalised values for one target (organ
        features only: other features do not correspond from case to case)."""
        rows = self.table[self.table["target"] == target]
        if rows.empty:
            known = sorted(self.table["target"].unique())
            raise ValueError(f"No rows for target {target!r}; the cohort's targets are {known}.")
        if rows["organ"].eq("").all():
            raise ValueError("matrix() needs organ features (features='organs'): supervoxels differ from case to case.")
        grouped = rows.groupby("organ")["normalised"]
        return grouped.agg(mean="mean", sd="std", n="count").sort_values("mean", ascending=False)

    def organ_matrix(self) -> object:
        """Target class x input organ: the mean normalised attribution across cases (organ features only)."""
        if self.table["organ"].eq("").all():
            raise ValueError("organ_matrix() needs organ features (features='organs').")
        return self.table.pivot_table(index="target", columns="organ", values="normalised", aggfunc="mean")


def explain_cohort(
    cases: str | os.PathLike | Sequence[Case],
    model: str | os.PathLike,
    *,
    targets: str | int | Sequence[str | int],
    features: str = "organs",
    labelmaps: dict[str, str | os.PathLike] | None = None,
    out: str | os.PathLike = "cohort/",
    address: str | None = None,
    gpus_per_case: float | None = None,
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
    on_case: Callable[[str, str | None], None] | None = None,
    model_config: str | os.PathLike | None = None,
    trust_model: bool = False,
    **explain_options,
) -> CohortResult:
    """Explain every case of a cohort on Ray and aggregate the values across it.

    Parameters
    ----------
    cases : path or sequence of Case
        A manifest (see :mod:`segshap.manifest`) or its cases.
    model : path
        The model as :func:`segshap.load_model` takes it (a file with its sidecar, or a folder).
    targets : str, int or sequence
        The target classes, all explained from the same forwards of each case.
    features : str
        As for :func:`segshap.explain`; ``"organs"`` (default) makes the values comparable across cases.
    labelmaps : dict, optional
        Case id to the organ label map of organ features (overrides the manifest's ``labelmap``); default the
        model's prediction.
    out : path
        The output folder: ``cases/<case_id>/`` (as :meth:`Explanation.save` writes), ``failed.csv``,
        ``cohort.csv``, ``cohort.json`` and ``cohort.png``.
    address : str, optional
        A Ray cluster to join (``"auto"``, ``"ray://host:10001"``); default a local instance for this run (or the
        one this process is already connected to).
    gpus_per_case : float, optional
        GPUs each case asks for; default 1 where the cluster has GPUs, else 0.
    resume : bool
        Skip the cases whose folder is complete; ``False`` redoes them.
    progress : callable, optional
        ``progress(done, total)`` over cases, after each case.
    on_case : callable, optional
        ``on_case(case_id, reason)`` as each case ends: ``reason`` is ``None`` for a complete case, else the
        one-line reason it failed.
    model_config, trust_model
        As ``config`` and ``trust`` of :func:`segshap.load_model`.
    **explain_options
        Options of :func:`segshap.explain` (:data:`segshap.jobs.OPTION_KEYS`), the same for every case.

    Returns
    -------
    CohortResult

    Raises
    ------
    UsageError
        Ray or pandas is not installed (the ``cohort`` extra).
    ValueError
        An unknown option, a label map for a case not in the cohort, label maps without organ features, or a bad
        manifest (:class:`segshap.manifest.ManifestError`, every bad row at once).
    FileNotFoundError
        No such model.
    """
    ray = _cohort_dependency("ray")
    _cohort_dependency("pandas")  # aggregation's, checked before any case runs
    unknown = set(explain_options) - set(OPTION_KEYS)
    if unknown:
        raise ValueError(f"Unknown option(s) {sorted(unknown)}; explain_cohort takes {', '.join(OPTION_KEYS)}.")
    cases = read_manifest(cases) if isinstance(cases, (str, os.PathLike)) else list(cases)
    out = Path(out)
    labelmaps = {key: Path(value) for key, value in (labelmaps or {}).items()}
    unknown_cases = set(labelmaps) - {case.case_id for case in cases}
    if unknown_cases:
        raise ValueError(f"labelmaps names case(s) {sorted(unknown_cases)} that are not in the cohort.")
    if features not in ORGAN_FEATURES and (labelmaps or any(case.labelmap is not None for case in cases)):
        raise ValueError(
            f"Label maps make organ features, but features={features!r}: ask for one of {ORGAN_FEATURES}, or drop "
            "the manifest's labelmap column."
        )
    targets = [targets] if isinstance(targets, (str, int)) else list(targets)
    package = _model_package(Path(model), model_config)  # a missing model is refused before anything is written
    settings = {"targets": targets, "trust_model": trust_model, "options": {"features": features, **explain_options}}
    (out / _CASES).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / _STAGING, ignore_errors=True)  # what an interrupted run left
    todo = [case for case in cases if not (resume and (out / _CASES / case.case_id).is_dir())]
    _log.info("Cohort: %d case(s), %d to explain", len(cases), len(todo))

    connected_here = not ray.is_initialized()
    address = None if address in (None, "", "local") else address
    # A local instance started for this run ends with it; a cluster joined (an address) runs on.
    owns_instance = connected_here and address is None
    children_before = set(descendants(os.getpid())) if owns_instance else set()
    if connected_here:
        _init_keeping_signal_handlers(ray, address)
    try:
        failed = _run(
            ray, todo, len(cases), package, settings, labelmaps, out, gpus_per_case, progress, on_case, owns_instance
        )
    finally:
        if owns_instance:
            _shut_down_waiting_for_workers(ray, children_before)
        elif connected_here:
            ray.shutdown()
        shutil.rmtree(out / _STAGING, ignore_errors=True)
    done = {case.case_id for case in cases} - set(failed)
    previous = _read_failed(out) if resume else {}
    failed = {**{k: v for k, v in previous.items() if k not in done}, **failed}
    _write_failed(out, failed)
    return aggregate(out)


def _cohort_dependency(name: str):
    """Ray or pandas, which only cohorts need, or a one-line error saying how to install them."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise UsageError(
            f"Cohorts need {name}, which is not installed ({error}): pip install 'segshap[cohort]'."
        ) from error


def cohort_from_request(
    request: dict,
    progress: Callable[[int, int], None] | None = None,
    on_case: Callable[[str, str | None], None] | None = None,
) -> tuple[CohortResult, dict]:
    """Carry out a ``cohort`` request (see :mod:`segshap.jobs`) with :func:`explain_cohort`.

    Parameters
    ----------
    request : dict
        The request: ``manifest``, ``model``, ``target`` (a list, or names separated by commas) and ``out``;
        optionally ``model_config``, ``trust_model``, ``address``, ``gpus_per_case``, ``resume`` and ``options``
        (``features`` default ``"organs"``).
    progress, on_case : callable, optional
        As for :func:`explain_cohort`.

    Returns
    -------
    result : CohortResult
    fields : dict
        The ``done`` event's fields: ``outputs`` (the aggregated files and ``cases/`` by name, absolute),
        ``cases`` (how many are complete), ``failed`` (case id to reason) and ``summary`` (one line).
    """
    options = dict(request.get("options") or {})
    target = request["target"]
    result = explain_cohort(
        request["manifest"],
        request["model"],
        targets=target.split(",") if isinstance(target, str) else target,
        features=options.pop("features", "organs"),
        out=request["out"],
        address=request.get("address"),
        gpus_per_case=request.get("gpus_per_case"),
        resume=request.get("resume", True),
        progress=progress,
        on_case=on_case,
        model_config=request.get("model_config"),
        trust_model=request.get("trust_model", False),
        **options,
    )
    out = Path(request["out"]).absolute()
    outputs = {name: str(out / f"cohort.{name}") for name in ("csv", "json", "png")}
    outputs["cases"] = str(out / _CASES)
    if result.failed:
        outputs["failed"] = str(out / _FAILED)
    return result, {"outputs": outputs, "cases": result.cases, "failed": result.failed, "summary": result.summary}


def _init_keeping_signal_handlers(ray, address: str | None) -> None:
    """Start a local Ray instance (no ``address``) or join the cluster at ``address``; Ray's core installs its own
    SIGTERM handler, so the caller's (the CLI's clean stop) are put back."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if on_main_thread else {}
    # "local": a new instance even where `ray start` left one (or the address file of one that is gone), which a
    # plain ray.init() would join.
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _shut_down_waiting_for_workers(ray, children_before: set[int]) -> None:
    """Shut this run's own Ray instance down and wait until its processes have ended.

    ``ray.shutdown`` stops the instance but its workers notice on their own time: one in the middle of a case
    could still write into the staging folder after the run removed it. Its processes are this one's descendants
    that were not there before Ray started (``children_before``; Linux: read from ``/proc``); those still there
    after three seconds are killed.
    """
    processes = [pid for pid in descendants(os.getpid()) if pid not in children_before]
    ray.shutdown()
    deadline = time.monotonic() + _WORKER_EXIT_SECONDS
    while any(process_alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in processes:
        if process_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _run(ray, todo, total, package, settings, labelmaps, out, gpus_per_case, progress, on_case, owns_instance) -> dict:
    """Submit one task per case and collect them as they end; returns the failures (case id to reason)."""
    if gpus_per_case is None:
        gpus_per_case = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    package_ref = ray.put(package)
    settings_ref = ray.put(settings)
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_case, max_retries=1, retry_exceptions=True)(_explain_case)
    pending = {}
    for case in todo:
        labelmap = labelmaps.get(case.case_id, case.labelmap)
        ref = task.remote(package_ref, settings_ref, _case_fields(case, labelmap), str(out.absolute()))
        pending[ref] = case.case_id
    failed: dict[str, str] = {}
    finished = total - len(todo)
    if progress is not None:
        progress(finished, total)
    try:
        while pending:
            # A timeout, so that the main thread returns to Python often enough to take a signal.
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not ready:
                continue
            case_id = pending.pop(ready[0])
            try:
                ray.get(ready[0])
                _log.info("Cohort: %s done", case_id)
            except Exception as error:  # a case's failure is recorded, the others go on
                failed[case_id] = _reason(error)
                _log.warning("Cohort: %s failed: %s", case_id, failed[case_id])
            if on_case is not None:
                on_case(case_id, failed.get(case_id))
            finished += 1
            if progress is not None:
                progress(finished, total)
    except BaseException:
        # A local instance started for the run ends with it (ray.shutdown), and its workers with it; cancelling
        # there as well races with the shutdown inside Ray. On a joined cluster the tasks are cancelled.
        if not owns_instance:
            for ref in pending:
                ray.cancel(ref)
        raise
    return failed


def _case_fields(case: Case, labelmap) -> dict:
    return {
        "case_id": case.case_id,
        "image": str(case.image),
        "reference": None if case.reference is None else str(case.reference),
        "labelmap": None if labelmap is None else str(labelmap),
        "roi": None if case.roi is None else str(case.roi),
    }


def _reason(error: BaseException) -> str:
    """One line: the original error of a failed task, without Ray's traceback."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip()


def _model_package(model: Path, config: str | os.PathLike | None) -> dict:
    """The model's files as bytes (a file with its sidecars, or a whole folder), and its config file, so that they
    travel through the object store to any node."""
    if not model.exists():
        raise FileNotFoundError(f"No such model: {model}. Give a TorchScript file with its sidecar, or a folder.")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        if model.is_dir():
            archive.add(model, arcname=model.name)
        else:
            archive.add(model, arcname=model.name)
            for sidecar in set(sidecar_candidates(model)):
                if sidecar.is_file():
                    archive.add(sidecar, arcname=sidecar.name)
    config_bytes = None if config is None else Path(config).read_bytes()
    return {"name": model.name, "archive": buffer.getvalue(), "config": config_bytes}


def _explain_case(package: dict, settings: dict, case: dict, out: str) -> str:
    """A Ray task: unpack the model, explain one case into a staging folder, rename it into ``cases/``."""
    from .jobs import explain_and_save

    out_path = Path(out)
    staging = out_path / _STAGING / f"{case['case_id']}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="segshap-model-") as folder:
        with tarfile.open(fileobj=io.BytesIO(package["archive"])) as archive:
            archive.extractall(folder, filter="data")
        config = None
        if package["config"] is not None:
            config = Path(folder) / "model_config.json"
            config.write_bytes(package["config"])
        request = {
            "image": case["image"],
            "model": str(Path(folder) / package["name"]),
            "model_config": None if config is None else str(config),
            "trust_model": settings["trust_model"],
            "target": settings["targets"],
            "reference": case["reference"],
            "labelmap": case["labelmap"],
            "roi": case["roi"],
            "out": str(staging),
            "options": settings["options"],
        }
        explain_and_save(request, None, _log)
    final = out_path / _CASES / case["case_id"]
    if final.exists():  # redone without resume: the new folder replaces the old one
        trash = out_path / _STAGING / f"replaced-{uuid.uuid4().hex[:8]}"
        final.rename(trash)
        staging.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(final)
    return case["case_id"]


def _read_failed(out: Path) -> dict[str, str]:
    path = out / _FAILED
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["case_id"]: row["reason"] for row in csv.DictReader(handle)}


def _write_failed(out: Path, failed: dict[str, str]) -> None:
    path = out / _FAILED
    if not failed:
        path.unlink(missing_ok=True)
        return
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "reason"])
        writer.writerows(sorted(failed.items()))


def aggregate(out: str | os.PathLike) -> CohortResult:
    """Rebuild ``cohort.csv``, ``cohort.json`` and ``cohort.png`` from the case folders of ``out`` (and
    ``failed.csv``).

    ``cohort.json`` holds the cases' settings and versions (those of the first case, and which cases differ from
    it: a rerun with other options mixes them), each case's values of the full image and of the baseline, the
    failures and, per target, the organs' mean, standard deviation and count of normalised values.
    """
    pandas = _cohort_dependency("pandas")
    out = Path(out)
    if not (out / _CASES).is_dir():
        raise UsageError(f"{out} holds no cohort: it has no {_CASES}/ folder. Give the --out of a cohort run.")
    rows, cases, reports = [], {}, {}
    for folder in sorted(p for p in (out / _CASES).iterdir() if p.is_dir()):
        report = json.loads((folder / "explanation.json").read_text())
        names = [t["name"] for t in report["targets"]]
        rows += _case_rows(folder.name, report)
        reports[folder.name] = report
        cases[folder.name] = {
            "targets": names,
            "features": len(report["features"]),
            "exact": report["exact"],
            "efficiency_error": report["efficiency_error"],
            "full_value": dict(zip(names, np.atleast_1d(report["full_value"]).tolist())),
            "base_value": dict(zip(names, np.atleast_1d(report["base_value"]).tolist())),
        }
    table = pandas.DataFrame(rows, columns=list(COHORT_COLUMNS))
    failed = _read_failed(out)
    summary = {}
    for target, part in table.groupby("target"):
        per_organ = part[part["organ"] != ""].groupby("organ")["normalised"]
        summary[target] = {
            "cases": int(part["case_id"].nunique()),
            "organs": {
                organ: {"mean": _plain(v.mean()), "sd": _plain(v.std()), "n": int(v.count())} for organ, v in per_organ
            },
        }
    record = {**_common_settings(reports), "cases": cases, "failed": failed, "targets": summary}
    with StagedOutput(out) as staging:
        table.to_csv(staging / "cohort.csv", index=False)
        (staging / "cohort.json").write_text(json.dumps(record, indent=1))
        cohort_figure(table, {case: entry["full_value"] for case, entry in cases.items()}, staging / "cohort.png")
    return CohortResult(table=table, failed=failed, out=out)


def _common_settings(reports: dict[str, dict]) -> dict:
    """The settings (less each case's own boxes) and versions of the first case, and the cases whose settings or
    versions differ from them."""
    shared = {
        case: ({k: v for k, v in report["settings"].items() if k not in _PER_CASE_SETTINGS}, report["versions"])
        for case, report in reports.items()
    }
    if not shared:
        return {"settings": None, "versions": None, "differing_cases": []}
    first = next(iter(shared.values()))
    differing = [case for case, entry in shared.items() if entry != first]
    if differing:
        _log.warning("Cohort: case(s) %s were explained with other settings or versions", ", ".join(differing))
    return {"settings": first[0], "versions": first[1], "differing_cases": differing}


def _case_rows(case_id: str, report: dict) -> list[dict]:
    names = [t["name"] for t in report["targets"]]
    base = np.atleast_1d(np.asarray(report["base_value"], dtype=np.float64))
    full = np.atleast_1d(np.asarray(report["full_value"], dtype=np.float64))
    spread = full - base
    rows = []
    for feature in report["features"]:
        values = np.atleast_1d(np.asarray(feature["value"], dtype=np.float64))
        errors = np.atleast_1d(np.asarray(feature["stderr"], dtype=np.float64))
        for t, name in enumerate(names):
            rows.append(
                {
                    "case_id": case_id,
                    "target": name,
                    "feature": feature["id"],
                    "organ": feature.get("organ", str(feature["organ_label"]) if "organ_label" in feature else ""),
                    "value": values[t],
                    "stderr": errors[t],
                    "voxels": feature["voxels"],
                    "normalised": values[t] / spread[t] if spread[t] != 0 else np.nan,
                }
            )
    return rows


def _plain(number) -> float | None:
    return None if not np.isfinite(number) else float(number)
