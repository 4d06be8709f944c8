"""The background worker: starting ``segshap worker`` in its own process, reading its events, stopping it.

The worker protocol (``docs/cli.md``, "Worker protocol"): one JSON object per line on stdout (``progress``, ``log``,
``estimate``, ``done``, ``error``); any other line is the worker's own stderr text, kept to explain a crash.
Nothing here imports Qt or the engine's computing parts: a *runner* starts the process and hands its lines over, and
a :class:`WorkerJob` turns them into callbacks on the thread that calls :meth:`WorkerJob.poll` (3D Slicer's main
thread, from a timer). An explanation can also be stopped early, keeping its estimate (:meth:`WorkerJob.stopAndKeep`).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# The one engine module the Slicer side imports: it needs nothing but the standard library (segshap's package
# imports the rest only when used).
from segshap.processes import end_process_tree

ENGINE_FOLDER = Path(__file__).resolve().parent.parent
"""The folder that holds the ``segshap`` package (the module's folder in a Slicer install or a checkout)."""


class WorkerError(RuntimeError):
    """The worker could not do the job; the message is the worker's own (what is wrong and how to fix it)."""


class OutOfMemoryError(WorkerError):
    """The GPU ran out of memory even one window at a time: run again on the CPU."""


class WorkerCancelled(RuntimeError):
    """The job was cancelled; nothing was added to the scene."""


@dataclass(frozen=True)
class WorkerEvent:
    """One line of the worker protocol: ``kind`` is ``progress``, ``log``, ``estimate``, ``done``, ``error`` or
    ``output`` (a line that is not an event: the worker's stderr)."""

    kind: str
    fields: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.fields.get("message", self.fields.get("text", ""))


def parseEvent(line: str) -> WorkerEvent:
    """The event a line of worker output holds; a line that is no event is ``output`` with its ``text``."""
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("event"), str):
            return WorkerEvent(data.pop("event"), data)
    return WorkerEvent("output", {"text": line.rstrip("\n")})


@dataclass(frozen=True)
class Progress:
    """Window forwards run so far, of how many, and the time left: in seconds (``None`` until the pace is known)
    and as the worker writes it (``"3m05s"``, ``"..."`` until known); ``text`` the line to show the user
    (``"evaluating the model, 37 %, about 19 s left"``)."""

    done: int
    total: int
    etaSeconds: float | None
    eta: str = "..."
    text: str = ""

    @property
    def percent(self) -> float:
        return 100.0 * self.done / max(self.total, 1)


# ---------------------------------------------------------------------------------------------------- processes


class RunningProcess(Protocol):
    """What a runner returns: a started process whose output lines can be taken without blocking."""

    def takeLines(self) -> list[str]:
        """The lines written since the last call (stdout and stderr together), without waiting."""

    def returnCode(self) -> int | None:
        """The exit code once the process has ended and all its output has been read; ``None`` before."""

    def kill(self) -> None:
        """End the process and every process it started."""


ProcessRunner = Callable[[Sequence[str], dict], RunningProcess]
"""Starts ``command`` with environment additions ``env``; returns the :class:`RunningProcess`."""


class SubprocessRunner:
    """Runs the worker with :mod:`subprocess`: a thread reads its output, the process is a group leader so that
    :meth:`kill` reaches launchers' children too (3D Slicer's ``PythonSlicer`` is a launcher)."""

    def __call__(self, command: Sequence[str], env: dict) -> RunningProcess:
        return _Subprocess(command, env)


class _Subprocess:
    def __init__(self, command: Sequence[str], env: dict) -> None:
        environment = {**os.environ, **env}
        options: dict = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            options["start_new_session"] = True
        self.process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=environment,
            **options,
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._read, name="segshap-worker-output", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.process.stdout.close()

    def takeLines(self) -> list[str]:
        taken = []
        while True:
            try:
                taken.append(self.lines.get_nowait())
            except queue.Empty:
                return taken

    def returnCode(self) -> int | None:
        if self.reader.is_alive() or self.process.poll() is None:
            return None
        return self.process.returncode

    def kill(self, graceSeconds: float = 3.0) -> None:
        if self.process.poll() is not None:
            return
        if os.name == "nt":
            end_process_tree(self.process.pid, graceSeconds)
            self.process.wait()
            return
        self._signalGroup(signal.SIGTERM)  # the worker ends within 2 s, writing nothing
        try:
            self.process.wait(timeout=graceSeconds)
        except subprocess.TimeoutExpired:
            self._signalGroup(signal.SIGKILL)
            self.process.wait()
        self._signalGroup(signal.SIGKILL)  # whatever of the group outlived its leader

    def _signalGroup(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class ConsoleProcess:
    """A worker started by 3D Slicer's ``slicer.util.launchConsoleProcess`` (Slicer 5.12+, which hands its lines
    to callbacks on the main thread from Slicer's own timer)."""

    def __init__(self, command: Sequence[str], env: dict) -> None:
        import slicer.util

        self.lines: list[str] = []
        self.code: int | None = None
        self.process = slicer.util.launchConsoleProcess(
            list(command),
            updateEnvironment=env,
            blocking=False,
            logCallback=self.lines.append,
            completedCallback=self._completed,
        )

    def _completed(self, code: int) -> None:
        self.code = code

    def takeLines(self) -> list[str]:
        taken, self.lines = self.lines, []
        return taken

    def returnCode(self) -> int | None:
        return self.code

    def kill(self) -> None:
        end_process_tree(self.process.pid)


def slicerRunner() -> ProcessRunner:
    """How 3D Slicer runs the worker: :class:`ConsoleProcess` where ``launchConsoleProcess`` takes callbacks
    (5.12+), else :class:`SubprocessRunner` (a reader thread)."""
    import inspect

    import slicer.util

    if "logCallback" in inspect.signature(slicer.util.launchConsoleProcess).parameters:
        return ConsoleProcess
    return SubprocessRunner()


def pythonExecutable() -> str:
    """The Python that runs the worker: 3D Slicer's ``PythonSlicer`` where there is one, else this Python."""
    return shutil.which("PythonSlicer") or sys.executable


def workerCommand(requestPath: str | os.PathLike, python: str | None = None) -> list[str]:
    """The command line of ``segshap worker`` for a request file; the worker ends when this process is gone."""
    return [
        python or pythonExecutable(),
        "-m",
        "segshap.cli",
        "worker",
        "--request",
        str(requestPath),
        "--parent-pid",
        str(os.getpid()),
    ]


def workerEnvironment() -> dict:
    """Environment additions for the worker: the engine's folder first on ``PYTHONPATH``, unbuffered output."""
    path = [str(ENGINE_FOLDER)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------------------------------------------- jobs


@dataclass
class JobCallbacks:
    """What a :class:`WorkerJob` calls, all on the thread that polls it.

    ``onDone`` gets the job's result, ``onError`` the exception (:class:`WorkerError`, its subclass
    :class:`OutOfMemoryError`, or an error of the import), ``onCancelled`` nothing. ``onEstimate`` gets the fields
    of the newest ``estimate`` event of each poll (an explanation with live updates: ``update``, ``values``,
    ``top``, ``heatmap``, ``text``...; ``docs/cli.md``); older ones of the same poll are skipped, being out of date.
    """

    onProgress: Callable[[Progress], None] | None = None
    onLog: Callable[[str], None] | None = None
    onEstimate: Callable[[dict], None] | None = None
    onDone: Callable[[object], None] | None = None
    onError: Callable[[BaseException], None] | None = None
    onCancelled: Callable[[], None] | None = None


class WorkerJob:
    """One worker run, from start to the nodes it made (or the error it reported).

    Parameters
    ----------
    process : RunningProcess
        The started worker.
    finish : callable
        ``finish(done_fields) -> result``, called once the worker reported ``done`` and exited 0: turns its
        output files into the result (MRML nodes). It runs on the polling thread.
    callbacks : JobCallbacks
    workFolder : Path, optional
        A temporary folder the job owns (inputs and outputs); removed when the job ends in any way.
    stopFile : path, optional
        The request's ``stop_file``: the worker stops sampling once a file is there (:meth:`stopAndKeep`).

    Attributes
    ----------
    estimate : dict or None
        The fields of the last ``estimate`` event handed to ``onEstimate`` (``None`` before the first).
    stopping : bool
        :meth:`stopAndKeep` was called: the worker is finishing with its latest estimate.
    """

    def __init__(
        self,
        process: RunningProcess,
        finish: Callable[[dict], object],
        callbacks: JobCallbacks | None = None,
        workFolder: Path | None = None,
        stopFile: str | os.PathLike | None = None,
    ) -> None:
        self.process = process
        self.finish = finish
        self.callbacks = callbacks or JobCallbacks()
        self.workFolder = workFolder
        self.stopFile = Path(stopFile) if stopFile is not None else None
        self.result: object = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.finished = False
        self.stopping = False
        self.progress: Progress | None = None
        self.estimate: dict | None = None
        self.stage = "Starting"
        self._doneFields: dict | None = None
        self._errorEvent: dict | None = None
        self._outputTail: deque[str] = deque(maxlen=20)

    def poll(self) -> bool:
        """Handle what the worker wrote since the last call; returns ``True`` once the job has ended."""
        if self.finished:
            return True
        lines = self.process.takeLines()
        code = self.process.returnCode()
        if code is not None:
            lines += self.process.takeLines()  # what it wrote just before it exited
        self._handleLines(lines)
        if code is None:
            return False
        self._end(code)
        return True

    def wait(self, pollSeconds: float = 0.05) -> object:
        """Block until the job ends; returns its result or raises its error (Ctrl+C cancels the job)."""
        try:
            while not self.poll():
                time.sleep(pollSeconds)
        except KeyboardInterrupt:
            self.cancel()
            raise
        if self.cancelled:
            raise WorkerCancelled("The job was cancelled; the scene is unchanged.")
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        """Stop the worker and its children; nothing is added to the scene and the work folder is removed."""
        if self.finished:
            return
        self.process.kill()
        self.cancelled = True
        self.finished = True
        self._cleanUp()
        if self.callbacks.onCancelled:
            self.callbacks.onCancelled()

    def stopAndKeep(self) -> None:
        """Ask the worker to stop sampling and finish with the estimate on show (:attr:`estimate`): it runs the
        faithfulness check, writes every output and reports ``done``, so the job ends as usual (``onDone``). Unlike
        :meth:`cancel`, which ends the worker at once and keeps nothing. Does nothing once the job has ended.

        Raises
        ------
        ValueError
            The job has no stop file (only an explanation with live updates has one).
        """
        if self.stopFile is None:
            raise ValueError("Only an explanation with live updates can stop and keep its estimate; cancel this job.")
        if self.finished:
            return
        # The protocol's signal (docs/cli.md): a file appearing at the request's stop_file, which works on every OS,
        # holding the number of the estimate on show, which the worker keeps even if a newer one is on its way.
        shown = "" if self.estimate is None else str(self.estimate.get("update", ""))
        partial = self.stopFile.with_name(self.stopFile.name + ".partial")
        partial.write_text(shown)
        os.replace(partial, self.stopFile)
        self.stopping = True

    def _handleLines(self, lines: list[str]) -> None:
        """Handle a poll's lines in order, handing over only the newest estimate (after the other events): an
        older one is out of date, and showing it would only make the views flicker."""
        newest = None
        for line in lines:
            event = parseEvent(line)
            if event.kind == "estimate":
                newest = event.fields
            else:
                self._handle(event)
        if newest is not None:
            self.estimate = newest
            if self.callbacks.onEstimate:
                self.callbacks.onEstimate(newest)

    def _handle(self, event: WorkerEvent) -> None:
        if event.kind == "progress":
            self.stage = "Estimating"
            fields = event.fields
            self.progress = Progress(
                int(fields["done"]),
                int(fields["total"]),
                fields.get("eta_s"),
                fields.get("eta", "..."),
                fields.get("text", ""),
            )
            if self.callbacks.onProgress:
                self.callbacks.onProgress(self.progress)
        elif event.kind == "log":
            self.stage = event.text
            if self.callbacks.onLog:
                self.callbacks.onLog(event.text)
        elif event.kind == "done":
            self._doneFields = event.fields
        elif event.kind == "error":
            self._errorEvent = event.fields
        else:
            self._outputTail.append(event.text)

    def _end(self, code: int) -> None:
        try:
            if self._errorEvent is not None:
                message = self._errorEvent.get("message", "unknown error")
                kind = OutOfMemoryError if self._errorEvent.get("reason") == "out_of_memory" else WorkerError
                raise kind(message)
            if code != 0 or self._doneFields is None:
                tail = "\n".join(line for line in self._outputTail if line.strip())
                raise WorkerError(
                    f"The worker stopped unexpectedly (exit code {code}) without a result; nothing was added to "
                    f"the scene. Its last output:\n{tail or '(none)'}"
                )
            self.stage = "Loading results"
            self.result = self.finish(self._doneFields)
            self.stage = "Done"
        except Exception as error:
            self.error = error
            self.stage = "Failed"
        finally:
            self.finished = True
            self._cleanUp()
        if self.error is not None:
            if self.callbacks.onError:
                self.callbacks.onError(self.error)
        elif self.callbacks.onDone:
            self.callbacks.onDone(self.result)

    def _cleanUp(self) -> None:
        if self.workFolder is not None:
            shutil.rmtree(self.workFolder, ignore_errors=True)
