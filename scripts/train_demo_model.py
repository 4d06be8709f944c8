#!/usr/bin/env python
"""Train the small gray/white-matter demo model shipped with SegShapExplain.

The model is a 3D MONAI UNet that segments a skull-stripped T1 MRI at 2 mm
into background (0), gray matter (1) and white matter (2). It exists so that
the extension has a real model to explain out of the box; it is a demo, not a
clinical tool.

Data
    Only the MNI152 2009 templates that nilearn ships inside its wheel (no
    download): the T1 template and the gray/white matter probability maps,
    all resampled by nilearn to 2 mm. The label of a voxel is the argmax over
    (clip(1 - gm - wm, 0, 1), gm, wm).

Held-out evaluation
    Two bands of axial slices (``HELD_OUT_SLICES``, half-open ``[z0, z1)``
    ranges of the last array axis) are never touched by a training patch,
    not even by the trilinear footprint of a rotated patch. Dice is reported
    on those slices and on the remaining (training) slices, both from one
    sliding-window prediction of the whole volume made with the exported
    TorchScript file and the patch size, overlap and blending of the sidecar.

Preprocessing (re-implemented by the engine from the JSON sidecar)
    Intensities as float32, then z-score with the mean and (population)
    standard deviation of the voxels whose raw intensity is > 0, applied to
    all voxels: ``x = (x - mean) / std``. See :func:`normalize_intensity`.

Outputs (under ``--out``, by default the repository's ``Resources/``)
    ``Models/demo_gmwm.pt``
        TorchScript model: (B, 1, 32, 32, 32) float32 -> logits (B, 3, 32, 32, 32).
    ``Models/demo_gmwm.json``
        The sidecar (format ``segshap-torchscript/1``).
    ``Demo/mni152_t1_2mm.nii.gz``
        The demo input: the 2 mm T1 template as uint8 (see :func:`template_t1_uint8`).

Usage
-----
From the repository root::

    /tmp/venvtest/bin/python scripts/train_demo_model.py [--steps N] [--seed S] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

# OpenMP threads spin at barriers by default. When the cores are shared with
# other work, a descheduled sibling thread then stalls every op (measured:
# ~20x slower steps with 2 threads on 2 busy cores); passive waiting avoids
# that at almost no cost. It must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import monai
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from nilearn import datasets

NAME = "demo_gmwm"
CLASS_NAMES = ("background", "gray_matter", "white_matter")
PATCH_SIZE = (32, 32, 32)
OVERLAP = 0.25
BLEND = "gaussian"
SPACING_MM = 2.0
# Half-open [z0, z1) slice ranges of the 2 mm template (95 axial slices; the
# brain spans z = 1..76). The lower band cuts through cerebellum and temporal
# lobes, the upper one through the fronto-parietal convexity. The middle
# training segment [23, 62) is kept wider than a patch (32 slices plus the
# 1-slice safety margins) so that patches can tilt a little there.
HELD_OUT_SLICES = ((13, 23), (62, 72))
UNET_CHANNELS = (8, 16, 32, 64)
UNET_STRIDES = (2, 2, 2)
UNET_RES_UNITS = 1
REPO_ROOT = Path(__file__).resolve().parent.parent


def template_t1_uint8() -> tuple[np.ndarray, np.ndarray]:
    """Return the nilearn 2 mm MNI152 T1 template as uint8 and its affine.

    nilearn divides the 8-bit 1 mm template by its maximum (255) and resamples
    it to 2 mm on a grid aligned with every other 1 mm voxel, so ``255 * t1``
    is integral up to float32 round-off: storing it as uint8 is lossless (up to
    the scale factor, which the z-score removes). It also zeroes the ~266k
    denormal values (< 1e-17) that the resampling leaves in the background and
    that would otherwise enter the "raw intensity > 0" normalization mask.

    Returns
    -------
    image : numpy.ndarray
        uint8 array of shape (99, 117, 95).
    affine : numpy.ndarray
        4x4 voxel-to-RAS (mm) affine of the template.
    """
    img = datasets.load_mni152_template(resolution=2)
    scaled = np.asarray(img.get_fdata(dtype=np.float64)) * 255.0
    image = np.round(scaled)
    # Guard the losslessness claim above against a future nilearn change.
    if np.abs(scaled - image).max() > 1e-3 or image.min() < 0 or image.max() > 255:
        raise RuntimeError("nilearn's 2 mm T1 template is no longer 8-bit integral")
    return image.astype(np.uint8), img.affine.copy()


def template_tissue() -> np.ndarray:
    """Return the 2 mm tissue probabilities (background, gray, white matter).

    Returns
    -------
    numpy.ndarray
        float32 array of shape (3, 99, 117, 95); background is
        ``clip(1 - gm - wm, 0, 1)``.
    """
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32)
    background = np.clip(1.0 - gm - wm, 0.0, 1.0)
    return np.stack([background, gm, wm]).astype(np.float32)


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Z-score an image with the statistics of its nonzero voxels.

    This is the model's preprocessing, stated in the sidecar as
    ``"normalize": "zscore", "nonzero": true``.

    Parameters
    ----------
    image : numpy.ndarray
        Raw intensities, any shape and numeric dtype.

    Returns
    -------
    numpy.ndarray
        float32 array ``(x - mean) / std``, where ``mean`` and the population
        ``std`` are taken over the voxels with raw intensity > 0 and the
        transform is applied to all voxels.
    """
    x = np.asarray(image, dtype=np.float32)
    foreground = x[x > 0]
    mean = foreground.mean(dtype=np.float64)
    std = foreground.std(dtype=np.float64)
    return ((x - mean) / std).astype(np.float32)


def save_demo_image(image: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write the demo T1 as a compressed uint8 NIfTI in MNI (RAS) space.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 volume.
    affine : numpy.ndarray
        4x4 voxel-to-RAS affine.
    path : pathlib.Path
        Destination ``.nii.gz`` file; parent folders are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    nifti = nib.Nifti1Image(image, affine)
    nifti.set_data_dtype(np.uint8)
    nifti.header.set_xyzt_units("mm")
    # Both codes set, so that readers preferring either (ITK/Slicer, nibabel)
    # agree on the geometry.
    nifti.set_sform(affine, code="mni")
    nifti.set_qform(affine, code="mni")
    nib.save(nifti, path)


def training_segments(held_out: tuple[tuple[int, int], ...]) -> list[tuple[float, float]]:
    """Return the half-open z ranges between the held-out bands.

    The first and last ranges are open towards -inf and +inf: a patch may
    hang out of the volume there (it then sees zero padding, i.e. background).

    Parameters
    ----------
    held_out : tuple of (int, int)
        Sorted, disjoint half-open ``[z0, z1)`` bands.

    Returns
    -------
    list of (float, float)
        The ``[lo, hi)`` ranges where training patches may live.
    """
    edges = [-np.inf] + [z for band in held_out for z in band] + [np.inf]
    return [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]


def random_linear_map(rng: np.random.Generator) -> np.ndarray:
    """Draw the spatial augmentation as a 3x3 matrix (patch offset -> voxel offset).

    A left-right flip (p = 0.5) and, with p = 0.8, a rotation (up to 15 deg
    in the axial plane, up to 6 deg about the other two axes, where tilt is
    rarer in practice) with per-axis scaling in [0.9, 1.1].

    Parameters
    ----------
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        float64 array of shape (3, 3).
    """
    matrix = np.eye(3)
    if rng.random() < 0.8:
        ax, ay, az = np.deg2rad(rng.uniform(-1.0, 1.0, 3) * (6.0, 6.0, 15.0))
        rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        rot_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        matrix = rot_z @ rot_y @ rot_x @ np.diag(rng.uniform(0.9, 1.1, 3))
    if rng.random() < 0.5:
        # Axis 0 is left-right in the RAS template.
        matrix = matrix @ np.diag([-1.0, 1.0, 1.0])
    return matrix


class PatchSampler:
    """Draw augmented 32^3 training patches that never touch held-out slices.

    Each patch is resampled (trilinear, ``grid_sample``) from the whole
    volume through a random flip/rotation/scaling, so rotations never show
    patch corners filled with padding. Labels come from resampling the three
    tissue probability maps and taking the argmax, which keeps boundaries
    smoother than nearest-neighbour label resampling.

    Parameters
    ----------
    raw : numpy.ndarray
        Raw T1 intensities (non-negative), shape (X, Y, Z).
    tissue : numpy.ndarray
        Tissue probabilities (background, gm, wm), shape (3, X, Y, Z).
    held_out : tuple of (int, int)
        Half-open z bands that patches must not touch.
    rng : numpy.random.Generator
        Source of all random choices except the noise and bias-field images.
    generator : torch.Generator
        Source of the Gaussian noise and bias-field coefficients.
    p_foreground : float
        Probability that a patch is built around a GM/WM voxel rather than
        any voxel (oversampling: 80 % of the volume is background).
    """

    def __init__(
        self,
        raw: np.ndarray,
        tissue: np.ndarray,
        held_out: tuple[tuple[int, int], ...],
        rng: np.random.Generator,
        generator: torch.Generator,
        p_foreground: float = 0.85,
    ) -> None:
        unit = raw.astype(np.float32) / float(raw.max())
        self.shape = np.array(raw.shape)
        self.volume = torch.from_numpy(np.concatenate([unit[None], tissue]))[None]
        # The z-score of a gamma-transformed image needs the statistics of
        # u**gamma over its nonzero voxels; the 8-bit template has < 256
        # distinct values, so a histogram gives them exactly and cheaply.
        self.values, counts = np.unique(unit[unit > 0], return_counts=True)
        self.weights = counts / counts.sum()
        self.foreground = np.argwhere(tissue.argmax(axis=0) > 0)
        self.held_out = held_out
        self.segments = training_segments(held_out)
        self.rng = rng
        self.generator = generator
        self.p_foreground = p_foreground
        size = np.array(PATCH_SIZE)
        # Integer offsets (not centred half-integers), so that an unrotated
        # patch samples voxel centres exactly instead of blurring them.
        grid = np.stack(np.meshgrid(*[np.arange(n) - n // 2 for n in size], indexing="ij"), -1)
        self.offsets = grid.reshape(-1, 3).astype(np.float64)
        # An affine map reaches its extremes over the patch at the corners.
        self.corners = np.array(list(itertools.product(*zip(-(size // 2), size - 1 - size // 2))), dtype=np.float64)

    def _allowed(self, centres_z: np.ndarray, z_min: float, z_max: float) -> np.ndarray:
        """Tell which centre slices keep a patch's footprint inside one training segment.

        A sampled position p touches voxels floor(p) and floor(p) + 1. Keeping
        every position in [lo + 1, hi - 2] keeps that footprint in [lo, hi - 1]
        even with the float32 round-off of ``grid_sample``'s coordinates.

        Parameters
        ----------
        centres_z : numpy.ndarray
            Candidate integer centre slices (may lie outside the volume).
        z_min, z_max : float
            Smallest and largest z offset of the patch's positions from its centre.

        Returns
        -------
        numpy.ndarray
            Boolean mask over ``centres_z``.
        """
        allowed = np.zeros(centres_z.shape, dtype=bool)
        for lo, hi in self.segments:
            allowed |= (centres_z + z_min >= lo + 1) & (centres_z + z_max <= hi - 2)
        return allowed

    def _draw_geometry(self) -> tuple[np.ndarray, np.ndarray]:
        """Draw a linear map and an integer centre whose patch footprint is allowed.

        A target voxel (GM/WM with probability ``p_foreground``, else any) is
        drawn first, then a centre slice among those whose patch contains the
        target's slice and stays in one training segment. Drawing the target
        first, rather than the centre, lets patches reach the brain slices
        near the volume's bottom, whose patches must hang below the volume.
        Targets that no allowed patch can contain (held-out slices, or a map
        too tall for the middle segment) are drawn again.
        """
        while True:
            matrix = random_linear_map(self.rng)
            z_offsets = (self.corners @ matrix.T)[:, 2]
            z_min, z_max = z_offsets.min(), z_offsets.max()
            if self.rng.random() < self.p_foreground:
                target = self.foreground[self.rng.integers(len(self.foreground))]
            else:
                target = self.rng.integers(0, self.shape)
            centres_z = np.arange(np.ceil(target[2] - z_max), np.floor(target[2] - z_min) + 1).astype(int)
            centres_z = centres_z[self._allowed(centres_z, z_min, z_max)]
            if centres_z.size:
                return matrix, np.array([target[0], target[1], self.rng.choice(centres_z)])

    def _check_footprint(self, positions: torch.Tensor) -> None:
        """Assert that no sampled position can read a held-out slice."""
        z = positions[..., 2]
        for lo, hi in self.held_out:
            touches = (torch.floor(z) + 1 >= lo) & (torch.floor(z) <= hi - 1)
            if bool(touches.any()):
                raise AssertionError("a training patch touches held-out slices")

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one augmented batch.

        Parameters
        ----------
        batch_size : int

        Returns
        -------
        images : torch.Tensor
            float32 (B, 1, 32, 32, 32), normalized like :func:`normalize_intensity`
            and then intensity-augmented.
        labels : torch.Tensor
            int64 (B, 1, 32, 32, 32) class indices.
        """
        positions = []
        for _ in range(batch_size):
            matrix, centre = self._draw_geometry()
            positions.append(centre + self.offsets @ matrix.T)
        voxel = torch.from_numpy(np.stack(positions)).float()
        # grid_sample wants (x, y, z) ordered as (W, H, D), i.e. reversed array
        # axes, normalized to [-1, 1] with align_corners=True.
        norm = 2.0 * voxel / torch.from_numpy(self.shape - 1).float() - 1.0
        grid = norm.flip(-1).reshape(1, batch_size * PATCH_SIZE[0], *PATCH_SIZE[1:], 3)
        # Re-derive the coordinates exactly as grid_sample will see them.
        self._check_footprint((grid.flip(-1) + 1.0) / 2.0 * torch.from_numpy(self.shape - 1).float())
        patches = F.grid_sample(self.volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        patches = patches.reshape(self.volume.shape[1], batch_size, 1, *PATCH_SIZE)  # the image, then each class
        labels = patches[1:].argmax(dim=0)
        return self._augment_intensity(patches[0]), labels

    def _augment_intensity(self, unit: torch.Tensor) -> torch.Tensor:
        """Gamma, bias field, z-score, scale/shift and noise for a batch of raw patches.

        The z-score uses the statistics that :func:`normalize_intensity` would
        compute on the whole gamma-transformed volume, so that background
        voxels map to the same value as at inference time.

        Parameters
        ----------
        unit : torch.Tensor
            (B, 1, 32, 32, 32) raw intensities divided by the volume maximum.

        Returns
        -------
        torch.Tensor
            The augmented, normalized patches, same shape.
        """
        batch = unit.shape[0]
        out = torch.empty_like(unit)
        for b in range(batch):
            gamma = float(np.exp(self.rng.uniform(np.log(0.7), np.log(1.4))))
            mean = float(np.sum(self.weights * self.values**gamma))
            std = float(np.sqrt(np.sum(self.weights * self.values ** (2 * gamma)) - mean**2))
            x = unit[b].clamp_min(0.0) ** gamma
            if self.rng.random() < 0.5:
                # Smooth multiplicative field: log-gain on a 3^3 control grid
                # across the patch, interpolated trilinearly.
                strength = self.rng.uniform(0.0, 0.1)
                control = torch.randn((1, 1, 3, 3, 3), generator=self.generator) * strength
                x = x * torch.exp(F.interpolate(control, size=PATCH_SIZE, mode="trilinear", align_corners=True)[0])
            x = (x - mean) / std
            # Stands in for the spread of z-score statistics between scans.
            x = x * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.1, 0.1)
            if self.rng.random() < 0.5:
                x = x + torch.randn(x.shape, generator=self.generator) * self.rng.uniform(0.0, 0.1)
            out[b] = x
        return out


def build_model() -> UNet:
    """Return the demo UNet (MONAI defaults: InstanceNorm, PReLU, no dropout)."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=len(CLASS_NAMES),
        channels=UNET_CHANNELS,
        strides=UNET_STRIDES,
        num_res_units=UNET_RES_UNITS,
    )


def train(model: UNet, sampler: PatchSampler, steps: int, batch_size: int, lr: float) -> float:
    """Train with Dice + cross-entropy, Adam and a cosine learning-rate decay.

    Parameters
    ----------
    model : UNet
    sampler : PatchSampler
    steps : int
        Number of optimizer steps.
    batch_size : int
    lr : float
        Initial learning rate.

    Returns
    -------
    float
        Wall time of the training loop in seconds.
    """
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * 0.01)
    model.train()
    start = time.perf_counter()
    running = 0.0
    for step in range(1, steps + 1):
        images, labels = sampler.sample(batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step % 100 == 0 or step == steps:
            elapsed = time.perf_counter() - start
            print(f"step {step:5d}/{steps}  loss {running / (step % 100 or 100):.4f}  {elapsed:6.1f} s", flush=True)
            running = 0.0
    model.eval()
    return time.perf_counter() - start


def export_torchscript(model: UNet, path: Path, seed: int) -> torch.jit.ScriptModule:
    """Script the model, check it against the eager one, and save it.

    Parameters
    ----------
    model : UNet
        Trained model (put in eval mode here).
    path : pathlib.Path
        Destination ``.pt`` file; parent folders are created.
    seed : int
        Seed of the random check batch.

    Returns
    -------
    torch.jit.ScriptModule
        The module loaded back from ``path``.
    """
    model.eval()
    scripted = torch.jit.script(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    batch = torch.randn((2, 1, *PATCH_SIZE), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        diff = (loaded(batch) - model(batch)).abs().max().item()
    if diff >= 1e-5:
        raise RuntimeError(f"TorchScript output differs from the eager model by {diff:g}")
    print(f"TorchScript check: max |scripted - eager| = {diff:.2e}")
    return loaded


def predict_volume(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Segment a whole normalized volume with the sidecar's sliding window.

    Parameters
    ----------
    model : torch.nn.Module
    image : numpy.ndarray
        Normalized volume, shape (X, Y, Z).

    Returns
    -------
    numpy.ndarray
        int64 labels, shape (X, Y, Z).
    """
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(image)[None, None],
            roi_size=PATCH_SIZE,
            sw_batch_size=8,
            predictor=model,
            overlap=OVERLAP,
            mode=BLEND,
        )
    return logits[0].argmax(dim=0).numpy()


def dice_by_class(prediction: np.ndarray, reference: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Dice of gray and white matter inside a region.

    Parameters
    ----------
    prediction, reference : numpy.ndarray
        Label volumes of equal shape.
    region : numpy.ndarray
        Boolean mask of the voxels to score.

    Returns
    -------
    dict
        ``{"gray_matter": dice, "white_matter": dice}``, rounded to 4 decimals.
    """
    scores = {}
    for label, name in enumerate(CLASS_NAMES):
        if label == 0:
            continue
        pred = (prediction == label) & region
        ref = (reference == label) & region
        scores[name] = round(2.0 * float((pred & ref).sum()) / float(pred.sum() + ref.sum()), 4)
    return scores


def write_sidecar(path: Path, seed: int, steps: int, seconds: float, dice_held_out: dict, dice_train: dict) -> None:
    """Write the ``segshap-torchscript/1`` JSON sidecar next to the model."""
    sidecar = {
        "format": "segshap-torchscript/1",
        "name": NAME,
        "description": ("Gray/white matter segmentation of T1 MRI at 2 mm, trained on the MNI152 template (demo only)"),
        "in_channels": 1,
        "classes": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "patch_size": list(PATCH_SIZE),
        "overlap": OVERLAP,
        "blend": BLEND,
        "preprocessing": {
            "spacing": [SPACING_MM] * 3,
            "orientation": "RAS",
            "interpolation": "linear",
            "clip": None,
            "normalize": "zscore",
            "nonzero": True,
        },
        "training": {
            "script": "scripts/train_demo_model.py",
            "data": "nilearn MNI152 2009 T1/GM/WM templates at 2 mm",
            "seed": seed,
            "steps": steps,
            "seconds": round(seconds, 1),
            "held_out_slices": [list(band) for band in HELD_OUT_SLICES],
            "dice_held_out": dice_held_out,
            "dice_train": dice_train,
            "torch": torch.__version__,
            "monai": monai.__version__,
        },
    }
    path.write_text(json.dumps(sidecar, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2400, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="patches per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="initial Adam learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch and numpy (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "Resources", help="output folder (default: the repository's Resources/)"
    )
    return parser.parse_args()


def main() -> None:
    """Build the data, train, export, evaluate and write all outputs."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    t1, affine = template_t1_uint8()
    demo_path = args.out / "Demo" / "mni152_t1_2mm.nii.gz"
    save_demo_image(t1, affine, demo_path)
    # Train on the file as shipped, so that the demo input is exactly the
    # training input.
    raw = np.asarray(nib.load(demo_path).dataobj)
    tissue = template_tissue()
    reference = tissue.argmax(axis=0)

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"UNet channels={UNET_CHANNELS} strides={UNET_STRIDES} res_units={UNET_RES_UNITS}: {n_params} parameters")
    sampler = PatchSampler(raw, tissue, HELD_OUT_SLICES, rng, generator)
    seconds = train(model, sampler, args.steps, args.batch_size, args.lr)

    model_path = args.out / "Models" / f"{NAME}.pt"
    scripted = export_torchscript(model, model_path, args.seed)
    prediction = predict_volume(scripted, normalize_intensity(raw))
    held_out = np.zeros(raw.shape, dtype=bool)
    for z0, z1 in HELD_OUT_SLICES:
        held_out[..., z0:z1] = True
    dice_held_out = dice_by_class(prediction, reference, held_out)
    dice_train = dice_by_class(prediction, reference, ~held_out)
    write_sidecar(args.out / "Models" / f"{NAME}.json", args.seed, args.steps, seconds, dice_held_out, dice_train)

    print(f"\ntraining: {args.steps} steps in {seconds:.0f} s; held-out slices {HELD_OUT_SLICES} (half-open z ranges)")
    print(f"{'Dice':<14}{'gray_matter':>12}{'white_matter':>14}")
    for label, scores in (("held-out", dice_held_out), ("train slices", dice_train)):
        print(f"{label:<14}{scores['gray_matter']:>12.4f}{scores['white_matter']:>14.4f}")
    for path in (model_path, model_path.with_suffix(".json"), demo_path):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
