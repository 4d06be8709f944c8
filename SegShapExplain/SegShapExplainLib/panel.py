"""The panel's rules, without Qt: what the model's files say, what each button allows and which message shows
(also while an explanation runs: :func:`liveStatus`).

``SegShapExplain.py`` only binds widgets: it gathers what the widgets hold into :class:`PanelInputs`, asks
:func:`panelState` what to show, and applies the :class:`PanelState`. Every rule is here, where tests reach it
without a Slicer application. The model's classes are read from its files (:func:`modelStatus`, through the engine's
standard-library ``segshap.modelinfo``), so a fresh install, before PyTorch and the other packages are in Slicer's
Python, lists them and lets the user press Explain, which installs the packages after one confirmation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segshap.modelinfo import read_model_info

from .settings import Device, FeatureKind

FORMAT_NAMES = {"torchscript": "TorchScript", "monai_bundle": "MONAI bundle", "nnunet": "nnU-Net"}
STOP_TOOLTIP = (
    "Stop sampling now and keep the estimate: the run finishes as usual (faithfulness check, every output) with "
    "the latest values the worker sent. Cancel keeps nothing."
)
STOPPING_STATUS = "Stopping: finishing with the current estimate..."


@dataclass(frozen=True)
class ModelStatus:
    """What the panel knows of the chosen model before anything is loaded.

    Attributes
    ----------
    usable : bool
        The files hold a model segshap can load (the classes may still be unknown).
    classes : tuple of str
        The class names to offer as targets, background left out (empty when the files do not name them).
    needsTrust : bool
        A MONAI bundle, whose configuration runs code: the Trust checkbox applies to it.
    message : str
        The line under the model: its format and classes, or what is wrong and how to fix it.
    """

    usable: bool
    classes: tuple[str, ...]
    needsTrust: bool
    message: str


def modelStatus(modelPath: str | Path | None, missingPackages: list[str] | tuple[str, ...] = ()) -> ModelStatus:
    """Read a model's format and classes from its files (no PyTorch needed) and word them for the panel.

    Parameters
    ----------
    modelPath : str or path, optional
        What the model selector holds.
    missingPackages : list of str
        The worker's packages missing from Slicer's Python (``dependencies.missingPackages()``): the message then
        says that Explain installs them.
    """
    if not modelPath or str(modelPath) in ("", "."):
        return ModelStatus(False, (), False, "Choose a model file or folder to list its classes.")
    try:
        info = read_model_info(modelPath)
    except (OSError, ValueError) as error:
        return ModelStatus(False, (), False, f"This model cannot be used: {error}")
    name = FORMAT_NAMES.get(info.format, info.format)
    if info.classes is None:
        message = f"{name} model; its classes are not listed in its files ({info.classes_reason}) Type the target."
        classes: tuple[str, ...] = ()
    else:
        classes = tuple(label for index, label in sorted(info.classes.items()) if index != 0)
        message = f"{name} model, classes: {', '.join(classes)}."
    if info.needs_trust:
        message += " Loading a MONAI bundle runs code from it: tick Trust only for a bundle from people you trust."
    if missingPackages:
        message += (
            f" The Python packages it needs ({', '.join(map(_packageName, missingPackages))}) are not installed yet: "
            "Explain installs them first, after one confirmation."
        )
    return ModelStatus(True, classes, info.needs_trust, message)


def _packageName(requirement: str) -> str:
    return requirement.split(">")[0].split("=")[0].split("<")[0].strip() or requirement


@dataclass(frozen=True)
class PanelInputs:
    """What the panel's widgets hold, as plain values.

    Attributes
    ----------
    hasVolume : bool
        An input volume is chosen.
    model : ModelStatus
    target : str
        The target class as chosen or typed.
    trustModel : bool
    segmentMissing : bool
        A target segmentation is chosen but none of its segments.
    running : bool
        A job (explanation or segmentation) is running.
    features : FeatureKind
    hasOrganSegmentation : bool
        A segmentation is chosen as the organs of organ features.
    device : Device
    autoSamples : bool
    hasResult : bool
        A result is shown (Show 3D and the result selector apply to it).
    hasEstimate : bool
        The running explanation has sent its first live estimate.
    stopping : bool
        Stop and keep was pressed: the run is finishing with its estimate.
    """

    hasVolume: bool
    model: ModelStatus
    target: str
    trustModel: bool = False
    segmentMissing: bool = False
    running: bool = False
    features: FeatureKind = FeatureKind.SUPERVOXELS
    hasOrganSegmentation: bool = False
    device: Device = Device.AUTO
    autoSamples: bool = True
    hasResult: bool = False
    hasEstimate: bool = False
    stopping: bool = False


@dataclass(frozen=True)
class PanelState:
    """What the panel shows for some :class:`PanelInputs`: each widget's enabled/visible state and text."""

    explainEnabled: bool
    explainText: str
    explainToolTip: str
    segmentEnabled: bool
    placeBoxEnabled: bool
    trustVisible: bool
    organSegmentationEnabled: bool
    gpuIndexEnabled: bool
    nSamplesEnabled: bool
    toleranceEnabled: bool
    show3DEnabled: bool
    modelMessage: str
    stopVisible: bool
    stopEnabled: bool
    stopToolTip: str


def panelState(inputs: PanelInputs) -> PanelState:
    """The rules of the panel.

    Explain (Cancel while a job runs) needs a volume, a usable model, a target and, for a MONAI bundle, Trust; its
    tooltip says what is missing. Segment with the model needs a volume and a usable model. Organs from a
    segmentation apply to organ features only; the GPU number to the CUDA device; the number of samples when it is
    not automatic, the tolerance when it is. Stop and keep shows while an explanation runs once its first estimate
    is in (there is something to keep), and is pressed once.
    """
    running = inputs.running
    missing = []
    if not inputs.hasVolume:
        missing.append("an input volume")
    if not inputs.model.usable:
        missing.append("a model")
    if not inputs.target.strip():
        missing.append("a target class")
    if inputs.model.needsTrust and not inputs.trustModel:
        missing.append("Trust for this MONAI bundle")
    if inputs.segmentMissing:
        missing.append("a segment of the target segmentation (or no target segmentation)")
    organFeatures = inputs.features in (FeatureKind.ORGANS, FeatureKind.ORGAN_AWARE)
    if inputs.hasOrganSegmentation and not organFeatures:
        missing.append("organ features for the organs segmentation (or no organs segmentation)")
    if running and inputs.hasEstimate:
        tip = "Stop the run and discard its estimate; the scene stays as it was (Stop and keep keeps it)."
    elif running:
        tip = "Stop the run; the scene stays as it was."
    elif missing:
        tip = "Choose " + ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1] + "."
    else:
        tip = "Explain why the model segmented the target (Shapley values of the features) in a background process."
    modelReady = inputs.hasVolume and inputs.model.usable and (inputs.trustModel or not inputs.model.needsTrust)
    return PanelState(
        explainEnabled=running or not missing,
        explainText="Cancel" if running else "Explain",
        explainToolTip=tip,
        segmentEnabled=not running and modelReady,
        placeBoxEnabled=not running and inputs.hasVolume,
        trustVisible=inputs.model.needsTrust,
        organSegmentationEnabled=organFeatures or inputs.hasOrganSegmentation,
        gpuIndexEnabled=inputs.device is Device.CUDA,
        nSamplesEnabled=not inputs.autoSamples,
        toleranceEnabled=inputs.autoSamples,
        show3DEnabled=inputs.hasResult and not running,
        modelMessage=inputs.model.message,
        stopVisible=running and inputs.hasEstimate,
        stopEnabled=running and inputs.hasEstimate and not inputs.stopping,
        stopToolTip=STOPPING_STATUS if inputs.stopping else STOP_TOOLTIP,
    )


def liveStatus(fields: dict) -> str:
    """The status line while an explanation samples, from its latest ``estimate`` event: which update (coarse while
    the engine still estimates regions of features), the samples and seconds it rests on, then the engine's own words
    on how settled it is (``text``, which names the regions and the share of the budget).

    E.g. ``"Estimate 4 (1,234 samples, 12 s): top 10 unchanged for 3 updates, 41 % of the budget."``; the final one
    says that the result is being finished (faithfulness check, outputs).
    """
    if fields.get("final"):
        name = "Final estimate"
    else:
        coarse = "Coarse estimate" if fields.get("level") == "regions" else "Estimate"
        name = f"{coarse} {fields.get('update', '')}".rstrip()
    counts = []
    if fields.get("coalitions") is not None:
        counts.append(f"{int(fields['coalitions']):,} samples")
    if fields.get("seconds") is not None:
        counts.append(f"{float(fields['seconds']):.0f} s")
    line = name + (f" ({', '.join(counts)})" if counts else "")
    text = str(fields.get("text") or "").strip().rstrip(".")
    if fields.get("final"):
        return line + (f": {text}; " if text else ": ") + "finishing the result..."
    return line + (f": {text}." if text else ".")
