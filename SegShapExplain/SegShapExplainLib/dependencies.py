"""Which Python packages the worker needs that 3D Slicer's Python lacks, found without importing any of them, and
their installation: torch through the PyTorch extension, the rest from ``Resources/requirements.txt``.

The panel asks once (one OK/Cancel listing them, :func:`installMessage`), then calls :func:`installDependencies`,
which asks nothing. Nothing here imports the engine or Qt.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from .resources import resourcesFolder

IMPORT_NAMES = {"scikit-image": "skimage", "scikit-learn": "sklearn", "pynrrd": "nrrd", "pyyaml": "yaml"}
"""Distribution names whose module is named differently."""


def requirementsFile() -> Path:
    return resourcesFolder() / "requirements.txt"


def readRequirements(path: str | Path | None = None) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = Path(path or requirementsFile()).read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def distributionName(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def missingPackages(path: str | Path | None = None) -> list[str]:
    """``torch`` (if missing) and the requirements whose module cannot be found, in install order."""
    missing = [] if importlib.util.find_spec("torch") else ["torch"]
    for requirement in readRequirements(path):
        name = distributionName(requirement)
        if importlib.util.find_spec(IMPORT_NAMES.get(name, name.replace("-", "_"))) is None:
            missing.append(requirement)
    return missing


def installMessage(missing: list[str]) -> str:
    """The text of the one confirmation the panel shows before installing."""
    lines = ["SegShapExplain needs these Python packages in 3D Slicer's Python:", ""]
    lines += [
        f"  • {item}" + (" (through the PyTorch extension, matched to your GPU driver)" if item == "torch" else "")
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
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            raise RuntimeError("PyTorch could not be installed; pip's messages are in the Python console.")
    if any(item != "torch" for item in missing):
        _pipInstall(requirementsFile())
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
