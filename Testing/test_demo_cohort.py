"""The demo cohort (scripts/demo_cohort.py): reproducible, varied subjects whose tissue maps match their images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from segshap.io import read_image, read_segmentation
from segshap.manifest import read_manifest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_cohort.py"


@pytest.fixture(scope="module")
def demo_cohort():
    spec = importlib.util.spec_from_file_location("demo_cohort", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_same_seed_derives_the_same_subjects_and_each_differs(demo_cohort, tmp_path):
    first = demo_cohort.write_cohort(tmp_path / "a", cases=2, seed=7)
    second = demo_cohort.write_cohort(tmp_path / "b", cases=2, seed=7)
    cases = read_manifest(first)
    assert [case.case_id for case in cases] == ["subject00", "subject01"]
    images = []
    for case, again in zip(cases, read_manifest(second)):
        image, affine = read_image(case.image)
        image_again, affine_again = read_image(again.image)
        assert np.array_equal(image, image_again) and np.array_equal(affine, affine_again)
        images.append(image)
    assert not np.array_equal(images[0], images[1])
    other = read_image(read_manifest(demo_cohort.write_cohort(tmp_path / "c", cases=1, seed=8))[0].image)[0]
    assert other.shape != images[0].shape or not np.array_equal(other, images[0])


def test_each_subjects_tissues_are_named_and_lie_on_its_image(demo_cohort, tmp_path):
    template = demo_cohort.load_template()
    spacings, volume_changes = set(), []
    for index, rng in enumerate(np.random.default_rng(3).spawn(4)):
        image, labels, affine = demo_cohort.derive_case(template, rng)
        spacings.add(tuple(np.round(np.abs(np.diag(affine)[:3]), 2)))
        # T1 contrast: white matter brighter than gray matter, gray brighter than CSF, nothing outside the brain.
        wm, gm, csf = (np.median(image[labels == label]) for label in (2, 1, 3))
        assert wm > 1.1 * gm and gm > 1.2 * csf, (index, wm, gm, csf)
        assert not image[labels == 0].any()
        volume = (labels > 0).sum() * abs(np.linalg.det(affine[:3, :3]))
        volume_changes.append(abs(volume / ((template.brain > 0.5).sum() * 8.0) - 1.0))
    # Deformed, not only resampled: the random affine's scaling changes brain volumes by several per cent.
    assert max(volume_changes) > 0.05, volume_changes
    assert len(spacings) > 1
    manifest = demo_cohort.write_cohort(tmp_path, cases=1, seed=0)
    segments, _ = read_segmentation(read_manifest(manifest)[0].labelmap)
    assert list(segments) == ["gray_matter", "white_matter", "csf"]
