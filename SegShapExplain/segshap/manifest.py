"""Cohort manifests: the CSV file that lists the cases of a cohort.

A manifest has a header row with ``case_id`` and ``image`` and optionally ``reference``, ``labelmap`` and ``roi``;
paths are relative to the CSV file, and a ROI box ``x0:x1,y0:y1,z0:z1`` is quoted (as any CSV writer quotes a field
with commas). :func:`read_manifest` checks every row before anything runs and reports all bad
rows at once (:class:`ManifestError`), one line each.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .inputs import box_problem, parse_box
from .io import read_image_shape

__all__ = ["Case", "ManifestError", "read_manifest", "MANIFEST_COLUMNS"]

MANIFEST_COLUMNS = ("case_id", "image", "reference", "labelmap", "roi")
"""The columns a manifest may have; ``case_id`` and ``image`` are required."""

_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A case id names the case's output folder, so it is a plain file name."""

_BOX = re.compile(r"\s*-?\d+\s*:\s*-?\d+\s*(,\s*-?\d+\s*:\s*-?\d+\s*){2}")


@dataclass(frozen=True)
class Case:
    """One case of a cohort, its files resolved.

    Attributes
    ----------
    case_id : str
    image : Path
    reference, labelmap : Path or None
        The target segmentation(s) (default: the model's prediction) and the organ label map of organ features.
    roi : str or Path or None
        A box ``x0:x1,y0:y1,z0:z1`` of image voxels, or a mask file.
    """

    case_id: str
    image: Path
    reference: Path | None = None
    labelmap: Path | None = None
    roi: str | Path | None = None


class ManifestError(ValueError):
    """A manifest with bad rows: :attr:`problems` holds one line per problem, in row order."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        super().__init__(f"The manifest {path} has {len(problems)} problem(s):\n" + "\n".join(problems))


def read_manifest(path: str | os.PathLike) -> list[Case]:
    """The cases of a manifest, every row checked: ids (present, unique, usable as a folder name), files (present;
    images readable as NIfTI or NRRD), ROIs (a box or a file).

    Raises
    ------
    FileNotFoundError
        When the manifest does not exist.
    ManifestError
        Listing every bad row, one line each (``row N (case_id): what is wrong``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such manifest: {path}. Give a CSV with a header row: case_id,image[,...].")
    try:
        # utf-8-sig: spreadsheet programs save UTF-8 with a byte-order mark, which would glue onto "case_id".
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(path, [f"not a CSV text file in UTF-8 ({error}); save it as CSV (UTF-8)."]) from None
    missing = [c for c in ("case_id", "image") if c not in columns]
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if missing or unknown:
        raise ManifestError(
            path,
            [
                f"header: columns {columns} miss {missing} or have unknown {unknown}; the columns are "
                f"{', '.join(MANIFEST_COLUMNS)} (case_id and image required)."
            ],
        )
    if not rows:
        raise ManifestError(path, ["no cases: the manifest has a header but no rows."])
    cases, problems, seen = [], [], {}
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        case, row_problems = _case(row, path.parent)
        where = f"row {number} ({row.get('case_id') or 'no id'})"
        if case is not None and case.case_id in seen:
            row_problems.append(f"the case id is also used in row {seen[case.case_id]}; give each case its own id")
        elif case is not None:
            seen[case.case_id] = number
        problems += [f"{where}: {problem}" for problem in row_problems]
        if case is not None and not row_problems:
            cases.append(case)
    if problems:
        raise ManifestError(path, problems)
    return cases


def _case(row: dict, folder: Path) -> tuple[Case | None, list[str]]:
    problems = []
    case_id = row.get("case_id", "")
    if not _CASE_ID.fullmatch(case_id):
        problems.append(
            f"case_id {case_id!r} must be a plain name (letters, digits, '.', '_', '-'): it names the case's folder"
        )
    files: dict[str, Path | None] = {}
    shape = None
    for column in ("image", "reference", "labelmap"):
        text = row.get(column, "")
        if not text:
            if column == "image":
                problems.append("no image")
            files[column] = None
            continue
        file = folder / text
        files[column] = file
        if file.is_dir():
            problems.append(f"{column} {file} is a folder, not a file; give the file itself (NIfTI, NRRD or .seg.nrrd)")
        elif not file.is_file():
            problems.append(f"{column} {file} does not exist")
        elif column == "image":
            try:
                shape = read_image_shape(file)
            except ValueError as error:
                problems.append(str(error))
    roi: str | Path | None = row.get("roi") or None
    if roi is not None and _BOX.fullmatch(roi):
        problems += _box_problems(roi, shape)
    elif roi is not None:
        roi = folder / roi
        if not roi.is_file():
            problems.append(f"roi {row['roi']!r} is neither a box x0:x1,y0:y1,z0:z1 nor an existing mask file")
    if problems and not _CASE_ID.fullmatch(case_id):
        return None, problems
    return Case(case_id, files["image"], files["reference"], files["labelmap"], roi), problems


def _box_problems(text: str, shape: tuple[int, ...] | None) -> list[str]:
    """What is wrong with a ROI box for an image of this shape (``None``: the image could not be read)."""
    problem = None if shape is None else box_problem(parse_box(text), shape[:3])
    return [f"roi {text!r}: {problem}"] if problem else []
