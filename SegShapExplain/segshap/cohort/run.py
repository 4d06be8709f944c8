"""The run of a cohort on Ray: one task per case, on a local instance started for the run or on a cluster.

The model's files travel once through Ray's object store. Each case is written into the run's staging folder and
renamed into ``OUT/cases/<case_id>/`` when complete (:mod:`segshap.cohort.case`); a rerun with ``resume`` skips
those. A failing case is retried once, then recorded in ``OUT/failed.csv`` with a one-line reason, and the other
cases go on. SIGINT and SIGTERM are taken between Ray's calls, never inside them: the run stops its tasks, waits
until its own workers are gone, removes its staging folder, and only then stops as the signal asks, so an
interrupted run leaves the complete cases and nothing else.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..features import ORGAN_FEATURES
from ..manifest import Case, read_manifest
from ..options import ExplainOptions
from ..processes import DeferredSignals, descendants, end_processes, run_in_background
from .aggregation import CASES, CohortResult, aggregate, cohort_dependency, read_failed, write_failed
from .case import STAGING, case_fields, explain_case, model_package, restore_replaced

__all__ = ["explain_cohort", "CohortStopped", "COHORT_FEATURES"]

COHORT_FEATURES = "organs"
"""The features of a cohort unless its options say otherwise: organs compare across cases."""

_WORKER_EXIT_SECONDS = 3.0
"""Seconds the run's own Ray processes get to end after the shutdown before they are killed."""

_CANCEL_SECONDS = 30.0
"""Longest wait for a joined cluster's cancelled tasks to end before the run removes its staging folder."""

_WAIT_SECONDS = 0.5
"""Longest wait for a case to end before the run looks for a signal again."""


_log = logging.getLogger("segshap")


class CohortStopped(Exception):
    """A signal asked the run to stop (raised where its handler let the run go on; usually the handler's own
    exception, such as ``KeyboardInterrupt``, ends the run instead). The complete cases are kept."""


def explain_cohort(
    cases: str | os.PathLike | Sequence[Case],
    model: str | os.PathLike,
    *,
    targets: str | int | Sequence[str | int],
    labelmaps: dict[str, str | os.PathLike] | None = None,
    out: str | os.PathLike = "cohort/",
    address: str | None = None,
    gpus_per_case: float | None = None,
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
    on_case: Callable[[str, str | None], None] | None = None,
    model_config: str | os.PathLike | None = None,
    trust_model: bool = False,
    options: ExplainOptions | None = None,
    **option_values,
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
        Skip the cases whose folder is complete; ``False`` redoes them (each complete folder stays until its new
        version replaces it).
    progress : callable, optional
        ``progress(done, total)`` over cases, after each case.
    on_case : callable, optional
        ``on_case(case_id, reason)`` as each case ends: ``reason`` is ``None`` for a complete case, else the
        one-line reason it failed.
    model_config, trust_model
        As ``config`` and ``trust`` of :func:`segshap.load_model`.
    options : ExplainOptions, optional
        The options of every case's explanation, ``features`` among them; without it, ``features`` defaults to
        :data:`COHORT_FEATURES` (``"organs"``), which makes the values comparable across cases.
    **option_values
        Options by name, in place of those of ``options`` (as :func:`segshap.explain` takes them).

    Returns
    -------
    CohortResult

    Raises
    ------
    MissingDependency
        Ray or pandas is not installed (the ``cohort`` extra).
    ValueError
        A bad option, a label map for a case not in the cohort, label maps without organ features, or a bad
        manifest (:class:`segshap.manifest.ManifestError`, every bad row at once).
    FileNotFoundError
        No such model.
    """
    ray = cohort_dependency("ray")
    cohort_dependency("pandas")  # aggregation's, checked before any case runs
    options = ExplainOptions.given(
        options, option_values if options is not None else {"features": COHORT_FEATURES, **option_values}
    )
    cases = read_manifest(cases) if isinstance(cases, (str, os.PathLike)) else list(cases)
    out = Path(out)
    labelmaps = {key: Path(value) for key, value in (labelmaps or {}).items()}
    unknown_cases = set(labelmaps) - {case.case_id for case in cases}
    if unknown_cases:
        raise ValueError(f"labelmaps names case(s) {sorted(unknown_cases)} that are not in the cohort.")
    if options.features not in ORGAN_FEATURES and (labelmaps or any(case.labelmap is not None for case in cases)):
        raise ValueError(
            f"Label maps make organ features, but features={options.features!r}: ask for one of {ORGAN_FEATURES}, "
            "or drop the manifest's labelmap column."
        )
    targets = [targets] if isinstance(targets, (str, int)) else list(targets)
    package = model_package(Path(model), model_config)  # a missing model is refused before anything is written
    settings = {"targets": targets, "trust_model": trust_model, "options": options.to_dict()}
    (out / CASES).mkdir(parents=True, exist_ok=True)
    _clear_staging(out)  # what a killed run left
    todo = [case for case in cases if not (resume and (out / CASES / case.case_id).is_dir())]
    _log.info("Cohort: %d case(s), %d to explain", len(cases), len(todo))

    session = _Session(
        ray=ray,
        out=out,
        jobs=[(case, labelmaps.get(case.case_id, case.labelmap)) for case in todo],
        total=len(cases),
        package=package,
        settings=settings,
        address=None if address in (None, "", "local") else address,
        gpus_per_case=gpus_per_case,
        progress=progress,
        on_case=on_case,
    )
    with DeferredSignals() as signals:
        # The main thread only waits and records signals; Ray runs on a thread of its own (see _Session). Once the
        # cases are done, the tables are written whole before a signal that came meanwhile stops the run.
        failed = run_in_background(lambda: session.run(signals))
        done = {case.case_id for case in cases} - set(failed)
        previous = read_failed(out) if resume else {}
        write_failed(out, {**{k: v for k, v in previous.items() if k not in done}, **failed})
        return aggregate(out)


@dataclass
class _Session:
    """The Ray part of a run, from starting or joining Ray to the shutdown, on a thread of its own.

    Started on the main thread, ``ray.init`` installs a SIGTERM handler of its own that ends the process half-way
    (and a signal whose handler raises inside one of Ray's compiled calls leaves it broken); on another thread it
    leaves the run's handlers, which only record a signal, in place, and the session looks for a signal between
    its calls to Ray. The thread lives until Ray is shut down: Ray ties its processes' lives to the thread that
    started them.
    """

    ray: object
    out: Path
    jobs: list[tuple[Case, Path | None]]
    total: int
    package: dict
    settings: dict
    address: str | None
    gpus_per_case: float | None
    progress: Callable[[int, int], None] | None
    on_case: Callable[[str, str | None], None] | None

    def run(self, signals: DeferredSignals) -> dict[str, str]:
        """Explain the cases; returns the failures (case id to reason).

        Raises
        ------
        CohortStopped
            When a signal arrived; the complete cases are kept, the staging folder is gone, and the run's own Ray
            processes have ended.
        """
        ray = self.ray
        connected_here = not ray.is_initialized()
        # A local instance started for this run ends with it; a cluster joined (an address) runs on.
        owns_instance = connected_here and self.address is None
        children_before = set(descendants(os.getpid())) if owns_instance else set()
        (self.out / STAGING).mkdir()
        try:
            if connected_here:
                # "local": a new instance even where `ray start` left one (or the address file of one that is gone),
                # which a plain ray.init() would join. Its workers run at the run's own priority: Ray's default
                # niceness (15) starved them to a few per cent of a core beside any other busy process.
                own = {"_system_config": {"worker_niceness": 0}} if owns_instance else {}
                with _RayNotices(owns_instance):
                    ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False, **own)
            return self._collect(signals, owns_instance)
        finally:
            if owns_instance:
                processes = [pid for pid in descendants(os.getpid()) if pid not in children_before]
                ray.shutdown()
                end_processes(processes, _WORKER_EXIT_SECONDS)
            elif connected_here:
                ray.shutdown()
            _clear_staging(self.out)

    def _collect(self, signals: DeferredSignals, owns_instance: bool) -> dict[str, str]:
        """Submit one task per case and collect them as they end. On a signal, tasks on a joined cluster are
        cancelled; those on the run's own instance end with it (cancelling them too races with the shutdown inside
        Ray)."""
        ray = self.ray
        gpus = self.gpus_per_case
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        package_ref, settings_ref = ray.put(self.package), ray.put(self.settings)
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=1, retry_exceptions=True)(explain_case)
        out = str(self.out.absolute())
        pending = {
            task.remote(package_ref, settings_ref, case_fields(case, labelmap), out): case.case_id
            for case, labelmap in self.jobs
        }
        failed: dict[str, str] = {}
        finished = self.total - len(self.jobs)
        if self.progress is not None:
            self.progress(finished, self.total)
        while pending:
            if signals.received:
                if not owns_instance:  # the cluster runs on: its tasks are cancelled, and given time to end
                    for ref in pending:
                        ray.cancel(ref)
                    ray.wait(list(pending), num_returns=len(pending), timeout=_CANCEL_SECONDS)
                raise CohortStopped(f"The cohort run was stopped; the complete cases are kept in {self.out / CASES}.")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_WAIT_SECONDS)
            if not ready:
                continue
            case_id = pending.pop(ready[0])
            try:
                ray.get(ready[0])
                _log.info("Cohort: %s done", case_id)
            except Exception as error:  # a case's failure is recorded, the others go on
                failed[case_id] = _reason(error)
                _log.warning("Cohort: %s failed: %s", case_id, failed[case_id])
            if self.on_case is not None:
                self.on_case(case_id, failed.get(case_id))
            finished += 1
            if self.progress is not None:
                self.progress(finished, self.total)
        return failed


class _RayNotices(logging.Filter):
    """While the block runs (for an instance the run starts itself), Ray's start-up notices that say nothing its
    user must act on are left out: that its token authentication is on, and that it set no SIGTERM handler."""

    LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray._private.worker")
    TEXTS = ("Token authentication is enabled", "SIGTERM handler is not set")

    def __init__(self, active: bool) -> None:
        super().__init__()
        self.active = active

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.TEXTS)

    def __enter__(self) -> _RayNotices:
        if self.active:
            for name in self.LOGGERS:
                logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def _clear_staging(out: Path) -> None:
    """Put back the cases moved aside for replacements that never came, then remove the staging folder."""
    for case_id in restore_replaced(out):
        _log.warning("Cohort: %s was being replaced when a run stopped; its earlier folder is kept", case_id)
    shutil.rmtree(out / STAGING, ignore_errors=True)


def _reason(error: BaseException) -> str:
    """One line: the original error of a failed task, without Ray's traceback."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip()
