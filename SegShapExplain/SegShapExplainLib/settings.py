"""The choices a user makes for one explanation, typed, with the engine's names for them.

The enums double as the panel's combo boxes (the parameter node wrapper shows ``label``); ``ExplainSettings``
becomes the ``options`` of a worker request and names the output nodes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FeatureKind(enum.Enum):
    """How the image is cut into the features that are switched on and off."""

    SUPERVOXELS = "slic"
    REGULAR = "fcc"
    GRID = "grid"
    ORGAN_AWARE = "organ_aware"
    ORGANS = "organs"

    @staticmethod
    def label(kind: FeatureKind) -> str:
        return {
            FeatureKind.SUPERVOXELS: "Supervoxels (SLIC)",
            FeatureKind.REGULAR: "Regular supervoxels (FCC lattice)",
            FeatureKind.GRID: "Grid of cubes",
            FeatureKind.ORGAN_AWARE: "Organ-aware supervoxels",
            FeatureKind.ORGANS: "Whole organs",
        }[kind]


class ValueFunction(enum.Enum):
    """What is measured on the target segment for each coalition."""

    SOFT_DICE = "soft_dice"
    DICE = "dice"
    TRUE_POSITIVES = "tp"
    FALSE_POSITIVES = "fp"
    MEAN_PROBABILITY = "mean_prob"

    @staticmethod
    def label(value: ValueFunction) -> str:
        return {
            ValueFunction.SOFT_DICE: "Soft Dice",
            ValueFunction.DICE: "Dice",
            ValueFunction.TRUE_POSITIVES: "True positives",
            ValueFunction.FALSE_POSITIVES: "False-positive mass",
            ValueFunction.MEAN_PROBABILITY: "Mean probability",
        }[value]


class Baseline(enum.Enum):
    """The intensities that replace a feature's voxels when it is switched off."""

    MEAN = "mean"
    MINIMUM = "min"
    ZERO = "zero"

    @staticmethod
    def label(baseline: Baseline) -> str:
        return {Baseline.MEAN: "Image mean", Baseline.MINIMUM: "Image minimum", Baseline.ZERO: "Zero"}[baseline]


class Device(enum.Enum):
    """Where the worker runs the model; ``AUTO`` is the GPU when the worker's torch sees one. ``CUDA`` takes the GPU
    number of :attr:`ExplainSettings.gpuIndex`."""

    AUTO = "auto"
    CUDA = "cuda"
    MPS = "mps"
    CPU = "cpu"

    @staticmethod
    def label(device: Device) -> str:
        return {
            Device.AUTO: "Auto (GPU if available)",
            Device.CUDA: "NVIDIA GPU (CUDA)",
            Device.MPS: "Apple GPU (MPS)",
            Device.CPU: "CPU",
        }[device]

    def workerName(self, gpuIndex: int = 0) -> str:
        """The engine's name of this device: ``"cuda:1"`` for the second NVIDIA GPU."""
        return f"cuda:{gpuIndex}" if self is Device.CUDA and gpuIndex else self.value


class OutlineStyle(enum.Enum):
    """Which features the slice views outline (each in its fill's colour, so an outline's colour is its sign)."""

    TOP = "top"
    ALL = "all"
    NONE = "none"

    @staticmethod
    def label(style: OutlineStyle) -> str:
        return {OutlineStyle.TOP: "Top features", OutlineStyle.ALL: "All features", OutlineStyle.NONE: "None"}[style]


class OutputMode(enum.Enum):
    """What a new explanation does with the previous result of the same volume, model and target."""

    NEW = "new"
    REPLACE = "replace"

    @staticmethod
    def label(mode: OutputMode) -> str:
        return {OutputMode.NEW: "Add a new result", OutputMode.REPLACE: "Replace the previous result"}[mode]


@dataclass(frozen=True)
class ExplainSettings:
    """Options of one explanation (the worker's ``options``).

    Attributes
    ----------
    features : FeatureKind
    nFeatures : int
        About how many features to cut the region into (supervoxels, grid); ignored for whole organs.
    value : ValueFunction
    nSamples : int
        Coalitions to evaluate; 0 means "auto": sample until the standard errors fall below ``tolerance``.
    tolerance : float
        For ``nSamples == 0``: stop once the largest standard error is this fraction of the values' spread;
        0 means the engine's default.
    timeLimit : float
        Seconds the explanation may take, from loading the model to the faithfulness curves (the worker's
        ``max_seconds``): the sampling stops in time, and the values reached are shown with their standard errors
        (or a warning that they are rough); 0 means no limit.
    baseline : Baseline
    device : Device
    gpuIndex : int
        Which NVIDIA GPU (0 the first) when ``device`` is ``Device.CUDA``.
    foreground : bool
        Build features only where the image is not background (the engine's ``foreground="auto"``), so that the
        air around the patient is no feature; off, everywhere.
    seed : int
    batchSize : int
        Windows per forward pass (halved automatically when the GPU runs out of memory); 0 means the engine's
        default.
    faithfulness : bool
        Also compute the deletion and insertion curves of the ranking (and of a random one), whose AUCs the
        status line shows; they cost at most a quarter of the estimation's forwards, within the time limit.
    """

    features: FeatureKind = FeatureKind.SUPERVOXELS
    nFeatures: int = 100
    value: ValueFunction = ValueFunction.SOFT_DICE
    nSamples: int = 0
    tolerance: float = 0.0
    timeLimit: float = 0.0
    baseline: Baseline = Baseline.MEAN
    device: Device = Device.AUTO
    gpuIndex: int = 0
    foreground: bool = True
    seed: int = 0
    batchSize: int = 0
    faithfulness: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.nFeatures < 1:
            problems.append(f"the number of features must be at least 1 (got {self.nFeatures})")
        if self.nSamples != 0 and self.nSamples < 2:
            problems.append(f"the number of samples must be 0 (auto) or at least 2 (got {self.nSamples})")
        if self.tolerance < 0:
            problems.append(f"the tolerance must be positive, or 0 for the default (got {self.tolerance})")
        if self.timeLimit < 0:
            problems.append(f"the time limit must be positive, or 0 for none (got {self.timeLimit})")
        if self.gpuIndex < 0:
            problems.append(f"the GPU number must be 0 or more (got {self.gpuIndex})")
        if self.batchSize < 0:
            problems.append(f"the batch size must be positive, or 0 for the default (got {self.batchSize})")
        if problems:
            raise ValueError("Invalid explanation settings: " + "; ".join(problems) + ".")

    def workerOptions(self) -> dict:
        """The ``options`` object of a worker request."""
        options = {
            "features": self.features.value,
            "n_features": self.nFeatures,
            "value": self.value.value,
            "nsamples": self.nSamples or "auto",
            "tolerance": self.tolerance or None,
            "max_seconds": self.timeLimit or None,
            "baseline": self.baseline.value,
            "device": self.device.workerName(self.gpuIndex),
            "foreground": "auto" if self.foreground else "none",
            "seed": self.seed,
            "faithfulness": self.faithfulness,
        }
        return options | workerBatchSize(self.batchSize)

    def shortName(self) -> str:
        """A few words for node names, e.g. ``"slic 100, soft_dice"``."""
        count = "" if self.features is FeatureKind.ORGANS else f" {self.nFeatures}"
        return f"{self.features.value}{count}, {self.value.value}"


def workerBatchSize(batchSize: int) -> dict:
    """The ``batch_size`` option of a worker request: none for 0, so that the engine's default applies."""
    return {"batch_size": batchSize} if batchSize else {}
