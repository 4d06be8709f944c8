"""Test volumes and files: oblique voxel-to-RAS affines, and segmentations written as 3D Slicer writes them."""

from __future__ import annotations

import nibabel
import numpy as np


def oblique_affine(spacing=(1.5, 2.5, 2.0), codes_sign=(-1, -1, 1), angles=(0.25, -0.15, 0.1), origin=(40, -30, 12)):
    """An LPS-like (x and y flipped), anisotropic, rotated voxel-to-RAS affine."""
    rotation = nibabel.eulerangles.euler2mat(*angles)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(np.multiply(codes_sign, spacing))
    affine[:3, 3] = origin
    return affine


def write_slicer_segmentation(path, layers: np.ndarray, affine: np.ndarray, segments: list[tuple[str, int, int]]):
    """A .seg.nrrd laid out as 3D Slicer saves one: a list axis of layers, segments named in the header."""
    import nrrd

    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    header = {
        "space": "left-posterior-superior",
        "space directions": np.vstack([np.full((1, 3), np.nan), lps[:, :3].T]),
        "space origin": lps[:, 3],
        "kinds": ["list", "domain", "domain", "domain"],
    }
    for index, (name, layer, label) in enumerate(segments):
        header.update(
            {
                f"Segment{index}_ID": f"Segment_{index + 1}",
                f"Segment{index}_Name": name,
                f"Segment{index}_Layer": str(layer),
                f"Segment{index}_LabelValue": str(label),
            }
        )
    nrrd.write(str(path), np.ascontiguousarray(layers.astype(np.uint8)), header)
