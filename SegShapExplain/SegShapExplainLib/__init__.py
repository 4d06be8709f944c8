"""Slicer-side logic of SegShapExplain: MRML nodes to files, the background worker, files back to MRML nodes, and
the panel's rules.

Nothing here imports Qt, nor the engine's computing parts: of ``segshap`` only its standard-library modules
(``segshap.processes``, ``segshap.modelinfo``, ``segshap.palette``), so that the module loads in 3D Slicer before
PyTorch is installed and every decision is testable with the PyPI package ``slicer-core``; the module file
``SegShapExplain.py`` only wires these to the panel.
"""

from .logic import ModelDescription, SegShapExplainLogic
from .results import ExplanationNodes
from .settings import Baseline, Device, ExplainSettings, FeatureKind, OutlineStyle, OutputMode, ValueFunction
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
    "OutputMode",
    "JobCallbacks",
    "Progress",
    "WorkerJob",
    "WorkerError",
    "OutOfMemoryError",
    "WorkerCancelled",
    "SubprocessRunner",
]
