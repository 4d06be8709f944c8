"""Where the extension's files are: the ``Resources`` folder, and in it the demo (the embedded model and MRI).

Nothing here imports the engine or Qt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def resourcesFolder() -> Path:
    """``Resources/`` beside the module (a Slicer install) or at the repository's top (a source checkout)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "Resources", here.parent / "Resources"):
        if (candidate / "UI").is_dir():
            return candidate
    raise FileNotFoundError(f"SegShapExplain's Resources folder was not found beside {here}; reinstall the extension.")


@dataclass(frozen=True)
class DemoCase:
    """The demo as ``Resources/Demo/demo.json`` describes it (``segshap demo`` explains the same case).

    ``roi`` is a box of image voxels, ``(start, stop)`` per axis i, j, k.
    """

    image: Path
    model: Path
    target: str
    roi: tuple[tuple[int, int], ...]


def demoCase() -> DemoCase:
    description = resourcesFolder() / "Demo" / "demo.json"
    demo = json.loads(description.read_text())
    return DemoCase(
        image=(description.parent / demo["image"]).resolve(),
        model=(description.parent / demo["model"]).resolve(),
        target=demo["target"],
        roi=tuple((int(start), int(stop)) for start, stop in demo["roi"]),
    )
