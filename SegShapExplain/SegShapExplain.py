"""3D Slicer module: explain a segmentation model's output with efficient KernelSHAP over supervoxels.

GUI and self-test only; the logic lives in ``SegShapExplainLib`` (no Qt) and the engine in ``segshap`` (no Slicer).
"""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget


class SegShapExplain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegShapExplain"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegShapExplain developers"]
        self.parent.helpText = (
            "Explains why a 3D segmentation model segmented a structure: KernelSHAP values of supervoxels, computed "
            "exactly and efficiently by the segshap engine."
        )
        self.parent.acknowledgementText = (
            "Builds on efficient KernelSHAP for patch-based 3D segmentation (Coimbra Brioso et al., arXiv 2604.11775)."
        )


class SegShapExplainWidget(ScriptedLoadableModuleWidget):
    """The panel. Until it is built, the engine is reachable from the Python console as ``import segshap``."""
