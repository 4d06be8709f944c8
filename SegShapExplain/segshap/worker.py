"""The engine's half of the worker protocol (``segshap worker --request FILE``), which 3D Slicer's module speaks.

The worker carries out one request file (:mod:`segshap.request`, :mod:`segshap.jobs`; the protocol in full is in
``docs/cli.md``) and reports on its real stdout, one JSON object per line: ``{"event": "log", "level",
"message"}`` for stage messages, ``{"event": "progress", "done", "total", "eta_s", "eta", "text"}`` while it
computes (``text``: the line to show, in the user's words; a cohort counts cases, and reports each as it ends:
``{"event": "case", "case_id", "failed"}``, ``failed`` the reason or ``null``), with ``update_every`` an
``{"event": "estimate", ...}`` per live estimate (:func:`segshap.live.estimate_event`), then ``{"event": "done", ...}``
with the task's fields, or ``{"event": "error", "message"}`` (with ``"reason": "out_of_memory"`` when the GPU ran
out). Everything else it prints goes to stderr. It ends when the process that launched it is gone
(:func:`exit_with_parent`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

from .anytime import Update
from .jobs import cohort_from_request, describe, explain_and_save, segment
from .live import estimate_event, write_heatmaps
from .processes import process_alive
from .reporting import Rate, engine_summary, format_duration, logging_to, progress_text, summary
from .request import read_request

__all__ = ["EventWriter", "EventLogHandler", "run_worker", "exit_with_parent", "argument_name"]

_REQUEST_KEYS_OF_ARGUMENTS = {"config": "model_config", "trust": "trust_model", "out_dir": "out"}


def argument_name(argument: str) -> str:
    """How an error names a library argument to whoever wrote the request: its request key."""
    return f'"{_REQUEST_KEYS_OF_ARGUMENTS.get(argument, argument)}"'


class EventWriter:
    """The protocol's events, one JSON object per line on ``stream``; safe to call from any thread."""

    def __init__(self, stream) -> None:
        self.stream, self.lock, self.rate = stream, threading.Lock(), Rate()

    def emit(self, event: str, **fields) -> None:
        with self.lock:
            self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            self.stream.flush()

    def progress(self, done: int, total: int, unit: str | None = None) -> None:
        eta = self.rate.eta(done, total)
        self.emit(
            "progress",
            done=done,
            total=total,
            eta_s=None if eta is None else round(eta, 1),
            eta=format_duration(eta),
            text=progress_text(done, total, eta, unit=unit),
        )

    def case_progress(self, done: int, total: int) -> None:
        self.progress(done, total, unit="cases")


class EventLogHandler(logging.Handler):
    """Log records as ``log`` events."""

    def __init__(self, events: EventWriter) -> None:
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.emit("log", level=record.levelname.lower(), message=record.getMessage())


def run_worker(request_path: str, events: EventWriter, parent_pid: int | None = None) -> int:
    """Carry out the request in ``request_path``, reporting on ``events``; returns the exit code (0).

    Errors are raised, for the caller to report as an ``error`` event.
    """
    exit_with_parent(parent_pid)
    request = read_request(request_path)
    events.emit("log", level="info", message=f"segshap worker, pid {os.getpid()}")
    with logging_to(EventLogHandler(events)) as log:
        task = request.get("task", "explain")
        if task == "describe":
            fields = describe(request)
        elif task == "segment":
            fields = segment(request)
        elif task == "cohort":
            _, fields = cohort_from_request(
                request,
                events.case_progress,
                lambda case_id, reason: events.emit("case", case_id=case_id, failed=reason),
            )
        else:
            on_update = None
            if request.get("update_every") is not None:

                def on_update(update: Update) -> None:
                    events.emit("estimate", **estimate_event(update, write_heatmaps(update, request["live_folder"])))

            explanation, outputs = explain_and_save(request, events.progress, log, on_update)
            log.info("%s", engine_summary(explanation))
            fields = {"outputs": outputs, "summary": summary(explanation), "warnings": explanation.warnings}
    events.emit("done", **fields)
    return 0


def exit_with_parent(parent_pid: int | None = None, poll_s: float = 1.0) -> None:
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
            return not process_alive(parent_pid)

    if gone():
        os._exit(128 + signal.SIGTERM)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if gone():
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="segshap-parent-watch", daemon=True).start()
