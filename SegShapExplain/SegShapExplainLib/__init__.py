"""Slicer-side logic of SegShapExplain: MRML nodes to files, the background worker, files back to MRML nodes.

Nothing here imports Qt (or the engine, but for its standard-library ``segshap.processes``), so every decision is
testable with the PyPI package ``slicer-core``; the module file ``SegShapExplain.py`` only wires these to the
panel.
"""

from .logic import ModelDescription, SegShapExplainLogic
from .results import ExplanationNodes
from .settings import Baseline, Device, ExplainSettings, FeatureKind, OutlineStyle, ValueFunction
from .worker import (
    JobCallbacks,
    OutOfMemoryError,
    Progress,
    SubprocessRunner,
    WorkerCancelled,
    WorkerError,
    WorkerJob,
)

__all__ = [
    "SegShapExplainLogic",
    "ModelDescription",
    "ExplanationNodes",
    "ExplainSettings",
    "FeatureKind",
    "ValueFunction",
    "Baseline",
    "Device",
    "OutlineStyle",
    "JobCallbacks",
    "Progress",
    "WorkerJob",
    "WorkerError",
    "OutOfMemoryError",
    "WorkerCancelled",
    "SubprocessRunner",
]
