"""Where the extension's files are: the ``Resources`` folder, and in it the demo (the embedded model and MRI, also
listed in the Sample Data module); the module's help text.

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


def demoSampleData() -> dict:
    """The arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` that list the demo MRI in the
    Sample Data module (a local file: nothing is downloaded)."""
    demo = demoCase()
    return {
        "category": "SegShapExplain",
        "sampleName": "SegShapExplainDemoMRI",
        "uris": demo.image.as_uri(),
        "fileNames": demo.image.name,
        "nodeNames": "SegShapExplain demo MRI",
        "thumbnailFileName": str(resourcesFolder() / "Icons" / "SegShapExplain.png"),
        "loadFileType": "VolumeFile",
    }


HELP_TEXT = """\
<p>Explains why a 3D segmentation model segmented a structure: how much each part of the image (a supervoxel, a
cell or an organ) moves the model's score on the target segment, as Shapley values. Every value is computed
exactly as the model's full sliding-window inference would, on images where parts are replaced by a baseline; it
runs in a background process, so Slicer stays responsive and Cancel leaves the scene as it was.</p>
<p><b>First run:</b> load a volume (Sample Data: SegShapExplain demo MRI), keep the demo model, choose the target
class and press Explain. The first time, PyTorch and the other packages are installed after one confirmation.</p>
<p><b>Reading the result:</b> red features support the segmentation, blue ones work against it; the stronger, the
more opaque, and weak ones are not tinted. The table lists the features by strength with their standard errors;
select a row to centre the views on it. The status line gives the faithfulness check: removing the features in
order of value should lower the score much faster than removing them at random (deletion AUC well below the
random order's).</p>
<p><b>Limits:</b> values explain this model on this image, not the anatomy; they depend on the features, the
baseline and the value function chosen. A run stopped by the time limit gives rough values (the status and the
table's standard errors say so). Features are built only where they can change the score, and by default only
inside the anatomy. See <a href='https://github.com/segshapexplain/SegShapExplain/blob/main/docs/slicer.md'>the
guide</a>.</p>
"""
"""The module's help text (``parent.helpText``)."""
