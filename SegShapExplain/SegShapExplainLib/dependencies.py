"""Which Python packages the worker needs that 3D Slicer's Python lacks, found without importing any of them, and
their installation: torch through the PyTorch extension, the rest from ``Resources/requirements.txt``; and what to
tell when the installed PyTorch cannot use the computer's GPU (:func:`torchGpuMessage`).

The panel asks once (one OK/Cancel listing them, :func:`installMessage`), then calls :func:`installDependencies`,
which asks nothing. Nothing here imports the engine or Qt.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

from .resources import resourcesFolder

IMPORT_NAMES = {"scikit-image": "skimage", "scikit-learn": "sklearn", "pynrrd": "nrrd", "pyyaml": "yaml"}
"""Distribution names whose module is named differently."""

MINIMUM_TORCH = "2.6"
"""The oldest PyTorch the engine runs on: it reads checkpoints with ``torch.serialization.safe_globals`` naming a
global by its pickled path (NumPy 1.x's ``numpy.core.multiarray.scalar``), which PyTorch 2.6 introduced."""
_PYTORCH_MODULE = "the PyTorch Utils module (PyTorch extension)"


def requirementsFile() -> Path:
    return resourcesFolder() / "requirements.txt"


def readRequirements(path: str | Path | None = None) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = Path(path or requirementsFile()).read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def distributionName(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def torchIsRecentEnough(version: str) -> bool:
    """Whether a PyTorch version (``"2.13.0+cu128"``) is :data:`MINIMUM_TORCH` or newer."""
    numbers = [int(n) for n in re.findall(r"\d+", re.match(r"[\d.]*", version).group())]
    return numbers >= [int(n) for n in MINIMUM_TORCH.split(".")]


def _torchUsable() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    try:
        return torchIsRecentEnough(importlib.metadata.version("torch"))
    except importlib.metadata.PackageNotFoundError:  # a torch without its metadata (built in place): take it
        return True


def missingPackages(path: str | Path | None = None) -> list[str]:
    """``torch`` (if missing or older than :data:`MINIMUM_TORCH`) and the requirements whose module cannot be
    found, in install order."""
    missing = [] if _torchUsable() else ["torch"]
    for requirement in readRequirements(path):
        name = distributionName(requirement)
        if importlib.util.find_spec(IMPORT_NAMES.get(name, name.replace("-", "_"))) is None:
            missing.append(requirement)
    return missing


def installMessage(missing: list[str]) -> str:
    """The text of the one confirmation the panel shows before installing."""
    lines = ["SegShapExplain needs these Python packages in 3D Slicer's Python:", ""]
    lines += [
        f"  • torch {MINIMUM_TORCH} or newer (through the PyTorch extension, matched to your GPU driver)"
        if item == "torch"
        else f"  • {item}"
        for item in missing
    ]
    lines += ["", "Install them now? This downloads several hundred MB and may take a few minutes."]
    return "\n".join(lines)


def installDependencies(missing: list[str]) -> None:
    """Install what :func:`missingPackages` listed, without asking (the panel has asked already).

    Raises
    ------
    RuntimeError
        Saying what to do: the PyTorch extension is missing, PyTorch could not be installed, or packages are still
        missing afterwards (pip's messages are in the Python console).
    """
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(
                "SegShapExplain needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, restart "
                "3D Slicer and try again."
            ) from None
        # installTorch (SlicerPyTorch's PyTorchUtils.py) hands the requirement to light-the-torch, which picks the
        # CUDA build the NVIDIA driver supports, or the CPU build without one: no computation backend is forced.
        logic = PyTorchUtils.PyTorchUtilsLogic()
        if logic.installTorch(askConfirmation=False, torchVersionRequirement=f">={MINIMUM_TORCH}") is None:
            raise RuntimeError("PyTorch could not be installed; pip's messages are in the Python console.")
    if any(item != "torch" for item in missing):
        _pipInstall(requirementsFile())
    importlib.invalidate_caches()  # the finders cached the folders' contents before pip wrote into them
    still = missingPackages()
    if still:
        raise RuntimeError(
            f"Still missing after installing: {', '.join(still)}. Restart 3D Slicer and try again; pip's messages "
            "are in the Python console."
        )


def _pipInstall(requirements: Path) -> None:
    import slicer.util

    try:
        import slicer.pydeps as pydeps  # Slicer 5.11+
    except ImportError:
        slicer.util.pip_install(["-r", str(requirements)])
        return
    pydeps.pip_ensure(
        pydeps.load_requirements(str(requirements)),
        skip_packages=["torch"],
        prompt_install=False,
        requester="SegShapExplain",
    )


def torchGpuMessage(facts: dict) -> str | None:
    """What to tell when the worker's PyTorch cannot use the computer's NVIDIA GPU; ``None`` when nothing is wrong
    (it uses the GPU, or there is none).

    Parameters
    ----------
    facts : dict
        The ``torch`` field of the worker's ``describe`` answer (``segshap.jobs.torch_facts``): ``version``,
        ``cuda`` (the CUDA version of the build, ``None`` for a CPU-only build), ``cuda_available``,
        ``unsupported_gpus`` (``name``, ``capability``) and ``nvidia_gpus`` (what the driver lists when PyTorch
        sees no GPU).

    Returns
    -------
    str or None
    """
    version = facts["version"]
    if facts["cuda_available"] and facts["unsupported_gpus"]:
        gpus = ", ".join(f"{gpu['name']} ({gpu['capability']})" for gpu in facts["unsupported_gpus"])
        return (
            f"PyTorch {version} in 3D Slicer has no code for this computer's GPU: {gpus}. Reinstall PyTorch from "
            f"{_PYTORCH_MODULE} with a build for it (a recent GPU needs a recent CUDA build, an old one an older CUDA "
            "build), and restart; until then choose the CPU as device."
        )
    if facts["cuda_available"] or not facts["nvidia_gpus"]:
        return None
    gpus = ", ".join(facts["nvidia_gpus"])
    if facts["cuda"] is None:
        return (
            f"PyTorch {version} in 3D Slicer is a CPU-only build, but this computer has an NVIDIA GPU ({gpus}). "
            f"Reinstall PyTorch from {_PYTORCH_MODULE} with a CUDA build (uninstall it, then install it again with "
            "the computation backend detected automatically, and restart) to explain on the GPU; on the CPU it is "
            "much slower."
        )
    return (
        f"PyTorch {version} in 3D Slicer is built for CUDA {facts['cuda']} but cannot use this computer's NVIDIA GPU "
        f"({gpus}): the NVIDIA driver is probably older than CUDA {facts['cuda']} needs. Update the NVIDIA driver, "
        f"or reinstall PyTorch from {_PYTORCH_MODULE} with the computation backend detected automatically (it "
        "matches the driver), and restart."
    )
