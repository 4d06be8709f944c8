"""The window cache: least recently used entries go first, pinned and held entries never."""

from __future__ import annotations

import pytest
import torch

from segshap.cache import PatchCache


def _tensor(n_floats: int, fill: float = 0.0) -> torch.Tensor:
    return torch.full((n_floats,), fill)


def test_least_recently_used_entries_are_evicted_first():
    cache = PatchCache(budget_bytes=3 * 40)
    for key in "abc":
        cache.put(key, _tensor(10))
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("d", _tensor(10))
    assert cache.get("b") is None
    assert all(cache.get(key) is not None for key in "acd")
    assert cache.evictions == 1 and cache.nbytes == 3 * 40


def test_pinned_entries_stay_whatever_the_budget():
    cache = PatchCache(budget_bytes=0)
    cache.put("on", _tensor(100), pinned=True)
    cache.put("x", _tensor(1))
    assert cache.get("on") is not None and cache.get("x") is None
    assert len(cache) == 1 and cache.nbytes == 400


def test_replacing_an_entry_keeps_the_byte_count():
    cache = PatchCache(budget_bytes=1000)
    cache.put("a", _tensor(10))
    cache.put("a", _tensor(20))
    assert cache.nbytes == 80 and len(cache) == 1
    cache.put("a", _tensor(5), pinned=True)
    assert cache.nbytes == 20 and len(cache) == 1


def test_stored_entries_are_copies_in_reused_slots():
    cache = PatchCache(budget_bytes=2 * 40)
    source = _tensor(10, 1.0)
    stored = cache.put("a", source)
    source.fill_(2.0)
    assert torch.equal(cache.get("a"), _tensor(10, 1.0)) and stored.data_ptr() != source.data_ptr()
    cache.put("b", _tensor(10, 3.0))
    reserved = cache.reserved_bytes
    for i in range(20):  # far more entries than fit: their slots are reused, nothing more is allocated
        cache.put(("c", i), _tensor(10, float(i)))
        assert torch.equal(cache.get(("c", i)), _tensor(10, float(i)))
    assert cache.reserved_bytes == reserved == 2 * 40 and cache.evictions == 20


def test_held_entries_stay_valid_beyond_the_budget_until_the_block_ends():
    cache = PatchCache(budget_bytes=40)
    cache.put("old", _tensor(10, 9.0))
    with cache.held():
        first = cache.put("a", _tensor(10, 1.0))  # evicts "old", which was not held
        second = cache.put("b", _tensor(10, 2.0))  # over the budget: "a" is held, so it stays
        third = cache.put("c", _tensor(10, 3.0))
        assert cache.get("old") is None and cache.nbytes == 3 * 40
        assert [float(t[0]) for t in (first, second, third)] == [1.0, 2.0, 3.0]
    assert cache.nbytes == 40 and cache.get("c") is not None and cache.get("a") is None
    after = cache.put("d", _tensor(10, 4.0))  # reuses a slot released at the block's end
    assert float(after[0]) == 4.0 and cache.reserved_bytes == 3 * 40


def test_an_entry_replaced_while_held_keeps_its_contents_until_the_block_ends():
    cache = PatchCache(budget_bytes=0)
    with cache.held():
        first = cache.put("a", _tensor(10, 1.0))
        cache.put("a", _tensor(10, 2.0))
        cache.put("b", _tensor(10, 3.0))
        assert float(first[0]) == 1.0
    with pytest.raises(RuntimeError, match="nested"):
        with cache.held(), cache.held():
            pass


def test_negative_budget():
    with pytest.raises(ValueError, match="cache_bytes= must be a non-negative integer"):
        PatchCache(-1)
