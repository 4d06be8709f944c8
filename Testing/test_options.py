"""ExplainOptions: one list of options, checked once, the same from Python, a worker request and the command line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import segshap
from segshap.cli import _parser
from segshap.inputs import ArgumentError
from segshap.options import OPTION_NAMES, ExplainOptions, options_from_flags, split_arrays


def test_every_option_round_trips_through_json():
    chosen = ExplainOptions(
        features="organ_aware",
        n_features=12,
        value="dice",
        baseline=-1.5,
        nsamples=300,
        tolerance=0.02,
        design="leverage",
        max_forwards=900,
        max_seconds=12.5,
        faithfulness=False,
        seed=7,
        device="cuda:1",
        batch_size=2,
        margin=3,
        cache_bytes=1024,
        autocast_dtype=torch.bfloat16,
        tiling="nnunet",
        patch_size=(32, 32, 16),
        overlap=0.5,
        folds=5,
    )
    assert chosen.autocast_dtype == "bfloat16" and chosen.torch_autocast_dtype is torch.bfloat16
    written = json.loads(json.dumps(chosen.to_dict()))
    assert ExplainOptions.from_dict(written) == chosen
    assert list(written) == list(OPTION_NAMES) == [field.name for field in dataclasses.fields(ExplainOptions)]
    assert chosen.tiling_settings() == {"tiling": "nnunet", "patch_size": (32, 32, 16), "overlap": 0.5, "folds": 5}


@pytest.mark.parametrize(
    "values, argument, fragment",
    [
        ({"n_features": 0}, "n_features", "must be a positive integer"),
        ({"nsamples": "lots"}, "nsamples", "must be 'auto' or an integer >= 2"),
        ({"tolerance": 1.5}, "tolerance", "must be a number in (0, 1)"),
        ({"design": "random"}, "design", "must be one of auto, chains, leverage"),
        ({"max_seconds": -1}, "max_seconds", "must be a positive number"),
        ({"faithfulness": "no"}, "faithfulness", "must be True or False"),
        ({"device": "gpu"}, "device", "must be auto, cpu, cuda, cuda:N or mps"),
        ({"baseline": float("nan")}, "baseline", "must be one of mean, min, zero or a finite number"),
        ({"patch_size": [64, 64]}, "patch_size", "needs one value or three"),
        ({"overlap": 1.0}, "overlap", "must lie in [0, 1)"),
        ({"autocast_dtype": "float64"}, "autocast_dtype", "must be one of bfloat16, float16"),
        ({"colour": "red"}, "colour", "Unknown option"),
    ],
)
def test_a_bad_option_is_named_as_each_front_end_names_it(values, argument, fragment):
    with pytest.raises(ArgumentError) as raised:
        ExplainOptions.from_dict(values)
    error = raised.value
    assert error.argument == argument and fragment in str(error)
    assert f"--{argument.replace('_', '-')}" in error.naming(lambda name: f"--{name.replace('_', '-')}")


def test_the_command_line_has_a_flag_per_option_and_sends_only_those_given():
    args = _parser().parse_args(
        ["explain", "--image", "i.nii.gz", "--model", "m.pt", "--target", "liver", "--out", "o",
         "--n-features", "50", "--patch-size", "96,96,64", "--no-faithfulness", "--baseline", "zero"]
    )  # fmt: skip
    options = options_from_flags(args)
    assert options == {"n_features": 50, "patch_size": (96, 96, 64), "faithfulness": False, "baseline": "zero"}
    assert ExplainOptions.from_dict(options).replace(n_features=60).n_features == 60
    text = subprocess.run(
        [sys.executable, "-m", "segshap.cli", "explain", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    for name in OPTION_NAMES:  # each option has its flag, with help
        flag = "--no-faithfulness" if name == "faithfulness" else "--" + name.replace("_", "-")
        assert flag in text, flag


def test_arrays_are_inputs_beside_the_options():
    import numpy as np

    features, baseline, foreground = np.ones((4, 4, 4), int), np.zeros((4, 4, 4)), np.ones((4, 4, 4), bool)
    values, arrays = split_arrays({"features": features, "baseline": baseline, "foreground": foreground, "seed": 3})
    assert values == {"seed": 3} and arrays == {"features": features, "baseline": baseline, "foreground": foreground}
    named = {"features": "grid", "baseline": 0.5, "foreground": "none"}
    assert split_arrays(named) == (named, {})


def test_the_foreground_is_auto_none_or_a_mask_file(tmp_path):
    assert ExplainOptions().foreground == "auto" and ExplainOptions(foreground="none").foreground == "none"
    mask = tmp_path / "mask.nii.gz"
    mask.write_bytes(b"")
    assert ExplainOptions(foreground=mask).foreground == str(mask)
    with pytest.raises(ArgumentError, match="foreground= must be auto or none, a mask file .*which is no file"):
        ExplainOptions(foreground=str(tmp_path / "missing.nii.gz"))


def test_the_version_is_printed():
    done = subprocess.run([sys.executable, "-m", "segshap.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"segshap {segshap.__version__}"
