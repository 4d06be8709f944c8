"""The network as the engine runs it: checked once, on its device, under autocast when asked, and timed.

:class:`Network` wraps whatever maps a batch of windows to logits (a ``torch.nn.Module`` or any callable). It
refuses a module in training mode, turns a first call that fails or returns the wrong shape into an error that
says what to fix, learns the number of classes from that first call, and counts the seconds spent in the model.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence

import torch

__all__ = ["Network"]


def _mode_dependent(module: torch.nn.Module) -> bool:
    """Whether a layer computes something else in training mode than in eval mode."""
    if isinstance(module, torch.nn.modules.dropout._DropoutNd):
        return module.p > 0
    return isinstance(module, torch.nn.modules.batchnorm._NormBase) and module.track_running_stats


class Network:
    """A model run on batches of windows.

    Parameters
    ----------
    model : torch.nn.Module or callable
        The model as :class:`segshap.PatchEngine` takes it (windows to logits; a module in eval mode, moved to
        ``device``).
    device : torch.device
        Where it runs.
    autocast_dtype : torch.dtype, optional
        Run it under ``torch.autocast`` with this dtype: faster, not exact.
    folds : int
        How many models' logits each output holds side by side (nnU-Net's folds).

    Attributes
    ----------
    n_outputs, n_classes : int or None
        Output channels, and classes (``n_outputs / folds``): known after the first call.
    forward_seconds : float
        Seconds spent in the model so far. On a GPU the model is timed by CUDA events and not waited for after
        each batch; reading this waits for the batches still running.
    """

    def __init__(
        self,
        model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        folds: int = 1,
    ) -> None:
        if not callable(model):
            raise ValueError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}.")
        if isinstance(model, torch.nn.Module):
            training = [name for name, module in model.named_modules() if module.training and _mode_dependent(module)]
            if training:
                raise ValueError(
                    f"The model is in training mode (layer {training[0]!r}), where dropout and batch statistics "
                    "change outputs from call to call; call model.eval() first."
                )
            model = model.to(device)
        self.model, self.device, self.autocast_dtype, self.folds = model, device, autocast_dtype, folds
        self.n_outputs: int | None = None
        self.n_classes: int | None = None
        self._seconds = 0.0
        self._timing: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()

    @property
    def forward_seconds(self) -> float:
        """Seconds spent in the model so far (on a GPU: its kernels' time, waiting for those still running)."""
        self._count_timed(wait=True)
        return self._seconds

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 logits of a batch of windows; the first call also checks what the model returns."""
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        # On a GPU the model is timed by events on its stream: the host goes on without waiting for it.
        timed_on_device = self.device.type == "cuda"
        if timed_on_device:
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        started = time.perf_counter()
        with torch.inference_mode(), autocast:
            if self.n_outputs is None:
                out = self._probe(batch)
            else:
                out = self.model(batch)
        if timed_on_device:
            events[1].record()
            self._timing.append(events)
            self._count_timed(wait=False)
        else:
            self._seconds += time.perf_counter() - started
        return out.float()

    def _count_timed(self, wait: bool) -> None:
        """Add the time of the timed batches that have finished (all of them, waiting, when ``wait``)."""
        while self._timing and (wait or self._timing[0][1].query()):
            start, end = self._timing.popleft()
            end.synchronize()
            self._seconds += start.elapsed_time(end) / 1e3

    def check_targets(self, targets: Sequence[int]) -> None:
        """Refuse target classes the model has no output for (one output channel: classes 0 and 1)."""
        classes = max(self.n_classes, 2)
        outside = [t for t in targets if t >= classes]
        if outside:
            raise ValueError(
                f"target {outside} is outside the model's classes 0..{classes - 1} "
                f"(the model outputs {self.n_classes} channel(s))."
            )

    def _probe(self, batch: torch.Tensor) -> torch.Tensor:
        try:
            out = self.model(batch)
        except Exception as error:  # the probe turns any model failure into an actionable message
            raise ValueError(
                f"The model failed on a batch of windows of shape {tuple(batch.shape)}: {error}. Check that "
                "the image has the channels the model expects and that patch_size is one the model accepts "
                "(e.g. a multiple of 32 per axis for SwinUNETR)."
            ) from error
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"The model returned a {type(out).__name__}, not a tensor; wrap it so that it returns only the "
                "full-resolution logits (B, K, *patch_size)."
            )
        if out.ndim != batch.ndim or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
            raise ValueError(
                f"The model maps windows of shape {tuple(batch.shape)} to {tuple(out.shape)}; the engine needs "
                f"logits of shape (B, K, {', '.join(map(str, batch.shape[2:]))})."
            )
        if out.shape[1] % self.folds:
            raise ValueError(
                f"The model outputs {out.shape[1]} channels, which cannot hold the logits of {self.folds} folds."
            )
        self.n_outputs = int(out.shape[1])
        self.n_classes = self.n_outputs // self.folds
        return out
