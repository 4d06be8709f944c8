"""The processes a run starts or answers to: whether one is alive, which descend from one, ending them, and the
signals that ask a run to stop, held back while it must not be cut short.

Linux answers from ``/proc``; elsewhere ``psutil`` does where it is installed (3D Slicer ships it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["process_alive", "descendants", "end_processes", "end_process_tree", "DeferredSignals", "run_in_background"]

PROC = Path("/proc")
"""Where Linux describes its processes; elsewhere ``psutil`` (which 3D Slicer ships) tells."""


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie (dead, waiting for its parent to reap it).

    Parameters
    ----------
    pid : int

    Returns
    -------
    bool
        ``True`` also for a process of another user (it exists).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    if not PROC.is_dir():
        return _alive_by_psutil(pid)
    try:
        state = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:  # gone meanwhile
        return False
    return state not in ("Z", "X")


def _alive_by_psutil(pid: int) -> bool:
    """Without ``/proc`` (macOS): whether a process exists and is no zombie, by ``psutil`` where it is installed
    (3D Slicer ships it), else its existence."""
    try:
        import psutil
    except ImportError:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[int]:
    """The processes descended from a process: its children, theirs, and so on.

    Parameters
    ----------
    pid : int

    Returns
    -------
    list of int
        Their pids, nearest generation first; empty where there is neither ``/proc`` nor ``psutil``.
    """
    if not PROC.is_dir():
        return _descendants_from_psutil(pid)
    children: dict[int, list[int]] = {}
    for entry in PROC.glob("[0-9]*"):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


def _descendants_from_psutil(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def end_process_tree(pid: int, grace_s: float = 3.0) -> None:
    """End a process and every process it started: SIGTERM to all of them (a worker then ends within seconds,
    writing nothing), SIGKILL to those left after ``grace_s``. For processes that do not lead a process group of
    their own, such as the worker started through 3D Slicer's ``PythonSlicer`` launcher.

    On Windows, ``taskkill /T`` ends the tree at once.
    """
    if os.name == "nt":
        import subprocess

        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return
    tree = [pid, *descendants(pid)]
    for member in tree:
        with contextlib.suppress(OSError):
            os.kill(member, signal.SIGTERM)
    end_processes(tree, grace_s)


def end_processes(pids: Iterable[int], grace_s: float = 3.0, poll_s: float = 0.05) -> None:
    """Wait up to ``grace_s`` for the processes to end on their own, then kill those left (SIGKILL) and wait until
    they are gone, so that none of them writes anything afterwards.

    Parameters
    ----------
    pids : iterable of int
    grace_s : float
        Seconds they get to end on their own (after being asked to, e.g. by a shutdown or SIGTERM).
    poll_s : float
        Seconds between looks.
    """
    pids = list(pids)
    deadline = time.monotonic() + grace_s
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(poll_s)
    for pid in pids:
        if process_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    # A killed process can finish the system call it is in; it is gone (or a zombie) within moments.
    deadline = time.monotonic() + 10.0
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(poll_s)


class DeferredSignals:
    """SIGINT and SIGTERM recorded instead of acted on while the block runs, then delivered when it ends.

    For work that must not be cut short: moving outputs into place, or a run that polls :attr:`received` between
    calls into a library where an exception raised by a signal handler would corrupt its state (Ray's waits). On
    leaving the block the previous handlers are put back and the first signal received is raised again, so the
    caller stops as it would have. Signal handlers can only be set in the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in self.SIGNALS}
        return self

    def _record(self, number: int, frame) -> None:
        self.received.append(number)

    def __exit__(self, kind, error, traceback) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        if self.received:
            signal.raise_signal(self.received[0])


def run_in_background(work: Callable[[], object]) -> object:
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
