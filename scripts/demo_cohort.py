#!/usr/bin/env python
"""Derive the demo cohort: brain MRIs of different "subjects" made from the MNI152 templates nilearn ships.

The machines this project runs on have no multi-subject dataset, so the cohort is derived, honestly labelled as
such, from the one subject there is: nilearn's 2 mm MNI152 2009 T1 template and its gray/white matter probability
maps and brain mask (inside nilearn's wheel: nothing is downloaded). Each case is the template seen through what
makes real scans of different people differ:

* anatomy: a random smooth deformation (displacements drawn on a coarse grid and interpolated) on top of a random
  affine (rotation, anisotropic scaling, shift), so brains differ in size, shape and position;
* acquisition: a multiplicative bias field (smooth, as coil sensitivity makes it), Rician noise, and a voxel
  spacing of its own (isotropic 1.75-2.5 mm, or thick slices), sampled after a blur matching the coarser voxel so
  that partial volume looks like an acquisition's, not like decimation.

The tissue label map of a case (gray matter, white matter, CSF: the argmax of the deformed probability maps inside
the deformed brain mask, along which the image is skull-stripped as the template is) is written on the case's grid
as a ``.seg.nrrd`` whose segments name the tissues, so that ``segshap cohort --features organs`` explains each
class by the tissues. The manifest ``cases.csv`` lists the
cases. The same seed gives the same files.

Usage (from the repository root, in the project's environment)::

    python scripts/demo_cohort.py --out DIR [--cases 10] [--seed 0]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

TISSUES = {1: "gray_matter", 2: "white_matter", 3: "csf"}
SPACINGS_MM = ((2.0, 2.0, 2.0), (1.75, 1.75, 1.75), (2.5, 2.5, 2.5), (2.0, 2.0, 3.5), (1.75, 1.75, 3.0))
"""The voxel spacings a case is acquired at: isotropic, coarser, finer, or thick axial slices."""


@dataclass(frozen=True)
class Template:
    """The MNI152 templates at 2 mm: T1 intensities, tissue probabilities and the brain mask, with their affine."""

    t1: np.ndarray
    gray: np.ndarray
    white: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


def load_template() -> Template:
    """The templates from nilearn's wheel (its 2 mm resampling; denormal background values zeroed)."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2)
    data = np.asarray(t1.get_fdata(dtype=np.float32))

    def tissue(loader) -> np.ndarray:
        return np.clip(np.asarray(loader(resolution=2).get_fdata(dtype=np.float32)), 0.0, 1.0)

    return Template(
        t1=np.where(data > 1e-6, data, 0.0).astype(np.float32),
        gray=tissue(datasets.load_mni152_gm_template),
        white=tissue(datasets.load_mni152_wm_template),
        brain=tissue(datasets.load_mni152_brain_mask),
        affine=t1.affine.copy(),
    )


def derive_case(template: Template, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One derived subject: its T1 image (float32), tissue labels (uint8, :data:`TISSUES`) and affine."""
    spacing = np.array(SPACINGS_MM[rng.integers(len(SPACINGS_MM))])
    # The case's grid covers the template's field of view at its own spacing, centred on it.
    extent = np.array(template.t1.shape) * 2.0
    shape = np.ceil(extent / spacing).astype(int)
    centre = template.affine @ np.append((np.array(template.t1.shape) - 1) / 2.0, 1.0)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.sign(np.diag(template.affine)[:3]) * spacing)
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((shape - 1) / 2.0)

    # Where each voxel of the case comes from in the template: case voxel -> RAS -> deformation -> template voxel.
    voxels = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3] @ voxels + affine[:3, 3:4]
    world = _random_affine(rng) @ np.vstack([world, np.ones((1, world.shape[1]), np.float32)])
    world = world[:3] + _smooth_displacement(rng, shape).reshape(3, -1)
    source = np.linalg.solve(template.affine, np.vstack([world, np.ones((1, world.shape[1]))]))[:3]

    # Partial volume of a coarser voxel: blur the template by the spacing ratio before sampling it.
    blur = np.sqrt(np.maximum(spacing**2 - 2.0**2, 0.0)) / 2.355 / 2.0  # FWHM in mm to sigma in template voxels

    def sample(volume: np.ndarray, smooth: bool) -> np.ndarray:
        if smooth and blur.any():
            volume = ndimage.gaussian_filter(volume, blur)
        return ndimage.map_coordinates(volume, source, order=1, mode="constant", cval=0.0).reshape(shape)

    t1 = sample(template.t1, smooth=True)
    gray, white, brain = (sample(v, smooth=False) for v in (template.gray, template.white, template.brain))
    csf = np.clip(brain - gray - white, 0.0, 1.0)
    labels = np.where(brain > 0.5, 1 + np.argmax(np.stack([gray, white, csf]), axis=0), 0).astype(np.uint8)

    # Acquisition: a smooth multiplicative bias field of +-10-25 %, then Rician noise of 1.5-4 % of the brain's
    # mean intensity (magnitude images have Rician noise).
    bias = _smooth_field(rng, shape, points=3)
    bias = np.exp(rng.uniform(0.1, 0.25) * bias / max(np.abs(bias).max(), 1e-6))
    t1 = t1 * bias
    sigma = rng.uniform(0.015, 0.04) * t1[labels > 0].mean()
    t1 = np.hypot(t1 + rng.normal(0.0, sigma, shape), rng.normal(0.0, sigma, shape))
    t1 = np.where(labels > 0, t1, 0.0)  # skull-stripped, as the template is and the demo model expects
    return (255.0 * t1 / np.percentile(t1[labels > 0], 99.5)).astype(np.float32), labels, affine


def _random_affine(rng: np.random.Generator) -> np.ndarray:
    """A rotation of up to 6 degrees about each axis, scaling by 0.9-1.1 per axis and a shift of up to 5 mm, about
    the origin of RAS (near the template's centre)."""
    angles = np.deg2rad(rng.uniform(-6.0, 6.0, 3))
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [i for i in range(3) if i != axis]
        rotation = np.eye(3)
        rotation[[a, a, b, b], [a, b, a, b]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
        matrix = rotation @ matrix
    transform = np.eye(4)
    transform[:3, :3] = matrix @ np.diag(rng.uniform(0.9, 1.1, 3))
    transform[:3, 3] = rng.uniform(-5.0, 5.0, 3)
    return transform


def _smooth_field(rng: np.random.Generator, shape, points: int) -> np.ndarray:
    """A smooth random field over ``shape``: normal values on a ``points``-per-axis grid, cubic-interpolated."""
    coarse = rng.normal(size=(points,) * 3)
    return ndimage.zoom(coarse, np.array(shape) / points, order=3, mode="nearest")[
        tuple(slice(0, n) for n in shape)
    ].astype(np.float32)


def _smooth_displacement(rng: np.random.Generator, shape) -> np.ndarray:
    """``(3, *shape)`` displacements in mm, about 2.5 mm standard deviation, smooth over about 3 cm."""
    return np.stack([2.5 * _smooth_field(rng, shape, points=6) for _ in range(3)])


def write_cohort(out: Path, cases: int, seed: int) -> Path:
    """Write ``cases`` derived cases into ``out`` (images/, tissues/, cases.csv); returns the manifest's path."""
    from segshap.io import write_image, write_segmentation

    template = load_template()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "tissues").mkdir(exist_ok=True)
    rows = ["case_id,image,labelmap"]
    for index, case_rng in enumerate(np.random.default_rng(seed).spawn(cases)):
        case_id = f"subject{index:02d}"
        image, labels, affine = derive_case(template, case_rng)
        write_image(out / "images" / f"{case_id}.nii.gz", image, affine)
        write_segmentation(out / "tissues" / f"{case_id}.seg.nrrd", labels, affine, TISSUES)
        rows.append(f"{case_id},images/{case_id}.nii.gz,tissues/{case_id}.seg.nrrd")
    manifest = out / "cases.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for images/, tissues/ and cases.csv")
    parser.add_argument("--cases", type=int, default=10, help="how many cases (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_cohort(args.out, args.cases, args.seed))


if __name__ == "__main__":
    main()
