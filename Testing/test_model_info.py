"""What a model's files say, read with the standard library alone (``segshap.modelinfo``), and what the worker
says of its PyTorch and the machine's GPUs, worded for the panel (``SegShapExplainLib.dependencies``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import segshap
from segshap.jobs import _built_for, describe
from segshap.modelinfo import read_model_info
from SegShapExplainLib.dependencies import MINIMUM_TORCH, torchGpuMessage, torchIsRecentEnough

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "Resources" / "Models" / "demo_gmwm.pt"
DEMO_CLASSES = {0: "background", 1: "gray_matter", 2: "white_matter"}


def test_the_demo_models_sidecar_gives_what_loading_gives():
    info = read_model_info(DEMO_MODEL)
    assert info.format == "torchscript" and info.classes == DEMO_CLASSES and info.classes_reason is None
    assert info.in_channels == 1 and info.patch_size == (32, 32, 32) and not info.needs_trust
    model = segshap.load_model(DEMO_MODEL, device="cpu")
    assert (model.classes, model.in_channels, model.patch_size) == (info.classes, info.in_channels, info.patch_size)


def test_a_torchscript_file_without_sidecar_has_unknown_classes_with_the_fix(tmp_path):
    lone = tmp_path / "lone.pt"
    shutil.copy(DEMO_MODEL, lone)
    info = read_model_info(lone)
    assert info.format == "torchscript" and info.classes is None and info.in_channels is None
    assert "No JSON sidecar for" in info.classes_reason and "lone.json or model.json beside it" in info.classes_reason
    sidecar = json.loads(DEMO_MODEL.with_suffix(".json").read_text())
    assert read_model_info(lone, config=sidecar).classes == DEMO_CLASSES
    shutil.copy(DEMO_MODEL.with_suffix(".json"), tmp_path / "model.json")
    assert read_model_info(lone).classes == DEMO_CLASSES


def test_missing_paths_and_unknown_formats_are_refused_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such model: .*absent.pt. Check the path"):
        read_model_info(tmp_path / "absent.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="is not a model segshap knows. Pass a TorchScript file"):
        read_model_info(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="is not a model segshap knows"):
        read_model_info(tmp_path)


def test_a_malformed_sidecar_is_refused_as_loading_refuses_it(tmp_path):
    lone = tmp_path / "model.pt"
    shutil.copy(DEMO_MODEL, lone)
    sidecar = json.loads(DEMO_MODEL.with_suffix(".json").read_text())
    sidecar["classes"] = {"background": 0}
    with pytest.raises(ValueError, match="classes must be keyed by channel numbers"):
        read_model_info(lone, config=sidecar)
    with pytest.raises(ValueError, match="classes must be keyed by channel numbers"):
        segshap.load_model(lone, config=sidecar, device="cpu")


def test_the_reader_and_the_slicer_side_import_nothing_but_the_standard_library():
    """3D Slicer's side reads models before torch, NumPy and the rest are installed."""
    code = """
import json, sys

class StandardLibraryOnly:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in sys.stdlib_module_names and top != "segshap":
            raise ImportError(f"{name} is not installed in this test")

sys.meta_path.insert(0, StandardLibraryOnly())
from segshap.modelinfo import read_model_info

info = read_model_info(sys.argv[1])
print(json.dumps({"format": info.format, "classes": info.classes}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "SegShapExplain")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(DEMO_MODEL)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"format": "torchscript", "classes": {str(k): v for k, v in DEMO_CLASSES.items()}}


def test_the_torch_floor_compares_release_numbers():
    assert torchIsRecentEnough(torch.__version__) and torchIsRecentEnough(MINIMUM_TORCH)
    assert torchIsRecentEnough("2.10.0a0+git1234") and torchIsRecentEnough("3.0")
    assert not torchIsRecentEnough("2.5.1+cu121") and not torchIsRecentEnough("1.13.1")


def _facts(**changes) -> dict:
    facts = {"version": "2.13.0+cpu", "cuda": None, "cuda_available": False, "unsupported_gpus": [], "nvidia_gpus": []}
    return {**facts, **changes}


def test_gpu_messages_say_what_is_wrong_and_how_to_fix_it():
    assert torchGpuMessage(_facts()) is None  # no GPU at all
    cpu_only = torchGpuMessage(_facts(nvidia_gpus=["NVIDIA RTX A4000"]))
    assert "CPU-only build" in cpu_only and "NVIDIA RTX A4000" in cpu_only and "PyTorch Utils module" in cpu_only
    old_driver = torchGpuMessage(_facts(version="2.13.0+cu130", cuda="13.0", nvidia_gpus=["NVIDIA RTX A4000"]))
    assert "built for CUDA 13.0" in old_driver and "Update the NVIDIA driver" in old_driver
    working = _facts(version="2.13.0+cu128", cuda="12.8", cuda_available=True, nvidia_gpus=None)
    assert torchGpuMessage(working) is None
    blackwell = [{"name": "NVIDIA GeForce RTX 5090", "capability": "sm_120"}]
    unsupported = torchGpuMessage({**working, "cuda": "12.4", "unsupported_gpus": blackwell})
    assert "no code for this computer's GPU: NVIDIA GeForce RTX 5090 (sm_120)" in unsupported
    assert "choose the CPU" in unsupported


@pytest.mark.parametrize(
    "capability, arches, runs",
    [
        ((8, 6), ["sm_50", "sm_80", "sm_90"], True),  # an sm_80 binary runs on sm_86
        ((8, 0), ["sm_86", "sm_90"], False),  # but an sm_86 one not on sm_80
        ((12, 0), ["sm_50", "sm_80", "sm_90", "compute_90"], True),  # PTX compiles for newer GPUs
        ((12, 0), ["sm_50", "sm_80", "sm_90"], False),
        ((9, 0), ["sm_90a"], True),
        ((3, 7), ["sm_50", "sm_90"], False),  # too old for the build
        ((8, 6), [], True),  # PyTorch does not say: let it try
    ],
)
def test_which_gpus_a_cuda_build_runs_on(capability, arches, runs):
    assert _built_for(*capability, arches) is runs


def _describe(model: Path) -> dict:
    return describe({"task": "describe", "model": str(model), "options": {"device": "cpu"}})


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvidia-smi"), reason="needs a machine without GPU")
def test_describe_reports_pytorch_and_no_gpu_on_a_machine_without_one():
    done = _describe(DEMO_MODEL)
    assert done["model"]["format"] == "torchscript" and done["model"]["cuda_devices"] == []
    assert done["torch"] == {
        "version": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cuda_available": False,
        "unsupported_gpus": [],
        "nvidia_gpus": [],
    }
    assert torchGpuMessage(done["torch"]) is None
    json.dumps(done)  # the worker writes it as one JSON event


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU: the driver's listing is not asked")
def test_describe_lists_the_nvidia_gpus_torch_cannot_see(tmp_path, monkeypatch):
    tool = tmp_path / "nvidia-smi"
    tool.write_text(
        "#!/bin/sh\n"
        'echo "GPU 0: NVIDIA RTX A4000 (UUID: GPU-1c6f8a4e)"\n'
        'echo "  MIG 1g.5gb Device 0: (UUID: MIG-5c1f)"\n'
        'echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-9b2d)"\n'
    )
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    facts = _describe(DEMO_MODEL)["torch"]
    assert facts["nvidia_gpus"] == ["NVIDIA RTX A4000", "NVIDIA H100 80GB HBM3"]
    if torch.version.cuda is None:
        assert "CPU-only build, but this computer has an NVIDIA GPU" in torchGpuMessage(facts)
    tool.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert _describe(DEMO_MODEL)["torch"]["nvidia_gpus"] == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_describe_reports_the_gpus_torch_uses():
    facts = _describe(DEMO_MODEL)["torch"]
    assert facts["cuda_available"] and facts["cuda"] == torch.version.cuda and facts["nvidia_gpus"] is None
    assert facts["unsupported_gpus"] == [] and torchGpuMessage(facts) is None
