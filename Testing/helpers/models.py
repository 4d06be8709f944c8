"""Small real MONAI networks with seeded weights, wrappers that observe how the engine calls them, and the
sidecar of the TorchScript test model."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet


def small_unet(in_channels: int = 1, out_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(3, in_channels, out_channels, (4, 8, 16), (2, 2), num_res_units=1).eval()


class PerSample(torch.nn.Module):
    """Runs a network one window at a time, so its numerics cannot depend on how windows are batched."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i : i + 1]) for i in range(len(x))])


class CountingModel(torch.nn.Module):
    """Records the batch size of every call."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return self.net(x)


TEST_SIDECAR = {
    "format": "segshap-torchscript/1",
    "in_channels": 1,
    "classes": {"0": "background", "1": "tissue_a", "2": "tissue_b"},
    "patch_size": [32, 32, 32],
    "overlap": 0.25,
    "blend": "gaussian",
    "preprocessing": {"spacing": [2.0, 2.0, 2.0], "normalize": "zscore", "nonzero": True},
}
