"""The segshap command line, run as users run it: a real process, real files, real signals. Refusals of bad input,
which happen before any work, run the same entry point in this process (a new process only adds its start-up,
about 2 s each); one of each kind still runs as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel
import nrrd
import numpy as np
import pytest

from segshap import cli, worker
from segshap.io import read_image, write_image, write_segmentation

ROI = "40:52,50:62,40:52"


def segshap(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segshap.cli", *args], capture_output=True, text=True, timeout=600, **kwargs
    )


def segshap_here(capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """The command's entry point run in this process (``segshap.cli.main``, which puts back the signal handlers and
    stdout it takes); its exit code and what it wrote, as :func:`segshap` gives them. The worker's watch on its
    parent, a thread that ends the process when the parent goes, is left out: here the process is pytest."""
    monkeypatch.setattr(worker, "exit_with_parent", lambda parent_pid=None: None)
    capsys.readouterr()
    try:
        code = cli.main(list(args))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["segshap", *args], code, out, err)


@pytest.fixture
def job(mni_nifti, scripted_model, tmp_path):
    image, _, _ = mni_nifti
    return ["--image", str(image), "--model", str(scripted_model), "--roi", ROI, "--out", str(tmp_path / "out")]


@pytest.mark.slow
def test_explain_writes_the_outputs_and_says_where(job, tmp_path):
    done = segshap(
        "explain",
        *job,
        "--target",
        "tissue_a",
        "--features",
        "grid",
        "--n-features",
        "8",
        "--nsamples",
        "120",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr
    assert f"Outputs in {tmp_path / 'out'}" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "explanation.json",
        "features.nii.gz",
        "heatmap.nii.gz",
        "overview.png",
    ]
    report = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert report["targets"] == [{"index": 1, "name": "tissue_a"}]
    # Chains use whole walks only, so they may leave part of the budget unspent.
    assert report["stats"]["design"] in ("chains", "leverage") and 0 < report["stats"]["evaluations"] <= 120
    # Progress and the summary in the user's words; the engine's terms in the log line.
    assert "evaluating the model, 100 %" in done.stderr and "window forwards" in done.stderr
    assert "features from" in done.stdout and "samples in" in done.stdout and "coalitions" not in done.stdout


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda a, tmp: a.__setitem__(1, str(tmp / "missing.nii.gz")), "No such image file"),
        (lambda a, tmp: a.__setitem__(1, str(tmp / "broken.nii.gz")), "as a NIfTI image"),
        (lambda a, tmp: a.extend(["--target", "liver"]), "Unknown target 'liver'"),
        (lambda a, tmp: a.extend(["--target", "1", "--nsamples", "lots"]), "expected a positive integer or 'auto'"),
        (lambda a, tmp: a.extend(["--target", "1", "--value", "auc"]), "invalid choice: 'auc'"),
        (lambda a, tmp: a.extend(["--target", "1", "--roi", "1:2:3"]), "--roi '1:2:3' is not a box x0:x1,y0:y1,z0:z1"),
        (lambda a, tmp: a.__setitem__(3, str(tmp / "none.pt")), "No such model"),
        (lambda a, tmp: a.__setitem__(3, str(tmp)), "is not a model segshap knows"),
        (lambda a, tmp: a.__setitem__(1, _two_channel_image(tmp)), "has 2 channels (shape (20, 20, 20, 2))"),
        (
            lambda a, tmp: a.extend(["--reference", _segmentation(a[1], tmp), "--reference-segment", "liver"]),
            "has no segment named 'liver'; its segments are 'tissue_a', 'other'. Choose one with --reference-segment.",
        ),
        (lambda a, tmp: a.__setitem__(7, str(tmp / "broken.nii.gz")), "is not a folder; choose another --out."),
    ],
)
@pytest.mark.slow
def test_bad_input_gives_one_line_and_exit_code_2(job, tmp_path, capsys, monkeypatch, change, fragment):
    (tmp_path / "broken.nii.gz").write_text("this is not an image")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    args = list(job)
    change(args, tmp_path)
    if "--target" not in args:
        args += ["--target", "1"]
    # The first refusal as a process, the others in this one.
    run = segshap if fragment == "No such image file" else lambda *a: segshap_here(capsys, monkeypatch, *a)
    done = run("explain", *args, "--device", "cpu", "--quiet")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segshap: error: ") and fragment in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def _two_channel_image(folder: Path) -> str:
    path = folder / "two_channels.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.ones((20, 20, 20, 2), np.float32), np.eye(4)), str(path))
    return str(path)


def _segmentation(image: str, folder: Path) -> str:
    """A 3D Slicer segmentation on the image's grid with segments 'tissue_a' and 'other'."""
    from helpers.volumes import write_slicer_segmentation

    data, affine = read_image(image)
    layers = np.zeros((1, *data.shape), np.uint8)
    layers[0, 44:50, 54:60, 44:50] = 1
    layers[0, 30:35, 30:35, 30:35] = 2
    path = folder / "reference.seg.nrrd"
    write_slicer_segmentation(path, layers, affine, [("tissue_a", 0, 1), ("other", 0, 2)])
    return str(path)


@pytest.mark.slow
def test_nrrd_image_and_slicer_segmentation_in_nrrd_outputs_with_the_same_geometry_out(job, tmp_path):
    data, affine = read_image(job[1])
    write_image(tmp_path / "image.nrrd", data, affine)
    reference = _segmentation(job[1], tmp_path)
    job[1] = str(tmp_path / "image.nrrd")
    done = segshap(
        "explain",
        *job,
        "--target",
        "tissue_a",
        "--reference",
        reference,
        "--features",
        "grid",
        "--n-features",
        "8",
        "--nsamples",
        "30",
        "--no-faithfulness",
        "--device",
        "cpu",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    heat, heat_affine = read_image(tmp_path / "out" / "heatmap.nrrd")
    assert heat.shape == data.shape and np.array_equal(heat_affine, affine)
    report = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert report["settings"]["roi_box"] == [[40, 52], [50, 62], [40, 52]]
    assert nrrd.read_header(str(tmp_path / "out" / "features.nrrd"))["space"] == "left-posterior-superior"


def _request(tmp_path, job_args, **extra) -> Path:
    arguments = dict(zip(job_args[::2], job_args[1::2]))
    request = {
        "image": arguments["--image"],
        "model": arguments["--model"],
        "target": "tissue_b",
        "roi": [[40, 52], [50, 62], [40, 52]],
        "out": arguments["--out"],
        "options": {"features": "grid", "n_features": 8, "nsamples": 200, "faithfulness": False, "device": "cpu"},
    }
    request.update(extra)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    return path


@pytest.mark.slow
def test_worker_reports_json_events_and_the_outputs(job, tmp_path):
    done = segshap("worker", "--request", str(_request(tmp_path, job)))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert {e["event"] for e in events} <= {"progress", "log", "done"}
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)
    assert all(e["eta_s"] is None or e["eta_s"] >= 0 for e in progress)
    assert events[-1]["event"] == "done"
    outputs = events[-1]["outputs"]
    # Progress counts window forwards, and ends at those the estimation and the faithfulness curves ran.
    stats = json.loads(Path(outputs["report"]).read_text())["stats"]
    spent = stats["estimation_forwards"] + stats["faithfulness_forwards"]
    assert progress[-1]["done"] == progress[-1]["total"] == spent > 0
    assert progress[-1]["text"].startswith("evaluating the model, 100 %")
    assert set(outputs) == {"heatmap", "features", "report", "overview"} and all(
        Path(p).is_file() for p in outputs.values()
    )


@pytest.mark.slow
def test_worker_takes_nrrd_and_a_named_slicer_segment_as_the_slicer_module_sends_them(job, tmp_path):
    data, affine = read_image(job[1])
    write_image(tmp_path / "volume.nrrd", data, affine)
    reference = _segmentation(job[1], tmp_path)
    request = _request(
        tmp_path,
        job,
        image=str(tmp_path / "volume.nrrd"),
        reference=reference,
        reference_segment="tissue_a",
        trust_model=False,
    )
    done = segshap("worker", "--request", str(request))
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout.splitlines()[-1])["outputs"]
    assert outputs["heatmap"].endswith("heatmap.nrrd") and outputs["features"].endswith("features.nrrd")
    heat, heat_affine = read_image(outputs["heatmap"])
    assert heat.shape == data.shape and np.array_equal(heat_affine, affine)
    unknown = _request(tmp_path, job, reference=reference, reference_segment="tumour")
    failed = segshap("worker", "--request", str(unknown))
    assert (
        failed.returncode == 2 and "no segment named 'tumour'" in json.loads(failed.stdout.splitlines()[-1])["message"]
    )


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ({"target": "nerve"}, "Unknown target 'nerve'"),
        ({"options": {"colour": "red"}}, 'Unknown option "colour"; the options are features, foreground, n_features'),
        ({"options": {"n_features": 0}}, '"n_features" must be a positive integer, got 0'),
        ({"target": ["white_matter", {"class": 2}]}, '"target" must be a class index or name, or a list of them'),
        ({"target": True}, '"target" must be a class index or name'),
        ({"roi": [[0, 10], [0, 10]]}, '"roi" must be a box x0:x1,y0:y1,z0:z1, three [start, stop] pairs or a mask'),
        ({"trust_model": "yes"}, '"trust_model" must be true or false'),
        ({"oops": 1}, "has unknown keys ['oops']"),
        ({"roi": "1:2:x"}, "\"roi\" '1:2:x' is not a box"),
    ],
)
def test_worker_errors_are_one_event_and_exit_code_2(job, tmp_path, capsys, monkeypatch, extra, fragment):
    run = segshap if extra == {"target": "nerve"} else lambda *a: segshap_here(capsys, monkeypatch, *a)
    done = run("worker", "--request", str(_request(tmp_path, job, **extra)))
    assert done.returncode == 2
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[-1]["event"] == "error" and fragment in events[-1]["message"]
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_a_signal_stops_the_run_within_2_seconds_and_writes_nothing(job, tmp_path, signum):
    request = _request(
        tmp_path, job, options={"features": "grid", "n_features": 30, "nsamples": 100000, "device": "cpu"}
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "segshap.cli", "worker", "--request", str(request)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:  # wait until the estimation runs
        if json.loads(line)["event"] == "progress":
            break
    sent = time.monotonic()
    process.send_signal(signum)
    process.wait(timeout=10)
    assert time.monotonic() - sent < 2.0
    assert process.returncode == 128 + signum
    assert sorted(p.name for p in tmp_path.iterdir()) == ["request.json"]


@pytest.mark.slow
def test_demo_runs_on_the_embedded_model_and_image(tmp_path):
    done = segshap("demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--n-features", "40")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "demo" / "explanation.json").read_text())
    assert report["targets"] == [{"index": 2, "name": "white_matter"}]
    assert report["full_value"] > 0.8  # the trained model segments white matter well in the demo ROI
    assert str(tmp_path / "demo") in done.stdout


@pytest.mark.slow
def test_reference_and_roi_files_are_read(mni_nifti, scripted_model, tmp_path):
    import nibabel
    import numpy as np

    image, data, affine = mni_nifti
    segment = np.zeros(data.shape, np.uint8)
    segment[44:50, 54:60, 44:50] = 1
    roi = np.zeros(data.shape, np.uint8)
    roi[42:52, 52:62, 42:52] = 1
    nibabel.save(nibabel.Nifti1Image(segment, affine), str(tmp_path / "segment.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(roi, affine), str(tmp_path / "roi.nii.gz"))
    done = segshap(
        "explain",
        "--image",
        str(image),
        "--model",
        str(scripted_model),
        "--target",
        "tissue_b",
        "--reference",
        str(tmp_path / "segment.nii.gz"),
        "--roi",
        str(tmp_path / "roi.nii.gz"),
        "--features",
        "fcc",
        "--n-features",
        "6",
        "--nsamples",
        "60",
        "--no-faithfulness",
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert report["settings"]["roi_box"] == [[42, 52], [52, 62], [42, 52]]
    assert report["targets"] == [{"index": 2, "name": "tissue_b"}]


def test_a_label_map_file_makes_the_organs_named_as_in_it(job, mni_nifti, tmp_path):
    _, data, affine = mni_nifti
    halves = np.where(np.arange(data.shape[0])[:, None, None] < 46, 1, 2) * (data > 0)
    write_segmentation(tmp_path / "halves.seg.nrrd", halves, affine, {1: "right_half", 2: "left_half"})
    done = segshap(
        "explain", *job, "--target", "tissue_a", "--features", "organs",
        "--labelmap", str(tmp_path / "halves.seg.nrrd"), "--no-faithfulness", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert sorted(feature["organ"] for feature in report["features"]) == ["left_half", "right_half"]


def test_a_label_map_without_organ_features_is_refused(job, mni_nifti, tmp_path):
    _, data, affine = mni_nifti
    write_image(tmp_path / "labels.nii.gz", (data > 0).astype(np.uint8), affine)
    done = segshap("explain", *job, "--target", "tissue_a", "--labelmap", str(tmp_path / "labels.nii.gz"))
    assert done.returncode == 2 and "--labelmap makes organ features" in done.stderr, done.stderr


def test_worker_describes_a_model_without_an_image(scripted_model, tmp_path):
    request = tmp_path / "describe.json"
    request.write_text(json.dumps({"task": "describe", "model": str(scripted_model), "options": {"device": "cpu"}}))
    done = segshap("worker", "--request", str(request))
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout.splitlines()[-1])["model"]
    assert model["classes"] == {"0": "background", "1": "tissue_a", "2": "tissue_b"}
    assert model["format"] == "torchscript" and model["device"] == "cpu" and model["in_channels"] == 1


@pytest.mark.slow
def test_worker_segments_the_image_on_its_grid(mni_nifti, scripted_model, tmp_path):
    from segshap import load_model, predict

    image, data, affine = mni_nifti
    write_image(tmp_path / "volume.nrrd", data, affine)
    request = tmp_path / "segment.json"
    request.write_text(
        json.dumps(
            {
                "task": "segment",
                "image": str(tmp_path / "volume.nrrd"),
                "model": str(scripted_model),
                "out": str(tmp_path / "seg"),
                "options": {"device": "cpu", "batch_size": 2},
            }
        )
    )
    done = segshap("worker", "--request", str(request))
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout.splitlines()[-1])
    labels, labels_affine = read_image(event["outputs"]["segmentation"])
    assert event["outputs"]["segmentation"].endswith("segmentation.nrrd")
    np.testing.assert_allclose(labels_affine, affine, atol=1e-6)
    expected = predict(load_model(scripted_model, device="cpu"), data, affine=affine, device="cpu")
    np.testing.assert_array_equal(labels, expected)
    names = {"0": "background", "1": "tissue_a", "2": "tissue_b"}
    assert event["classes"] == {str(v): names[str(v)] for v in np.unique(expected)}


@pytest.mark.parametrize(
    "request_fields, fragment",
    [
        ({"task": "train", "model": "m.pt"}, "task 'train'"),
        ({"task": "segment", "model": "m.pt", "image": "i.nii.gz"}, "misses ['out']"),
        (
            {"task": "cohort", "manifest": "c.csv", "model": "m.pt", "target": "1", "out": "o", "roi": "0:9,0:9,0:9"},
            "cannot take ['roi']: each case's come from the manifest",
        ),
        (
            {"image": "i.nii.gz", "model": "m.pt", "target": "1", "out": "o", "resume": False},
            "cannot take ['resume']: they are a cohort's",
        ),
    ],
)
def test_worker_tasks_need_their_keys(tmp_path, request_fields, fragment):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(request_fields))
    done = segshap("worker", "--request", str(request))
    assert done.returncode == 2 and fragment in json.loads(done.stdout.splitlines()[-1])["message"]


def test_out_of_memory_halves_the_batch_then_asks_for_the_cpu():
    import torch

    from segshap.request import OutOfMemory, halving_batch_on_oom

    tried = []

    def fits_two(batch: int) -> str:
        tried.append(batch)
        if batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return f"ran with {batch}"

    assert halving_batch_on_oom(fits_two, 8) == "ran with 2" and tried == [8, 4, 2]

    def never_fits(batch: int) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(OutOfMemory, match="run on the CPU"):
        halving_batch_on_oom(never_fits, 4)


@pytest.mark.parametrize("kill_after_s", [None, 0.2, 3.0])
@pytest.mark.slow
def test_worker_ends_when_its_parent_dies(job, tmp_path, kill_after_s):
    """A worker whose launcher (3D Slicer, or a launcher script) dies does not run on unattended: whether the
    launcher dies before the worker has started (None: it exits right after spawning it), while it starts (torch
    is still importing) or while it computes."""
    request = _request(
        tmp_path, job, options={"features": "grid", "n_features": 30, "nsamples": 100000, "device": "cpu"}
    )
    pid_file = tmp_path / "worker.pid"
    then = "os._exit(0)" if kill_after_s is None else "time.sleep(600)"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-m', 'segshap.cli', 'worker', '--request', {str(request)!r}, "
            "'--parent-pid', str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); {then}",
        ]
    )
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        assert _running(worker), "the worker ended before its launcher died"
        parent.kill()
    parent.wait()
    # A liveness bound, not a timing: the request would compute for many minutes.
    deadline = time.monotonic() + 90
    while _running(worker):
        assert time.monotonic() < deadline, "the orphaned worker kept running"
        time.sleep(0.1)
    assert not (tmp_path / "out").exists()


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_worker_whose_launcher_is_already_gone_ends_at_once(job, tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    request = _request(tmp_path, job, options={"features": "grid", "n_features": 30, "device": "cpu"})
    done = segshap("worker", "--request", str(request), "--parent-pid", str(gone.pid))
    assert done.returncode == 128 + signal.SIGTERM
    assert done.stdout == "" and not (tmp_path / "out").exists()


def test_a_reference_outside_the_image_is_said_not_to_overlap(mni_nifti, scripted_model, tmp_path):
    import nibabel
    import numpy as np

    image, data, affine = mni_nifti
    segment = np.zeros(data.shape, np.uint8)
    segment[44:50, 54:60, 44:50] = 1
    elsewhere = affine.copy()
    elsewhere[:3, 3] += 1000.0  # a metre away: drawn on another image
    nibabel.save(nibabel.Nifti1Image(segment, elsewhere), str(tmp_path / "segment.nii.gz"))
    done = segshap(
        "explain",
        "--image",
        str(image),
        "--model",
        str(scripted_model),
        "--target",
        "tissue_b",
        "--reference",
        str(tmp_path / "segment.nii.gz"),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--quiet",
    )
    assert done.returncode != 0 and "does not overlap the image" in done.stderr, done.stderr
    assert "empty" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("script", "user_setting", "expected"),
    [
        ("import segshap.cli", None, ["10000"]),
        ("import segshap.cli", "77", ["77"]),
        # a library import leaves the environment alone, and once torch is loaded the setting would come too late
        ("import segshap.engine; print(os.environ.get('GOMP_SPINCOUNT')); import segshap.cli", None, ["None", "None"]),
    ],
)
def test_the_command_chooses_its_openmp_spin_before_torch_loads_unless_the_user_did(script, user_setting, expected):
    env = {key: value for key, value in os.environ.items() if key not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    if user_setting is not None:
        env["GOMP_SPINCOUNT"] = user_setting
    code = f"import os; {script}; print(os.environ.get('GOMP_SPINCOUNT'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected
