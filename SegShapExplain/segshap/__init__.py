"""segshap: efficient, exact KernelSHAP over supervoxels for 3D medical segmentation models."""

from . import features
from .cohort import explain_cohort
from .engine import DEFAULT_CACHE_BYTES, PatchEngine
from .estimator import ShapleyResult, kernel_shap
from .explain import explain
from .explanation import Explanation
from .game import ExplanationGame, explanation_game
from .geometry import Grid, ModelInput
from .models import LoadedModel, load_model
from .predict import predict
from .tiling import Tiling, monai_tiling, nnunet_tiling
from .values import VALUE_NAMES, segment_values
from .version import __version__

__all__ = [
    "explain",
    "explanation_game",
    "explain_cohort",
    "ExplanationGame",
    "predict",
    "Explanation",
    "load_model",
    "LoadedModel",
    "ModelInput",
    "Grid",
    "PatchEngine",
    "ShapleyResult",
    "kernel_shap",
    "features",
    "DEFAULT_CACHE_BYTES",
    "Tiling",
    "monai_tiling",
    "nnunet_tiling",
    "VALUE_NAMES",
    "segment_values",
    "__version__",
]
