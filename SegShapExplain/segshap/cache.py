"""A byte-budgeted store of window outputs keyed by the input that produced them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch

__all__ = ["PatchCache"]


class PatchCache:
    """Least-recently-used cache of tensors within a byte budget.

    Pinned entries (the all-on and all-off states of every window) are kept whatever the budget; the others are
    evicted, least recently used first, once the budget is exceeded.

    Parameters
    ----------
    budget_bytes : int
        Bytes the unpinned entries may occupy together. ``0`` keeps only pinned entries.
    """

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {budget_bytes}.")
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._pinned: dict[Hashable, torch.Tensor] = {}
        self.unpinned_bytes = 0
        self.pinned_bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries) + len(self._pinned)

    @property
    def nbytes(self) -> int:
        return self.unpinned_bytes + self.pinned_bytes

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The tensor stored under ``key``, or ``None``; a hit makes the entry the most recently used."""
        tensor = self._pinned.get(key)
        if tensor is not None:
            return tensor
        tensor = self._entries.get(key)
        if tensor is not None:
            self._entries.move_to_end(key)
        return tensor

    def put(self, key: Hashable, tensor: torch.Tensor, pinned: bool = False) -> None:
        """Store ``tensor`` under ``key``, evicting least recently used entries beyond the budget."""
        size = self._nbytes(tensor)
        if pinned:
            if key in self._entries:
                self.unpinned_bytes -= self._nbytes(self._entries.pop(key))
            if key not in self._pinned:
                self.pinned_bytes += size
            self._pinned[key] = tensor
            return
        if key in self._pinned:
            return
        if key in self._entries:
            self.unpinned_bytes -= self._nbytes(self._entries.pop(key))
        self._entries[key] = tensor
        self.unpinned_bytes += size
        while self.unpinned_bytes > self.budget_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.unpinned_bytes -= self._nbytes(evicted)
            self.evictions += 1

    @staticmethod
    def _nbytes(tensor: torch.Tensor) -> int:
        return tensor.element_size() * tensor.nelement()
