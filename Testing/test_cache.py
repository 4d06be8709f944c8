"""The window cache: least recently used entries leave the device first, pinned and held entries never; evicted
entries wait in the host level and come back with the same contents."""

from __future__ import annotations

import pytest
import torch

from segshap.cache import PatchCache

LIKE = (torch.Size([10]), torch.float32)
SLOT = 40  # bytes of one entry


def _store(cache: PatchCache, state: bytes, fill: float, window: int = 0, pinned: bool = False) -> int:
    """Store an entry as the engine does: inside a held block, which ends (and enforces the budget) unless one is
    open already."""
    if cache._held is None and not pinned:
        with cache.held():
            return _store(cache, state, fill, window)
    slot = int(cache.store(window, [state], LIKE, pinned=pinned)[0])
    cache.slab(window)[slot] = fill
    return slot


def _read(cache: PatchCache, state: bytes, window: int = 0) -> float | None:
    if cache._held is None:
        with cache.held():
            return _read(cache, state, window)
    slot = int(cache.find(window, [state])[0])
    return None if slot < 0 else float(cache.slab(window)[slot][0])


def test_least_recently_used_entries_are_evicted_first():
    cache = PatchCache(budget_bytes=3 * SLOT)
    for fill, state in enumerate([b"a", b"b", b"c"]):
        _store(cache, state, fill)
    assert _read(cache, b"a") == 0.0  # "a" is now the most recently used
    _store(cache, b"d", 3.0)
    assert _read(cache, b"b") is None
    assert [_read(cache, s) for s in (b"a", b"c", b"d")] == [0.0, 2.0, 3.0]
    assert cache.evictions == 1 and cache.nbytes == 3 * SLOT


def test_pinned_entries_stay_whatever_the_budget_and_keys_are_stored_once():
    cache = PatchCache(budget_bytes=0)
    _store(cache, b"on", 1.0, pinned=True)
    _store(cache, b"x", 2.0)
    assert _read(cache, b"on") == 1.0 and _read(cache, b"x") is None
    assert len(cache) == 1 and cache.nbytes == SLOT
    with pytest.raises(ValueError, match="already holds"):
        cache.store(0, [b"on"], LIKE, pinned=True)
    with pytest.raises(RuntimeError, match="inside a held"):
        cache.store(0, [b"y"], LIKE)


def test_windows_have_their_own_slabs_and_slots_are_reused():
    cache = PatchCache(budget_bytes=2 * SLOT)
    _store(cache, b"a", 1.0, window=0)
    _store(cache, b"a", 2.0, window=1)
    assert _read(cache, b"a", window=0) == 1.0 and _read(cache, b"a", window=1) == 2.0
    reserved = cache.reserved_bytes
    for i in range(50):  # far more entries than fit: their slots are reused, nothing more is allocated
        _store(cache, bytes([i]), float(i), window=1)
        assert _read(cache, bytes([i]), window=1) == float(i)
    assert cache.reserved_bytes == reserved and cache.evictions == 50


def test_held_entries_stay_beyond_the_budget_until_the_block_ends():
    cache = PatchCache(budget_bytes=SLOT)
    _store(cache, b"old", 9.0)
    with cache.held():
        slots = [_store(cache, state, fill) for fill, state in enumerate([b"a", b"b", b"c"], start=1)]
        assert _read(cache, b"old") is None and cache.nbytes == 3 * SLOT  # "old" was not held
        assert len(set(slots)) == 3 and [float(cache.slab(0)[s][0]) for s in slots] == [1.0, 2.0, 3.0]
    assert cache.nbytes == SLOT and _read(cache, b"c") == 3.0 and _read(cache, b"a") is None
    with pytest.raises(RuntimeError, match="nested"):
        with cache.held(), cache.held():
            pass


def test_retained_entries_survive_eviction_until_released():
    cache = PatchCache(budget_bytes=SLOT)
    _store(cache, b"keep", 1.0)
    cache.retain({(0, b"keep")})
    _store(cache, b"new", 2.0)
    assert _read(cache, b"keep") == 1.0 and _read(cache, b"new") is None
    cache.retain(set())
    _store(cache, b"newer", 3.0)
    assert _read(cache, b"keep") is None and _read(cache, b"newer") == 3.0


def test_evicted_entries_come_back_from_the_host_level_with_the_same_contents():
    cache = PatchCache(budget_bytes=SLOT, host_bytes=2 * SLOT)
    for fill, state in enumerate([b"a", b"b", b"c", b"d"]):
        _store(cache, state, fill + 0.5)
    # "d" on the device, "b" and "c" on the host, "a" dropped (the host level holds two).
    assert cache.host_entries == 2 and (0, b"a") not in cache
    assert all((0, s) in cache for s in (b"b", b"c", b"d"))
    assert _read(cache, b"b") == 1.5  # copied back, "d" moves to the host, making room
    assert cache.host_hits == 1 and cache.host_entries == 2 and len(cache) == 1
    assert [_read(cache, s) for s in (b"c", b"d", b"b")] == [2.5, 3.5, 1.5]
    assert cache.host_hits == 4 and _read(cache, b"a") is None


def test_negative_budgets():
    with pytest.raises(ValueError, match="cache_bytes= must be a non-negative integer"):
        PatchCache(-1)
    with pytest.raises(ValueError, match="host_cache_bytes= must be a non-negative integer"):
        PatchCache(0, host_bytes=-1)


def test_several_entries_are_stored_at_once_in_ascending_slots_evicting_enough_for_all():
    cache = PatchCache(budget_bytes=4 * SLOT)
    with cache.held():
        slots = cache.store(0, [b"a", b"b", b"c"], LIKE)
        cache.slab(0)[slots] = torch.tensor([[0.0], [1.0], [2.0]])
    assert slots.tolist() == list(range(slots[0], slots[0] + 3))
    with cache.held():
        more = cache.store(0, [b"d", b"e"], LIKE)
        cache.slab(0)[more] = torch.tensor([[3.0], [4.0]])
    assert cache.evictions == 1 and _read(cache, b"a") is None
    assert [_read(cache, s) for s in (b"b", b"c", b"d", b"e")] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="already holds"), cache.held():
        cache.store(0, [b"f", b"d"], LIKE)
