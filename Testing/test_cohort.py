"""Cohorts on a real local Ray instance: every case explained and aggregated, a failing case isolated, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from helpers.slicer_scenes import DEMO  # noqa: E402

import segshap  # noqa: E402
from segshap.cohort import COHORT_COLUMNS, MissingDependency, aggregate, explain_cohort  # noqa: E402
from segshap.io import read_image, write_image, write_segmentation  # noqa: E402

pytestmark = pytest.mark.slow
BOX = ",".join(f"{a}:{b}" for a, b in DEMO.roi)
OPTIONS = {"faithfulness": False, "device": "cpu"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Two real cases (the demo MRI, and it with noise) and one whose reference lies outside its image."""
    folder = tmp_path_factory.mktemp("cohort_cases")
    image, affine = read_image(DEMO.image)
    noisy = image + np.random.default_rng(0).normal(0, 0.05 * image.std(), image.shape)
    write_image(folder / "noisy.nii.gz", noisy.astype(np.float32), affine)
    far = affine.copy()
    far[:3, 3] += 10_000
    write_image(folder / "elsewhere.nii.gz", np.ones(image.shape, np.uint8), far)
    path = folder / "cases.csv"
    path.write_text(
        "case_id,image,reference,roi\n"
        f'demo,{DEMO.image},,"{BOX}"\n'
        f'noisy,noisy.nii.gz,,"{BOX}"\n'
        f'lost,noisy.nii.gz,elsewhere.nii.gz,"{BOX}"\n'
    )
    return path


def test_a_cohort_is_explained_aggregated_and_resumed(manifest, tmp_path, monkeypatch):
    # A cluster that is gone, as `ray start` can leave behind: without an address the run starts its own instance.
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_free_port()}")
    out = tmp_path / "cohort"
    seen = []
    result = segshap.explain_cohort(
        manifest,
        DEMO.model,
        targets=["white_matter", "gray_matter"],
        out=out,
        progress=lambda done, total: seen.append((done, total)),
        **OPTIONS,
    )
    # The failing case is isolated with its reason; the others are complete.
    assert list(result.failed) == ["lost"] and "does not overlap the image" in result.failed["lost"]
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["demo", "noisy"]
    assert not (out / ".staging").exists() and seen[-1] == (3, 3)
    assert (out / "failed.csv").read_text().startswith("case_id,reason\nlost,")

    # One row per case, target and organ; values normalised by each case's full - base value.
    table = result.table
    assert list(table.columns) == list(COHORT_COLUMNS)
    assert set(table["case_id"]) == {"demo", "noisy"} and set(table["target"]) == {"white_matter", "gray_matter"}
    sums = table.groupby(["case_id", "target"])["normalised"].sum()
    assert len(sums) == 4 and np.allclose(sums, 1.0, atol=1e-6)  # efficiency: exact values for a few organs
    wm = result.matrix("white_matter")
    assert list(wm.columns) == ["mean", "sd", "n"] and (wm["n"] == 2).all()
    assert wm.index[0] == "white_matter"  # the model relies most on the tissue it segments
    assert set(result.organ_matrix().index) == {"white_matter", "gray_matter"}
    record = json.loads((out / "cohort.json").read_text())
    assert record["settings"]["features"] == "organs" and record["differing_cases"] == []
    assert "torch" in record["versions"] and set(record["cases"]["demo"]["full_value"]) == set(table["target"])
    assert record["targets"]["white_matter"]["organs"]["white_matter"]["n"] == 2
    assert (out / "cohort.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rebuilt = aggregate(out)
    assert rebuilt.table.equals(table) and rebuilt.failed == result.failed

    # Resume skips complete cases and tries the failed one again; without resume every case is redone.
    stamp = (out / "cases" / "demo" / "explanation.json").stat().st_mtime_ns
    again = explain_cohort(manifest, DEMO.model, targets=["white_matter", "gray_matter"], out=out, **OPTIONS)
    assert (out / "cases" / "demo" / "explanation.json").stat().st_mtime_ns == stamp
    assert list(again.failed) == ["lost"] and again.table.equals(table)

    # The worker protocol runs a cohort as well, reporting each case as an event (here without resume: all redone).
    request = {
        "task": "cohort", "manifest": str(manifest), "model": str(DEMO.model), "target": "white_matter,gray_matter",
        "out": str(out), "resume": False, "options": OPTIONS,
    }  # fmt: skip
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = _segshap("worker", "--request", str(tmp_path / "request.json"))
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and events[-1]["event"] == "done", done.stdout + done.stderr
    assert {e["case_id"]: e["failed"] is None for e in events if e["event"] == "case"} == {
        "demo": True, "noisy": True, "lost": False
    }  # fmt: skip
    assert [(e["done"], e["total"]) for e in events if e["event"] == "progress"][-1] == (3, 3)
    assert events[-1]["cases"] == 2 and list(events[-1]["failed"]) == ["lost"]
    assert events[-1]["summary"].startswith("Cohort: 2 case(s) explained, 1 failed: lost: ValueError: The reference")
    assert Path(events[-1]["outputs"]["png"]).is_file() and Path(events[-1]["outputs"]["failed"]).is_file()
    assert (out / "cases" / "demo" / "explanation.json").stat().st_mtime_ns != stamp


def test_unknown_options_and_cases_are_refused_before_ray_starts(manifest, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown option"):
        explain_cohort(manifest, DEMO.model, targets="white_matter", out=tmp_path, colour="red")
    with pytest.raises(ValueError, match="not in the cohort"):
        explain_cohort(manifest, DEMO.model, targets="white_matter", out=tmp_path, labelmaps={"nobody": "x.nii"})
    with pytest.raises(ValueError, match="Label maps make organ features"):
        explain_cohort(
            manifest, DEMO.model, targets="white_matter", out=tmp_path, features="slic", labelmaps={"demo": "x"}
        )
    with pytest.raises(FileNotFoundError, match="No such model"):
        explain_cohort(manifest, tmp_path / "none.pt", targets="white_matter", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the cohort extra is not installed
    with pytest.raises(MissingDependency, match=r"pip install 'segshap\[cohort\]'"):
        explain_cohort(manifest, DEMO.model, targets="white_matter", out=tmp_path / "out")


def _segshap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segshap.cli", *args], capture_output=True, text=True, timeout=600)


def test_the_command_line_reports_every_bad_manifest_row_before_anything_runs(tmp_path):
    (tmp_path / "cases.csv").write_text(f"case_id,image\na,{DEMO.image}\na,{DEMO.image}\nb,missing.nii.gz\n")
    done = _segshap(
        "cohort", "--manifest", str(tmp_path / "cases.csv"), "--model", str(DEMO.model), "--target", "white_matter",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("segshap: error: The manifest") and "has 2 problem(s)" in lines[0]
    assert lines[1].startswith("row 3 (a): the case id is also used in row 2")
    assert lines[2].startswith("row 4 (b): image") and len(lines) == 3
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_cohort_joins_a_running_cluster_and_label_maps_name_its_organs_as_their_files_do(manifest, tmp_path):
    port, log = _free_port(), tmp_path / "head.log"
    image, affine = read_image(DEMO.image)
    write_image(tmp_path / "one_organ.nii.gz", (image > 0).astype(np.uint8), affine)  # named by the model's classes
    halves = (image > 0) * np.where(np.arange(image.shape[0])[:, None, None] < 46, 1, 2)
    write_segmentation(tmp_path / "halves.seg.nrrd", halves, affine, {1: "right_half", 2: "left_half"})
    # Its own temporary folder (short: Ray's socket paths must fit 107 bytes), so that the address file Ray leaves
    # behind is nobody else's business.
    ray_temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    with log.open("w") as output:
        head = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--port", str(port), "--num-cpus", "2",
             "--include-dashboard", "false", "--node-ip-address", "127.0.0.1", "--temp-dir", str(ray_temp),
             "--block"],
            stdout=output, stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},  # as the driver (token set-up is Ray's concern)
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        result = explain_cohort(
            manifest,
            DEMO.model,
            targets="white_matter",
            out=tmp_path / "out",
            address=f"127.0.0.1:{port}",
            labelmaps={"noisy": tmp_path / "one_organ.nii.gz", "demo": tmp_path / "halves.seg.nrrd"},
            **OPTIONS,
        )
        assert list(result.failed) == ["lost"] and set(result.table["case_id"]) == {"demo", "noisy"}
        assert head.poll() is None  # the cluster runs on after the cohort
        # The cases ran in the cluster's workers, which log into its own temporary folder.
        assert any((ray_temp / "session_latest" / "logs").glob("worker-*")), "the cohort did not join the cluster"
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(ray_temp, ignore_errors=True)
    organs = result.table.groupby("case_id")["organ"].agg(set)
    assert organs["noisy"] == {"gray_matter"} and organs["demo"] == {"right_half", "left_half"}
    # --aggregate-only rebuilds the tables from the cases' folders, without Ray.
    out = tmp_path / "out"
    (out / "cohort.csv").unlink()
    done = _segshap("cohort", "--aggregate-only", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 case(s) explained, 1 failed: lost: ValueError: The reference" in done.stdout
    assert (out / "cohort.csv").read_text() == result.table.to_csv(index=False)


def _case_workers() -> list[int]:
    """Pids of the Ray worker processes running a case now (Ray names them after the task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::explain_case"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker processes through /proc")
def test_a_killed_worker_costs_only_its_case_which_is_rerun(manifest, tmp_path):
    out = tmp_path / "cohort"
    outcome = {}
    run = threading.Thread(
        target=lambda: outcome.update(
            result=explain_cohort(
                manifest, DEMO.model, targets="white_matter", out=out, faithfulness=True, device="cpu"
            )
        )
    )
    run.start()
    deadline = time.monotonic() + 300
    while not _case_workers() and time.monotonic() < deadline and run.is_alive():
        time.sleep(0.05)
    victims = _case_workers()
    assert victims, "no Ray worker was seen running a case"
    # The run's workers run at its own priority (Ray's default niceness of 15 starved them beside busy processes).
    assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in victims} == {os.getpriority(os.PRIO_PROCESS, 0)}
    for pid in victims:  # the first cases submitted, demo and noisy, run first: at least one good case dies
        os.kill(pid, signal.SIGKILL)
    run.join(timeout=600)
    assert list(outcome["result"].failed) == ["lost"]  # the killed case was rerun; only the bad case failed
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["demo", "noisy"]


BUSY = "import time\nwhile True:\n    time.time()"


@pytest.fixture(scope="module")
def quick_and_slow(tmp_path_factory) -> Path:
    """A quick case (the demo's box, the model's three organs) and a slow one (the whole image in 64 blocks, over
    a minute on 2 cores), so that a signal sent when the quick one is done finds the slow one half-way."""
    folder = tmp_path_factory.mktemp("quick_and_slow")
    image, affine = read_image(DEMO.image)
    index = np.indices(image.shape)
    blocks = 1 + sum(index[axis] * 4 // image.shape[axis] * 4**axis for axis in range(3))
    write_image(folder / "blocks.nii.gz", blocks.astype(np.uint8), affine)
    path = folder / "cases.csv"
    path.write_text(f'case_id,image,roi,labelmap\nquick,{DEMO.image},"{BOX}",\nslow,{DEMO.image},,blocks.nii.gz\n')
    return path


def test_an_interrupted_cohort_keeps_complete_cases_and_no_partial_one(quick_and_slow, tmp_path):
    """Stopped by SIGTERM while a case is half-written: the complete case stays, nothing else; also when two busy
    processes slow the shutdown down (where a worker killed after the run's wait once left its half-written case
    behind) and a Ctrl-C comes during it (both signals share one handler; the first decides the exit status)."""
    out = tmp_path / "cohort"
    busy = []
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "segshap.cli", "cohort", "--manifest", str(quick_and_slow), "--model",
             str(DEMO.model), "--target", "white_matter", "--out", str(out), "--device", "cpu"],
            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        for line in process.stderr:  # wait until the quick case is complete; the slow one is under way
            if line.startswith("segshap: Cohort:") and line.rstrip().endswith("done"):
                break
        assert line.startswith("segshap: Cohort: quick done"), line
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
        time.sleep(1.0)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        for other in busy:
            other.kill()
            other.wait()
    assert time.monotonic() - sent < 30.0  # seconds, not the minute the slow case would take
    rest = process.stderr.read()
    assert process.returncode == 128 + signal.SIGTERM, rest
    assert "the complete cases are kept in" in rest and "internal error" not in rest
    assert [p.name for p in (out / "cases").iterdir()] == ["quick"] and (out / "cases/quick/explanation.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["cases"]  # no staging folder, no tables of a partial run


def test_a_case_replaced_without_resume_is_there_old_or_new_whenever_the_run_is_killed(tmp_path, monkeypatch):
    from segshap.cohort.case import place_case, restore_replaced

    def case(folder: Path, text: str) -> Path:
        folder.mkdir(parents=True)
        (folder / "explanation.json").write_text(text)
        return folder

    out = tmp_path / "out"
    case(out / "cases" / "a", "old")
    (out / ".staging").mkdir()
    new = case(out / ".staging" / "a-1" / "case", "new")
    real_rename = Path.rename

    def killed_before_the_new_one_moves(self, target):  # the worker dies between the two renames
        if self == new:
            raise SystemExit("killed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_before_the_new_one_moves)
    with pytest.raises(SystemExit):
        place_case(new, out, "a")
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not (out / "cases" / "a").exists()  # for now the old one is aside...
    assert restore_replaced(out) == ["a"]  # ...and the run that owns the staging folder puts it back
    assert (out / "cases" / "a" / "explanation.json").read_text() == "old"

    place_case(new, out, "a")  # not killed: the new one replaces the old one, nothing is left aside
    assert (out / "cases" / "a" / "explanation.json").read_text() == "new"
    assert restore_replaced(out) == [] and not any((out / ".staging" / "replaced").iterdir())
