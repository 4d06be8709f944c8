"""Cohort manifests (segshap.manifest): paths relative to the CSV, every bad row reported before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segshap.io import write_image
from segshap.manifest import Case, ManifestError, read_manifest


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.nii.gz", "b.nrrd"):
        write_image(images / name, rng.normal(size=(6, 5, 4)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    write_image(images / "a_ref.nii.gz", (rng.random((6, 5, 4)) > 0.5).astype(np.uint8), np.eye(4))
    (images / "broken.nii.gz").write_text("not an image")
    return tmp_path


def _manifest(folder: Path, text: str) -> Path:
    path = folder / "cases.csv"
    path.write_text(text)
    return path


def test_a_good_manifest_gives_its_cases_with_paths_relative_to_it(folder):
    path = _manifest(
        folder,
        'case_id,image,reference,roi\na,images/a.nii.gz,images/a_ref.nii.gz,"1:5,0:4,0:3"\nb,images/b.nrrd,,\n',
    )
    cases = read_manifest(path)
    assert cases == [
        Case("a", folder / "images/a.nii.gz", folder / "images/a_ref.nii.gz", None, "1:5,0:4,0:3"),
        Case("b", folder / "images/b.nrrd"),
    ]


def test_every_bad_row_is_reported_at_once_one_line_each(folder):
    (folder / "images" / "scans").mkdir()
    path = _manifest(
        folder,
        "case_id,image,labelmap,roi\n"
        "a,images/a.nii.gz,,\n"
        "a,images/b.nrrd,,\n"
        "c,images/missing.nii.gz,,\n"
        "d,images/broken.nii.gz,,\n"
        "../e,images/a.nii.gz,,\n"
        "f,images/a.nii.gz,images/no_labels.nii.gz,\n"
        "g,images/a.nii.gz,,1:2:3\n"
        'h,images/a.nii.gz,,"0:6,0:5,0:4"\n'  # the whole image (6, 5, 4): fine
        'i,images/a.nii.gz,,"0:7,0:5,0:4"\n'
        "j,images/scans,,\n",
    )
    with pytest.raises(ManifestError) as raised:
        read_manifest(path)
    problems = raised.value.problems
    assert len(problems) == 8, problems
    assert problems[0].startswith("row 3 (a): the case id is also used in row 2")
    assert problems[1].startswith("row 4 (c): image") and "does not exist" in problems[1]
    assert problems[2].startswith("row 5 (d): Cannot read") and "as a NIfTI image" in problems[2]
    assert problems[3].startswith("row 6 (../e): case_id '../e' must be a plain name")
    assert problems[4].startswith("row 7 (f): labelmap") and "does not exist" in problems[4]
    assert problems[5].startswith("row 8 (g): roi '1:2:3' is neither a box")
    assert problems[6].startswith(
        "row 10 (i): roi '0:7,0:5,0:4': box [(0, 7), (0, 5), (0, 4)] is empty or reaches outside the volume of shape"
    )
    assert problems[7].startswith("row 11 (j): image") and "is a folder, not a file" in problems[7]
    assert str(raised.value).count("\n") == 8  # a first line, then one line per problem


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("id,image\na,images/a.nii.gz\n", "miss ['case_id']"),
        ("case_id,image,weight\na,images/a.nii.gz,1\n", "unknown ['weight']"),
        ("case_id,image\n", "no cases"),
    ],
)
def test_a_bad_header_or_no_rows_is_refused(folder, text, fragment):
    with pytest.raises(ManifestError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        read_manifest(_manifest(folder, text))


def test_a_missing_manifest_says_what_a_manifest_is(tmp_path):
    with pytest.raises(FileNotFoundError, match="case_id,image"):
        read_manifest(tmp_path / "none.csv")


def test_a_manifest_saved_by_a_spreadsheet_program_with_a_byte_order_mark_is_read(folder):
    path = folder / "cases.csv"
    path.write_bytes("case_id,image\r\na,images/a.nii.gz\r\n".encode("utf-8-sig"))
    assert read_manifest(path) == [Case("a", folder / "images/a.nii.gz")]


def test_a_manifest_that_is_not_utf8_text_is_refused_naming_the_file(folder):
    path = folder / "cases.csv"
    path.write_bytes(b"case_id,image\n\xff\xfe\x00a,\x80\x81\n")
    with pytest.raises(ManifestError) as raised:
        read_manifest(path)
    assert str(raised.value).startswith(f"The manifest {path} has 1 problem(s)")
    assert raised.value.problems[0].startswith("not a CSV text file in UTF-8")
