"""One case of a cohort as a Ray task: the model's files packed to travel once, the case explained into the run's
staging folder, and its folder put into ``cases/`` whole.

A case folder appears in ``cases/`` only complete: it is written inside ``OUT/.staging/`` and renamed into place.
A case redone without resume replaces the old folder in two renames, the old one first moved aside into
``OUT/.staging/replaced/``; a run that was killed between the two renames leaves it there, and
:func:`restore_replaced` puts it back, so a case is always there in its old or its new version.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

from ..manifest import Case
from ..models.torchscript import sidecar_candidates
from ..request import explain_request, volume_format_of
from .aggregation import CASES

__all__ = ["STAGING", "case_fields", "model_package", "explain_case", "place_case", "restore_replaced"]

STAGING = ".staging"
"""The folder of a run's unfinished work inside the output folder: only the run that owns it removes it, once its
workers are gone."""

_REPLACED = "replaced"


def case_fields(case: Case, labelmap: Path | None) -> dict:
    """A case as its task receives it: ``case_id``, ``image``, ``reference``, ``labelmap`` and ``roi``, strings or
    ``None``."""
    return {
        "case_id": case.case_id,
        "image": str(case.image),
        "reference": None if case.reference is None else str(case.reference),
        "labelmap": None if labelmap is None else str(labelmap),
        "roi": None if case.roi is None else str(case.roi),
    }


def model_package(model: Path, config: str | os.PathLike | None) -> dict:
    """The model's files as bytes (a file with its sidecars, or a whole folder), and its config file, so that they
    travel through the object store to any node."""
    if not model.exists():
        raise FileNotFoundError(f"No such model: {model}. Give a TorchScript file with its sidecar, or a folder.")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(model, arcname=model.name)
        if model.is_file():
            for sidecar in set(sidecar_candidates(model)):
                if sidecar.is_file():
                    archive.add(sidecar, arcname=sidecar.name)
    config_bytes = None if config is None else Path(config).read_bytes()
    return {"name": model.name, "archive": buffer.getvalue(), "config": config_bytes}


def explain_case(package: dict, settings: dict, case: dict, out: str) -> str:
    """A Ray task: unpack the model, explain one case into the run's staging folder, put it into ``cases/``.

    The staging folder is the run's: once it is gone (the run ended), nothing is written.
    """
    out_path = Path(out)
    # Not parents=True, here nor when saving (StagedOutput makes no folder it saw removed): a run that has ended and
    # removed its staging folder gets nothing back.
    staging = out_path / STAGING / f"{case['case_id']}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    with tempfile.TemporaryDirectory(prefix="segshap-model-") as folder:
        with tarfile.open(fileobj=io.BytesIO(package["archive"])) as archive:
            archive.extractall(folder, filter="data")
        config = None
        if package["config"] is not None:
            config = Path(folder) / "model_config.json"
            config.write_bytes(package["config"])
        request = {
            "image": case["image"],
            "model": str(Path(folder) / package["name"]),
            "model_config": None if config is None else str(config),
            "trust_model": settings["trust_model"],
            "target": settings["targets"],
            "reference": case["reference"],
            "labelmap": case["labelmap"],
            "roi": case["roi"],
            "out": str(staging),
            "options": settings["options"],
        }
        explain_request(request).save(request["out"], volume_format=volume_format_of(request))
    place_case(staging, out_path, case["case_id"])
    return case["case_id"]


def place_case(complete: Path, out: Path, case_id: str) -> None:
    """Rename a complete case folder into ``cases/<case_id>``, replacing an older one.

    The older one is first moved aside into the staging folder's ``replaced/`` (a kill between the two renames
    leaves it there, for :func:`restore_replaced`), and removed once the new one is in place.
    """
    final = out / CASES / case_id
    if not final.exists():
        complete.rename(final)
        return
    aside = out / STAGING / _REPLACED / case_id
    aside.parent.mkdir(exist_ok=True)
    if aside.exists():  # an older copy, from an attempt killed after its own replacement
        shutil.rmtree(aside)
    final.rename(aside)
    complete.rename(final)
    shutil.rmtree(aside, ignore_errors=True)


def restore_replaced(out: Path) -> list[str]:
    """Put back every case that was moved aside for a replacement that never came (a run killed between its two
    renames); returns their ids. Called by the run that owns the staging folder, before it removes it."""
    aside = out / STAGING / _REPLACED
    restored = []
    if aside.is_dir():
        for folder in sorted(aside.iterdir()):
            if not (out / CASES / folder.name).exists():
                folder.rename(out / CASES / folder.name)
                restored.append(folder.name)
    return restored
