"""Least-recently-used stores: the one LRU type of the project (:class:`LeastRecentlyUsed`), and on it the store of
window outputs keyed by the input that produced them (:class:`PatchCache`): per window one slab of slots on the
device, addressed by integer slot, within a byte budget, with a second level in host memory."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np
import torch

from .inputs import checked_integer

__all__ = ["LeastRecentlyUsed", "PatchCache", "DEFAULT_CACHE_BYTES", "DEFAULT_HOST_CACHE_BYTES"]

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")

DEFAULT_CACHE_BYTES = 2 * 1024**3
"""Default budget for cached window outputs on the device, beyond the pinned all-on and all-off states."""

DEFAULT_HOST_CACHE_BYTES = 4 * 1024**3
"""Default budget of the host-memory second level when the device is a GPU (none on the CPU, which is the host)."""

_GROWTH = 1.25
"""A full slab grows to this many times its slots (or by :data:`_STEP_BYTES`, if more): few reallocations, at most
a quarter of a large slab unused."""

_STEP_BYTES = 16 * 1024**2
"""The least a slab grows by (at least one slot): small slabs are not copied again for every few slots."""


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


class _Slabs:
    """Per window, one tensor of slots ``(capacity, *shape)`` on one device; slots are taken and given back.

    A slab that runs out of free slots is reallocated :data:`_GROWTH` times larger and its contents copied, so slot
    numbers stay valid. Window outputs come and go by the thousand between the model's own allocations; kept in a
    few slabs they neither fragment the heap nor cost an allocation each.
    """

    def __init__(self, device: torch.device, pin_memory: bool = False) -> None:
        self.device, self.pin_memory = device, pin_memory
        self.slabs: dict[int, torch.Tensor] = {}
        self._free: dict[int, list[int]] = {}
        self.reserved_bytes = 0

    def take(self, window: int, like: tuple[torch.Size, torch.dtype]) -> int:
        free = self._free.setdefault(window, [])
        if not free:
            self._grow(window, *like)
        return free.pop()

    def give_back(self, window: int, slot: int) -> None:
        self._free[window].append(slot)

    def _grow(self, window: int, shape: torch.Size, dtype: torch.dtype) -> None:
        old = self.slabs.get(window)
        capacity = 0 if old is None else old.shape[0]
        slot_bytes = dtype.itemsize * shape.numel()
        grown = max(capacity + max(1, _STEP_BYTES // max(slot_bytes, 1)), int(capacity * _GROWTH))
        slab = torch.empty((grown, *shape), dtype=dtype, device=self.device, pin_memory=self.pin_memory)
        if old is not None:
            slab[:capacity].copy_(old)
        self.slabs[window] = slab
        self._free[window].extend(range(grown - 1, capacity - 1, -1))
        self.reserved_bytes += (grown - capacity) * slab[0].nbytes


class PatchCache:
    """Window outputs, each under a key ``(window, state)``, in slabs of slots addressed by integer.

    Per window the outputs share one shape and live in one slab on the device (:meth:`slab`), so the outputs of
    many coalitions are read with one gather by their slots. Pinned entries (the all-on and all-off states of every
    window) stay whatever the budget; the others are evicted from the device, least recently used first, once
    their bytes exceed ``budget_bytes``. An evicted entry moves to the second level in host memory while it fits
    ``host_bytes`` (least recently used dropped first there), and is copied back to the device when it is asked
    for again: far cheaper than running the window again on a GPU.

    Parameters
    ----------
    budget_bytes : int
        Bytes the unpinned entries may occupy on the device. ``0`` keeps only pinned entries there (and held ones,
        see :meth:`held`).
    host_bytes : int
        Bytes of the second level in host memory (page-locked when the device is a GPU); ``0``: none.
    device : torch.device
        Where the first level lives: the device windows run and are blended on.

    Attributes
    ----------
    evictions : int
        Entries evicted from the device level (moved to the host level, or dropped).
    host_hits : int
        Entries found in the host level and copied back to the device.
    """

    def __init__(self, budget_bytes: int, host_bytes: int = 0, device: torch.device | str = "cpu") -> None:
        self.budget_bytes = checked_integer(budget_bytes, "cache_bytes", 0)
        self.host_bytes = checked_integer(host_bytes, "host_cache_bytes", 0)
        device = torch.device(device)
        self._device = _Slabs(device)
        self._host = _Slabs(torch.device("cpu"), pin_memory=device.type == "cuda")
        self._entries: LeastRecentlyUsed[tuple, int] = LeastRecentlyUsed()
        self._pinned: dict[tuple, int] = {}
        self._host_entries: LeastRecentlyUsed[tuple, int] = LeastRecentlyUsed()
        self._like: dict[int, tuple[torch.Size, torch.dtype]] = {}
        self._slot_bytes: dict[int, int] = {}
        self._held: set[tuple] | None = None
        self._retained: set[tuple] = set()
        self.unpinned_bytes = self.pinned_bytes = self.host_used_bytes = 0
        self.evictions = self.host_hits = 0

    def __len__(self) -> int:
        """Entries on the device (the host level's are :attr:`host_entries`)."""
        return len(self._entries) + len(self._pinned)

    def __contains__(self, key: tuple) -> bool:
        """Whether ``key`` is stored on either level (a lookup that does not count as a use)."""
        return key in self._pinned or key in self._entries or key in self._host_entries

    @property
    def nbytes(self) -> int:
        """Bytes of the entries stored on the device now."""
        return self.unpinned_bytes + self.pinned_bytes

    @property
    def reserved_bytes(self) -> int:
        """Bytes allocated on the device: every slab, its slots used or free."""
        return self._device.reserved_bytes

    @property
    def host_entries(self) -> int:
        """Entries on the host level."""
        return len(self._host_entries)

    @property
    def host_reserved_bytes(self) -> int:
        """Bytes allocated on the host level: every slab, its slots used or free."""
        return self._host.reserved_bytes

    def slab(self, window: int) -> torch.Tensor:
        """``(capacity, *shape)``: the device slots of ``window``'s outputs, indexed by the slots of :meth:`find`
        and :meth:`store` (valid until the next store, which may reallocate the slab)."""
        return self._device.slabs[window]

    def retain(self, keys: set, keep_previous: bool = False) -> None:
        """Keep the entries under ``keys`` on the device, whatever the budget, until the next call without
        ``keep_previous`` (which releases those retained before it, then brings the cache back within budget)."""
        self._retained = self._retained | set(keys) if keep_previous else set(keys)
        if not keep_previous:
            self._evict()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """While the block runs, entries it finds or stores stay on the device and keep their slots, even beyond
        the budget; the cache is brought back within its budget when the block ends."""
        if self._held is not None:
            raise RuntimeError("PatchCache.held() blocks cannot be nested.")
        self._held = set()
        try:
            yield
        finally:
            self._held = None
            self._evict()

    def find(self, window: int, states: Sequence[bytes]) -> np.ndarray:
        """The device slot of each of ``window``'s ``states``, ``-1`` where it is not cached. A hit makes the entry
        the most recently used; one on the host level is copied back to the device first (inside a :meth:`held`
        block, as :meth:`store`)."""
        slots = np.full(len(states), -1, dtype=np.int64)
        for position, state in enumerate(states):
            key = (window, state)
            slot = self._pinned.get(key)
            if slot is None:
                slot = self._entries.get(key)
                if slot is None and key in self._host_entries:
                    slot = self._bring_back(key)
                if slot is not None and self._held is not None:
                    self._held.add(key)
            if slot is not None:
                slots[position] = slot
        return slots

    def store(
        self, window: int, states: Sequence[bytes], like: tuple[torch.Size, torch.dtype], pinned: bool = False
    ) -> np.ndarray:
        """Device slots for new entries ``(window, state)`` of each of ``states``, whose tensors have shape and dtype
        ``like``; the caller writes the outputs into ``slab(window)[slots]``. Evicts least recently used entries
        beyond the budget. Slots taken from a fresh part of the slab come in ascending order, one after another.

        Unpinned entries are stored inside a :meth:`held` block, so that their slots stay their own while the
        caller fills and reads them; the budget holds again when the block ends."""
        keys = [(window, state) for state in states]
        for key in keys:
            if key in self:
                raise ValueError(f"The cache already holds {key!r}.")
        if not pinned and self._held is None:
            raise RuntimeError("PatchCache.store() of unpinned entries must run inside a held() block.")
        self._like.setdefault(window, like)
        slot_bytes = self._slot_bytes.setdefault(window, like[1].itemsize * like[0].numel())
        if not pinned:
            self._evict(room_for=slot_bytes * len(keys))  # first, so that evicted entries' slots can take them
        entries = self._pinned if pinned else self._entries
        slots = np.empty(len(keys), dtype=np.int64)
        for position, key in enumerate(keys):
            slots[position] = entries[key] = self._device.take(window, like)
        if pinned:
            self.pinned_bytes += slot_bytes * len(keys)
        else:
            self.unpinned_bytes += slot_bytes * len(keys)
            self._held.update(keys)
        return slots

    def _bring_back(self, key: tuple) -> int:
        window = key[0]
        host_slot = self._host_entries.pop(key)
        self.host_used_bytes -= self._slot_bytes[window]
        slot = int(self.store(window, [key[1]], self._like[window])[0])
        self.slab(window)[slot].copy_(self._host.slabs[window][host_slot], non_blocking=True)
        self._host.give_back(window, host_slot)
        self.host_hits += 1
        return slot

    def _evict(self, room_for: int = 0) -> None:
        # Entries touched while held are the most recently used, so eviction stops at the first held one;
        # retained entries are passed over.
        excess = self.unpinned_bytes + room_for - self.budget_bytes
        victims = []
        for key, _ in self._entries.items():
            if excess <= 0 or (self._held is not None and key in self._held):
                break
            if key not in self._retained:
                victims.append(key)
                excess -= self._slot_bytes[key[0]]
        for key in victims:
            window, slot = key[0], self._entries.pop(key)
            self.unpinned_bytes -= self._slot_bytes[window]
            self._to_host(key, slot)
            self._device.give_back(window, slot)
            self.evictions += 1

    def _to_host(self, key: tuple, slot: int) -> None:
        """Keep an evicted entry in host memory, dropping the host level's least recently used to make room."""
        window = key[0]
        size = self._slot_bytes[window]
        if size > self.host_bytes:
            return
        while self.host_used_bytes + size > self.host_bytes:
            old_key, old_slot = next(iter(self._host_entries.items()))
            self._host_entries.pop(old_key)
            self._host.give_back(old_key[0], old_slot)
            self.host_used_bytes -= self._slot_bytes[old_key[0]]
        host_slot = self._host.take(window, self._like[window])
        # Blocking: the host slab may be reallocated by the CPU before an asynchronous copy into it would land.
        self._host.slabs[window][host_slot].copy_(self.slab(window)[slot])
        self._host_entries[key] = host_slot
        self.host_used_bytes += size
