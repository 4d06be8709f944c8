"""The processes a run starts or answers to: whether one is alive, and which descend from one.

Linux answers from ``/proc``; elsewhere existence is all there is to know.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_alive", "descendants"]


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
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:  # no /proc (macOS): existence is all there is to know
        return True
    return state not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """The processes descended from a process: its children, theirs, and so on.

    Parameters
    ----------
    pid : int

    Returns
    -------
    list of int
        Their pids, nearest generation first; empty where there is no ``/proc``.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
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
