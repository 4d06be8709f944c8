"""The CPU threading the ``segshap`` programs choose for themselves.

torch runs its CPU operations on OpenMP threads (GNU libgomp on Linux) that spin-wait for each other between
operations. When another process keeps a core busy (3D Slicer beside the worker, a second job, the rest of a
cohort), a thread spinning on that core waits out the other process's time slices, and every small operation pays
for it. A short spin makes the waiting threads sleep instead. Measured with the demo (``segshap demo``, 2 cores;
BENCHMARKS.md, "Engine pace"), the spin count :data:`SPIN_COUNT` was much faster with a busy core and no slower
on the idle machine.

libgomp reads ``GOMP_SPINCOUNT`` once, when torch loads, so a program sets it before anything imports torch:
:mod:`segshap.cli` does so first thing, for the ``segshap`` command and for the worker that 3D Slicer starts
(``python -m segshap.cli worker``). A library import does not change the process's environment: a script that
imports :mod:`segshap` chooses its own threading. Other OpenMP runtimes (LLVM's on macOS, Microsoft's on Windows)
do not read this variable; they were not measured.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["SPIN_COUNT", "choose_cpu_threading"]

SPIN_COUNT = 10_000
"""Iterations an idle OpenMP thread spins before it sleeps (libgomp's default is 300,000)."""


def choose_cpu_threading(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` in ``environ``, unless its user chose the OpenMP waiting
    already (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` set) or torch is loaded, too late for the setting to count.

    Returns
    -------
    bool
        Whether the setting was made.
    """
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ or "torch" in sys.modules:
        return False
    environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True
