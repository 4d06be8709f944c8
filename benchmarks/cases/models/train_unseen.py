#!/usr/bin/env python
"""Train the benchmarks' "unseen" model: an architecture, grid and label set the estimator was not tuned on.

The demo models (``scripts/train_demo_model.py``) are small MONAI UNets (3 stride-2 levels, 2 mm, 3 classes). This
one differs in everything that shapes how features interact:

Architecture
    MONAI ``SegResNet`` (``init_filters=8``, ``blocks_down=(1, 2, 2, 4)``, ``blocks_up=(1, 1, 1)``): residual
    blocks with group norm, 3 downsamplings after a stem, and a deeper encoder, so a larger receptive field (it
    sees most of its 32^3 window from every voxel) than the demo UNet.
Data
    The 1 mm MNI152 2009a symmetric T1, GM and WM templates that nilearn ships in its wheel (no download),
    resampled by nilearn (trilinear) to **1.5 mm** (the demo models work at 2 mm, on nilearn's 2 mm templates).
Task
    Four classes, not three: background (0), cerebrospinal fluid (1), gray matter (2), white matter (3). CSF is
    derived: the voxels whose non-tissue probability ``clip(1 - gm - wm, 0, 1)`` wins inside the brain's envelope
    (GM + WM > 0.5, closed 4 times, holes filled in 3D and slice by slice: ventricles and sulci); the same
    probability outside the envelope is background. Labels are the argmax of the four maps.
Held-out evaluation
    Two bands of axial slices of the 1.5 mm grid (:data:`HELD_OUT_SLICES`) are never touched by a training patch
    (the demo script's :class:`PatchSampler` guarantees it); Dice on them comes from one sliding-window prediction
    of the whole volume by the exported TorchScript file with the sidecar's window settings.

The patch sampler, its augmentation, the training loop, the TorchScript export and the sliding-window prediction
are those of ``scripts/train_demo_model.py``, imported. Output: ``segresnet_csf_gmwm.pt`` and its sidecar
``segresnet_csf_gmwm.json`` beside this file. The engine resamples the 2 mm demo MRI onto the model's 1.5 mm grid.

Usage (from the repository root; a few CPU minutes; run it under ``nice`` when the cores are shared)::

    .venv/bin/python benchmarks/cases/models/train_unseen.py [--steps N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see scripts/train_demo_model.py

import monai  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.networks.nets import SegResNet  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import train_demo_model as demo  # noqa: E402

NAME = "segresnet_csf_gmwm"
CLASS_NAMES = ("background", "csf", "gray_matter", "white_matter")
SPACING_MM = 1.5
# Half-open [z0, z1) bands of the 1.5 mm grid (126 slices; the brain spans z = 1..102): the demo's two bands
# (2 mm slices 13-23 and 62-72) in millimetres, rounded outwards. The middle training segment [30, 82) is wider
# than a patch plus the sampler's margins.
HELD_OUT_SLICES = ((17, 30), (82, 95))
SEGRESNET = {"init_filters": 8, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)}


def template_1p5mm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm templates resampled to 1.5 mm: raw T1 (float32, background exactly 0), the four class
    probabilities ``(4, X, Y, Z)`` and the affine."""
    from nilearn import datasets, image
    from scipy import ndimage

    t1 = datasets.load_mni152_template(resolution=1)
    affine = np.diag([SPACING_MM] * 3 + [1.0])
    affine[:3, 3] = t1.affine[:3, 3]
    shape = tuple(int(np.ceil(n / SPACING_MM)) for n in t1.shape)

    def resampled(img) -> np.ndarray:
        out = image.resample_img(
            img,
            target_affine=affine,
            target_shape=shape,
            interpolation="continuous",
            force_resample=True,
            copy_header=True,
        )
        return np.asarray(out.get_fdata(dtype=np.float32))

    raw = resampled(t1)
    raw[raw < 0.5 / 255] = 0.0  # resampling leaves tiny values in the background; the z-score ignores zeros
    gm = resampled(datasets.load_mni152_gm_template(resolution=1))
    wm = resampled(datasets.load_mni152_wm_template(resolution=1))
    envelope = ndimage.binary_fill_holes(ndimage.binary_closing((gm + wm) > 0.5, iterations=4))
    for z in range(envelope.shape[2]):
        envelope[..., z] = ndimage.binary_fill_holes(envelope[..., z])
    rest = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = np.stack([rest * ~envelope, rest * envelope, gm, wm]).astype(np.float32)
    return raw.astype(np.float32), tissue, affine


def build_model() -> SegResNet:
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=len(CLASS_NAMES), **SEGRESNET)


def dice_by_class(prediction: np.ndarray, reference: np.ndarray, region: np.ndarray) -> dict[str, float]:
    scores = {}
    for label, name in enumerate(CLASS_NAMES[1:], start=1):
        pred, ref = (prediction == label) & region, (reference == label) & region
        scores[name] = round(2.0 * float((pred & ref).sum()) / float(pred.sum() + ref.sum()), 4)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    raw, tissue, _ = template_1p5mm()
    reference = tissue.argmax(axis=0)
    print("voxels per class:", {n: int((reference == k).sum()) for k, n in enumerate(CLASS_NAMES)}, flush=True)
    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"SegResNet {SEGRESNET}: {n_params} parameters", flush=True)
    sampler = demo.PatchSampler(raw, tissue, HELD_OUT_SLICES, rng, generator)
    seconds = demo.train(model, sampler, args.steps, args.batch_size, args.lr)

    path = args.out / f"{NAME}.pt"
    scripted = demo.export_torchscript(model, path, args.seed)
    started = time.perf_counter()
    prediction = demo.predict_volume(scripted, demo.normalize_intensity(raw))
    predict_s = time.perf_counter() - started
    held_out = np.zeros(raw.shape, dtype=bool)
    for z0, z1 in HELD_OUT_SLICES:
        held_out[..., z0:z1] = True
    dice_held_out = dice_by_class(prediction, reference, held_out)
    dice_train = dice_by_class(prediction, reference, ~held_out)
    sidecar = {
        "format": "segshap-torchscript/1",
        "name": NAME,
        "description": (
            "Benchmark model the estimator was not tuned on: MONAI SegResNet, 1.5 mm, background/CSF/gray/white "
            "matter, trained briefly on the 1 mm MNI152 2009a templates resampled to 1.5 mm (not a clinical tool)"
        ),
        "in_channels": 1,
        "classes": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "patch_size": list(demo.PATCH_SIZE),
        "overlap": demo.OVERLAP,
        "blend": demo.BLEND,
        "preprocessing": {
            "spacing": [SPACING_MM] * 3,
            "orientation": "RAS",
            "interpolation": "linear",
            "clip": None,
            "normalize": "zscore",
            "nonzero": True,
        },
        "training": {
            "script": "benchmarks/cases/models/train_unseen.py",
            "architecture": f"monai.networks.nets.SegResNet({SEGRESNET}), {n_params} parameters",
            "data": (
                "nilearn's MNI152 2009a sym T1/GM/WM templates at 1 mm (shipped in the wheel), resampled to 1.5 mm; "
                "CSF = non-tissue inside the closed, filled GM+WM envelope"
            ),
            "seed": args.seed,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seconds": round(seconds, 1),
            "cpu_threads": args.threads,
            "held_out_slices": [list(band) for band in HELD_OUT_SLICES],
            "dice_held_out": dice_held_out,
            "dice_train": dice_train,
            "torch": torch.__version__,
            "monai": monai.__version__,
        },
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"training: {args.steps} steps in {seconds:.0f} s; prediction {predict_s:.0f} s")
    print("Dice held-out", dice_held_out, "train slices", dice_train)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB) and its sidecar")


if __name__ == "__main__":
    main()
