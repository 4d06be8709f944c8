"""segshap: efficient, exact KernelSHAP over supervoxels for 3D medical segmentation models.

The names below are imported when first used, so that ``import segshap.processes`` (which 3D Slicer's side uses)
needs nothing but the standard library, and ``import segshap`` does not load torch until something needs it.
"""

from __future__ import annotations

import importlib

from .version import __version__

_EXPORTS = {
    "explain": "pipeline",
    "ExplainOptions": "options",
    "explanation_game": "game",
    "ExplanationGame": "game",
    "explain_cohort": "cohort",
    "predict": "inference",
    "Explanation": "explanation",
    "load_model": "models",
    "LoadedModel": "models",
    "ModelInput": "geometry",
    "Grid": "geometry",
    "PatchEngine": "engine",
    "ShapleyResult": "estimator",
    "Update": "anytime",
    "kernel_shap": "estimator",
    "DEFAULT_CACHE_BYTES": "cache",
    "DEFAULT_HOST_CACHE_BYTES": "cache",
    "Tiling": "tiling",
    "TilingSpec": "tiling",
    "monai_tiling": "tiling",
    "nnunet_tiling": "tiling",
    "VALUE_NAMES": "values",
    "segment_values": "values",
}

__all__ = [*_EXPORTS, "features", "__version__"]


def __getattr__(name: str):
    if name == "features":
        return importlib.import_module(".features", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'segshap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
