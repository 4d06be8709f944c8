"""Least-recently-used stores: the one LRU type of the project (:class:`LeastRecentlyUsed`), and on it the
byte-budgeted store of window outputs keyed by the input that produced them (:class:`PatchCache`)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

import torch

from .inputs import checked_integer

__all__ = ["LeastRecentlyUsed", "PatchCache", "DEFAULT_CACHE_BYTES"]

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")

DEFAULT_CACHE_BYTES = 2 * 1024**3
"""Default budget for cached window outputs beyond the pinned all-on and all-off states."""

_BLOCK_BYTES = 16 * 1024**2
"""Size of the blocks slots are carved from: few enough allocations to keep the heap whole, little left unused."""


class LeastRecentlyUsed(Generic[Key, Value]):
    """A mapping that remembers the order in which its entries were last used: iteration runs from the least
    recently used to the most recently used. Storing an entry or getting it with :meth:`get` uses it; ``in`` does
    not. Callers decide what to forget (:meth:`forget_oldest`, :meth:`pop`).
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[Key, Value] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Key]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[Key, Value]]:
        """``(key, value)`` from the least to the most recently used."""
        return iter(self._entries.items())

    def get(self, key: Key) -> Value | None:
        """The value under ``key`` (now the most recently used), or ``None``."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def __setitem__(self, key: Key, value: Value) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)

    def __getitem__(self, key: Key) -> Value:
        """The value under ``key``, without using it."""
        return self._entries[key]

    def pop(self, key: Key) -> Value:
        return self._entries.pop(key)

    def forget_oldest(self, keep: int) -> None:
        """Forget the least recently used entries until at most ``keep`` are left."""
        while len(self._entries) > keep:
            self._entries.popitem(last=False)


class _SlotPool:
    """Slots of one shape and dtype, carved from blocks allocated once and reused as entries come and go."""

    def __init__(self, shape: torch.Size, dtype: torch.dtype, device: torch.device, block_bytes: int) -> None:
        self._shape, self._dtype, self._device = shape, dtype, device
        slot_bytes = max(1, dtype.itemsize * shape.numel())
        self._slots_per_block = max(1, block_bytes // slot_bytes)
        self._free: list[torch.Tensor] = []
        self.reserved_bytes = 0

    def take(self) -> torch.Tensor:
        if not self._free:
            block = torch.empty((self._slots_per_block, *self._shape), dtype=self._dtype, device=self._device)
            self.reserved_bytes += block.element_size() * block.nelement()
            self._free.extend(reversed(block.unbind(0)))
        return self._free.pop()

    def give_back(self, slot: torch.Tensor) -> None:
        self._free.append(slot)


class PatchCache:
    """Least-recently-used cache of tensors within a byte budget.

    Pinned entries (the all-on and all-off states of every window) are kept whatever the budget; the others are
    evicted, least recently used first, once the budget is exceeded.

    Unpinned entries are copied into slots of blocks allocated once per shape, and an evicted entry's slot is
    reused: window outputs come and go by the thousand between the model's own allocations, and allocated one
    by one they fragment the process heap until its resident memory is many times the budget. The blocks stay
    allocated (their high-water mark is :attr:`reserved_bytes`) until the cache is dropped.

    Parameters
    ----------
    budget_bytes : int
        Bytes the unpinned entries may occupy together. ``0`` keeps only pinned entries (and held ones, see
        :meth:`held`).
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = checked_integer(budget_bytes, "cache_bytes", 0)
        self._entries: LeastRecentlyUsed[Hashable, torch.Tensor] = LeastRecentlyUsed()
        self._pinned: dict[Hashable, torch.Tensor] = {}
        self._pools: dict[tuple, _SlotPool] = {}
        self._slot_pool: dict[Hashable, _SlotPool] = {}
        self._held: set[Hashable] | None = None
        self._retained: set[Hashable] = set()
        self._released_after_hold: list[tuple[_SlotPool, torch.Tensor]] = []
        self.unpinned_bytes = 0
        self.pinned_bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries) + len(self._pinned)

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is stored (a lookup that does not count as a use)."""
        return key in self._pinned or key in self._entries

    def retain(self, keys: set, keep_previous: bool = False) -> None:
        """Keep the entries under ``keys`` from eviction, whatever the budget, until the next call without
        ``keep_previous`` (which releases those retained before it, then brings the cache back within budget)."""
        self._retained = self._retained | set(keys) if keep_previous else set(keys)
        if not keep_previous:
            self._evict()

    @property
    def nbytes(self) -> int:
        """Bytes of the entries stored now."""
        return self.unpinned_bytes + self.pinned_bytes

    @property
    def reserved_bytes(self) -> int:
        """Bytes allocated: the pinned entries and every block of slots, used or free."""
        return self.pinned_bytes + sum(pool.reserved_bytes for pool in self._pools.values())

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """While the block runs, entries it reads or stores are not evicted and their slots are not reused.

        What a caller got from the cache stays valid until the block ends, even beyond the budget; the cache is
        brought back within its budget when the block ends.
        """
        if self._held is not None:
            raise RuntimeError("PatchCache.held() blocks cannot be nested.")
        self._held = set()
        try:
            yield
        finally:
            self._held = None
            for pool, slot in self._released_after_hold:
                pool.give_back(slot)
            self._released_after_hold.clear()
            self._evict()

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The tensor stored under ``key``, or ``None``; a hit makes the entry the most recently used."""
        tensor = self._pinned.get(key)
        if tensor is not None:
            return tensor
        tensor = self._entries.get(key)
        if tensor is not None:
            if self._held is not None:
                self._held.add(key)
        return tensor

    def put(self, key: Hashable, tensor: torch.Tensor, pinned: bool = False) -> torch.Tensor:
        """Store ``tensor`` under ``key``, evicting least recently used entries beyond the budget.

        Returns the stored tensor: a copy in one of the cache's slots for unpinned entries, whose contents stay
        valid while the entry is cached or held.
        """
        if key in self._entries:
            self._release(key)
        if pinned:
            if key not in self._pinned:
                stored = tensor.contiguous()
                self.pinned_bytes += self._nbytes(stored)
                self._pinned[key] = stored
            return self._pinned[key]
        if key in self._pinned:
            return self._pinned[key]
        pool_key = (tensor.shape, tensor.dtype, tensor.device)
        pool = self._pools.get(pool_key)
        if pool is None:
            block_bytes = min(_BLOCK_BYTES, self.budget_bytes)
            pool = self._pools[pool_key] = _SlotPool(tensor.shape, tensor.dtype, tensor.device, block_bytes)
        self._evict(room_for=self._nbytes(tensor))  # first, so that an evicted entry's slot can take it
        slot = pool.take()
        slot.copy_(tensor)
        self._entries[key], self._slot_pool[key] = slot, pool
        self.unpinned_bytes += self._nbytes(slot)
        if self._held is not None:
            self._held.add(key)
        self._evict()
        return slot

    def _evict(self, room_for: int = 0) -> None:
        # Entries touched while held are the most recently used, so eviction stops at the first held one;
        # retained entries are passed over.
        excess = self.unpinned_bytes + room_for - self.budget_bytes
        victims = []
        for key, slot in self._entries.items():
            if excess <= 0 or (self._held is not None and key in self._held):
                break
            if key not in self._retained:
                victims.append(key)
                excess -= self._nbytes(slot)
        for key in victims:
            self._release(key)
            self.evictions += 1

    def _release(self, key: Hashable) -> None:
        slot, pool = self._entries.pop(key), self._slot_pool.pop(key)
        self.unpinned_bytes -= self._nbytes(slot)
        if self._held is not None and key in self._held:
            self._released_after_hold.append((pool, slot))
        else:
            pool.give_back(slot)

    @staticmethod
    def _nbytes(tensor: torch.Tensor) -> int:
        return tensor.element_size() * tensor.nelement()
