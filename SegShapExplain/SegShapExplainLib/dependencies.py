"""Which Python packages the worker needs that 3D Slicer's Python lacks, found without importing any of them.

The panel asks once (one OK/Cancel listing them), then installs torch through the PyTorch extension and the rest
from ``Resources/requirements.txt``. Nothing here imports the engine or Qt.
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
