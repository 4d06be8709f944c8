"""The window cache: least recently used entries go first, pinned entries never."""

from __future__ import annotations

import pytest
import torch

from segshap.cache import PatchCache


def _tensor(n_floats: int) -> torch.Tensor:
    return torch.zeros(n_floats)


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


def test_negative_budget():
    with pytest.raises(ValueError, match="cache_bytes must be >= 0"):
        PatchCache(-1)
