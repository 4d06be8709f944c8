"""A cohort's tables: from the case folders of its output to ``cohort.csv``, ``cohort.json`` and ``cohort.png``,
the failures in ``failed.csv``, and :class:`CohortResult`, what a run hands back.

The output folder's layout: ``cases/<case_id>/`` holds one complete explanation per case (as
:meth:`segshap.Explanation.save` writes it), ``failed.csv`` the cases that failed with a one-line reason each, and
:func:`aggregate` rebuilds the three cohort files from them.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..inputs import ArgumentError
from ..io import json_number
from ..staging import StagedOutput
from .figure import cohort_figure

__all__ = [
    "CohortResult",
    "aggregate",
    "COHORT_COLUMNS",
    "CASES",
    "MissingDependency",
    "cohort_dependency",
    "read_failed",
    "write_failed",
]

COHORT_COLUMNS = ("case_id", "target", "feature", "organ", "value", "stderr", "voxels", "normalised")
"""The columns of ``cohort.csv``: one row per case, target and feature. ``normalised`` is the value divided by the
case's ``full_value - base_value`` for that target, so cases of different size compare."""

CASES = "cases"
"""The folder of complete cases inside a cohort's output folder."""

_FAILED = "failed.csv"
_NO_CRASH_HANDLER = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
_PER_CASE_SETTINGS = ("roi_box", "support_box")
_log = logging.getLogger("segshap")


class MissingDependency(ImportError):
    """An optional package that cohorts need (Ray, pandas) is not installed; the message says how to install it."""


def cohort_dependency(name: str):
    """Ray or pandas, which only cohorts need, or :class:`MissingDependency` saying how to install them.

    Ray is imported with its crash handler left out of this process (``RAY_DISABLE_FAILURE_SIGNAL_HANDLER``, read
    when Ray is first imported; its workers keep theirs): in the driver it takes SIGTERM too and can abort the run
    before it has cleaned up.
    """
    ours = name == "ray" and name not in sys.modules and _NO_CRASH_HANDLER not in os.environ
    if ours:
        os.environ[_NO_CRASH_HANDLER] = "1"
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise MissingDependency(
            f"Cohorts need {name}, which is not installed ({error}): pip install 'segshap[cohort]'."
        ) from error
    finally:
        if ours:
            del os.environ[_NO_CRASH_HANDLER]  # so that the workers Ray starts keep their crash handler


@dataclass
class CohortResult:
    """What a cohort run produced, read back from its output folder.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per case, target and feature (:data:`COHORT_COLUMNS`).
    failed : dict of str to str
        Case id to a one-line reason, for the cases that failed twice.
    out : Path
        The output folder.
    """

    table: object
    failed: dict[str, str] = field(default_factory=dict)
    out: Path | None = None

    @property
    def cases(self) -> int:
        """How many cases are complete."""
        return int(self.table["case_id"].nunique()) if len(self.table) else 0

    @property
    def summary(self) -> str:
        """One line: how many cases are complete, and the failures with their reasons."""
        failures = "; ".join(f"{case}: {reason}" for case, reason in self.failed.items())
        return f"Cohort: {self.cases} case(s) explained, {len(self.failed)} failed" + (
            f": {failures}" if failures else ""
        )

    @property
    def outputs(self) -> dict[str, str]:
        """The aggregated files (``csv``, ``json``, ``png``), the ``cases`` folder and, when any case failed,
        ``failed``, by name: absolute paths."""
        out = Path(self.out).absolute()
        outputs = {name: str(out / f"cohort.{name}") for name in ("csv", "json", "png")}
        outputs["cases"] = str(out / CASES)
        if self.failed:
            outputs["failed"] = str(out / _FAILED)
        return outputs

    def matrix(self, target: str) -> object:
        """Per organ, the ``mean``, ``sd`` and ``n`` across cases of the normalised values for one target (organ
        features only: other features do not correspond from case to case)."""
        rows = self.table[self.table["target"] == target]
        if rows.empty:
            known = sorted(self.table["target"].unique())
            raise ValueError(f"No rows for target {target!r}; the cohort's targets are {known}.")
        if rows["organ"].eq("").all():
            raise ValueError("matrix() needs organ features (features='organs'): supervoxels differ from case to case.")
        grouped = rows.groupby("organ")["normalised"]
        return grouped.agg(mean="mean", sd="std", n="count").sort_values("mean", ascending=False)

    def organ_matrix(self) -> object:
        """Target class x input organ: the mean normalised attribution across cases (organ features only)."""
        if self.table["organ"].eq("").all():
            raise ValueError("organ_matrix() needs organ features (features='organs').")
        return self.table.pivot_table(index="target", columns="organ", values="normalised", aggfunc="mean")


def read_failed(out: Path) -> dict[str, str]:
    """The failures recorded in ``out/failed.csv``: case id to reason (empty when there is none)."""
    path = out / _FAILED
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["case_id"]: row["reason"] for row in csv.DictReader(handle)}


def write_failed(out: Path, failed: dict[str, str]) -> None:
    """Record the failures in ``out/failed.csv`` (removed when there is none)."""
    path = out / _FAILED
    if not failed:
        path.unlink(missing_ok=True)
        return
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "reason"])
        writer.writerows(sorted(failed.items()))
    os.replace(partial, path)  # whole or not at all


def aggregate(out: str | os.PathLike) -> CohortResult:
    """Rebuild ``cohort.csv``, ``cohort.json`` and ``cohort.png`` from the case folders of ``out`` (and
    ``failed.csv``).

    ``cohort.json`` holds the cases' settings and versions (those of the first case, and which cases differ from
    it: a rerun with other options mixes them), each case's values of the full image and of the baseline, the
    failures and, per target, the organs' mean, standard deviation and count of normalised values.

    Raises
    ------
    MissingDependency
        pandas is not installed.
    ArgumentError
        ``out`` holds no ``cases/`` folder.
    """
    pandas = cohort_dependency("pandas")
    out = Path(out)
    if not (out / CASES).is_dir():
        raise ArgumentError(
            "out", f"{out} holds no cohort: it has no {CASES}/ folder. Give {{argument}} of a cohort run."
        )
    rows, cases, reports = [], {}, {}
    for folder in sorted(p for p in (out / CASES).iterdir() if p.is_dir()):
        report = json.loads((folder / "explanation.json").read_text())
        names = [t["name"] for t in report["targets"]]
        rows += _case_rows(folder.name, report)
        reports[folder.name] = report
        cases[folder.name] = {
            "targets": names,
            "features": len(report["features"]),
            "exact": report["exact"],
            "efficiency_error": report["efficiency_error"],
            "full_value": dict(zip(names, np.atleast_1d(report["full_value"]).tolist())),
            "base_value": dict(zip(names, np.atleast_1d(report["base_value"]).tolist())),
        }
    table = pandas.DataFrame(rows, columns=list(COHORT_COLUMNS))
    failed = read_failed(out)
    summary = {}
    for target, part in table.groupby("target"):
        per_organ = part[part["organ"] != ""].groupby("organ")["normalised"]
        summary[target] = {
            "cases": int(part["case_id"].nunique()),
            "organs": {
                organ: {"mean": json_number(v.mean()), "sd": json_number(v.std()), "n": int(v.count())}
                for organ, v in per_organ
            },
        }
    record = {**_common_settings(reports), "cases": cases, "failed": failed, "targets": summary}
    with StagedOutput(out) as staging:
        table.to_csv(staging / "cohort.csv", index=False)
        (staging / "cohort.json").write_text(json.dumps(record, indent=1))
        cohort_figure(table, {case: entry["full_value"] for case, entry in cases.items()}, staging / "cohort.png")
    return CohortResult(table=table, failed=failed, out=out)


def _common_settings(reports: dict[str, dict]) -> dict:
    """The settings (less each case's own boxes) and versions of the first case, and the cases whose settings or
    versions differ from them."""
    shared = {
        case: ({k: v for k, v in report["settings"].items() if k not in _PER_CASE_SETTINGS}, report["versions"])
        for case, report in reports.items()
    }
    if not shared:
        return {"settings": None, "versions": None, "differing_cases": []}
    first = next(iter(shared.values()))
    differing = [case for case, entry in shared.items() if entry != first]
    if differing:
        _log.warning("Cohort: case(s) %s were explained with other settings or versions", ", ".join(differing))
    return {"settings": first[0], "versions": first[1], "differing_cases": differing}


def _case_rows(case_id: str, report: dict) -> list[dict]:
    names = [t["name"] for t in report["targets"]]
    base = np.atleast_1d(np.asarray(report["base_value"], dtype=np.float64))
    full = np.atleast_1d(np.asarray(report["full_value"], dtype=np.float64))
    spread = full - base
    rows = []
    for feature in report["features"]:
        values = np.atleast_1d(np.asarray(feature["value"], dtype=np.float64))
        errors = np.atleast_1d(np.asarray(feature["stderr"], dtype=np.float64))
        for t, name in enumerate(names):
            rows.append(
                {
                    "case_id": case_id,
                    "target": name,
                    "feature": feature["id"],
                    "organ": feature.get("organ", str(feature["organ_label"]) if "organ_label" in feature else ""),
                    "value": values[t],
                    "stderr": errors[t],
                    "voxels": feature["voxels"],
                    "normalised": values[t] / spread[t] if spread[t] != 0 else np.nan,
                }
            )
    return rows
