"""A result's report (the worker's ``explanation.json``) read for the scene: one target's feature rows, the summary
line made from it, and the report in words as the report table's rows."""

from __future__ import annotations

import json

import vtk

__all__ = ["REPORT_COLUMNS", "targetRows", "reportSummary", "reportItems", "fillReportTable"]

REPORT_COLUMNS = ("Item", "Value")
"""The columns of a result's report table: one row per item of ``explanation.json`` (settings, versions, values,
faithfulness, warnings, statistics), in words."""


def targetRows(report: dict, target: int = 0) -> list[dict]:
    """The feature rows of ``explanation.json`` for its ``target``-th target: with several targets each row holds
    a list of values and of standard errors; the rows returned hold this target's (the report is not changed)."""
    return [_forTarget(row, target) for row in report["features"]]


def _forTarget(row: dict, target: int) -> dict:
    if not isinstance(row["value"], list):
        return row
    stderr = row["stderr"]
    return {**row, "value": row["value"][target], "stderr": stderr[target] if isinstance(stderr, list) else stderr}


def _perTarget(entry, target: int):
    """A report entry of one target: the ``target``-th of a list, the entry itself otherwise."""
    return entry[target] if isinstance(entry, list) else entry


def reportSummary(report: dict, target: int = 0) -> str:
    """One line on a result made from its report: features, samples, seconds, faithfulness, warnings."""
    stats = report.get("stats") or {}
    parts = [f"{len(report['features'])} features"]
    if "evaluations" in stats:
        parts[0] += f" from {stats['evaluations']:,} samples"
    seconds = stats.get("seconds", stats.get("total_seconds"))
    if seconds is not None:
        parts[0] += f" in {seconds:.0f}s"
    curves = _perTarget(report.get("faithfulness"), target)
    if curves:
        parts.append(
            f"deletion AUC {curves['deletion_auc']:.3g} (random order {curves['random_deletion_auc']:.3g}), "
            f"insertion AUC {curves['insertion_auc']:.3g} (random {curves['random_insertion_auc']:.3g})"
        )
    parts.extend(report.get("warnings") or [])
    return "; ".join(parts)


def reportItems(report: dict, summary: str | None = None) -> list[tuple[str, str]]:
    """``explanation.json`` in words, one ``(item, value)`` per entry: targets, base and full value, efficiency
    error, faithfulness AUCs (per target with several), warnings, settings, versions and statistics."""
    targets = [target["name"] for target in report["targets"]]
    items = [("targets", ", ".join(targets))]
    if summary:
        items.append(("summary", summary))
    for t, target in enumerate(targets):
        prefix = f"{target}: " if len(targets) > 1 else ""
        base, full = _perTarget(report.get("base_value"), t), _perTarget(report.get("full_value"), t)
        items += [(f"{prefix}base value (every feature off)", _words(base)), (f"{prefix}full value", _words(full))]
        curves = _perTarget(report.get("faithfulness"), t)
        for key in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc"):
            if curves:
                items.append((f"{prefix}{key.replace('_', ' ').replace('auc', 'AUC')}", _words(curves.get(key))))
    items += [
        ("efficiency error", _words(report.get("efficiency_error"))),
        ("exact", _words(report.get("exact"))),
    ]
    warnings = report.get("warnings") or []
    items += [(f"warning {i + 1}", text) for i, text in enumerate(warnings)] or [("warnings", "none")]
    for group, entries in (("setting", report.get("settings")), ("version", report.get("versions"))):
        items += [(f"{group}: {key}", _words(value)) for key, value in (entries or {}).items()]
    items += [
        (f"statistic: {key}", _words(value))
        for key, value in (report.get("stats") or {}).items()
        if not isinstance(value, (dict, list))
    ]
    return items


def _words(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def fillReportTable(table, report: dict, summary: str | None) -> None:
    """Fill a ``vtkMRMLTableNode``'s table with :func:`reportItems`, locked (the report node keeps the JSON whole)."""
    items = reportItems(report, summary)
    for column, name in enumerate(REPORT_COLUMNS):
        array = vtk.vtkStringArray()
        array.SetName(name)
        array.SetNumberOfValues(len(items))
        for index, item in enumerate(items):
            array.SetValue(index, item[column])
        table.AddColumn(array)
    table.SetColumnDescription("Item", "an entry of the worker's explanation.json (kept whole in the report node)")
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)
