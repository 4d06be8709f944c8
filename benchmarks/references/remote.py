"""Coalition values from the process that started this one: the line protocol of the reference scripts.

A reference script (shap, shapiq; they run in ``.venv-ref``, where the project's engine and its torch are not) asks
for the values of a batch of coalitions by writing one JSON line ``{"rows": [[0, 1, ...], ...]}`` to stdout and
reads ``{"values": [...]}`` (one value, or one list of values per target, per row) from stdin. Its last line is
``{"done": true, ...}`` with its answer. The other end is ``benchmarks/common.answer_coalitions``.
"""

from __future__ import annotations

import json
import sys

import numpy as np

_PROTOCOL = sys.stdout
"""The protocol's stream: stdout as this module found it. :func:`own_stdout` sends everything else printed (the
libraries' logs and warnings) to stderr, where it cannot break a line of the protocol."""


def own_stdout() -> None:
    """Keep stdout for the protocol: whatever else is printed from now on goes to stderr."""
    sys.stdout = sys.stderr


def ask(rows: np.ndarray) -> np.ndarray:
    """The values of the coalitions ``rows`` (``(n, M)``, true where a feature is kept): ``(n,)`` or ``(n, T)``."""
    _PROTOCOL.write(json.dumps({"rows": np.asarray(rows, dtype=bool).astype(int).tolist()}) + "\n")
    _PROTOCOL.flush()
    return np.asarray(json.loads(sys.stdin.readline())["values"], dtype=np.float64)


def finish(answer: dict) -> None:
    """Write the script's answer as the protocol's last line."""
    _PROTOCOL.write(json.dumps({"done": True, **answer}) + "\n")
    _PROTOCOL.flush()


class RemoteValues:
    """Every target's values of the coalitions asked so far, each coalition asked of the other process once (shapiq
    estimates one target at a time, and its draws depend on the seed only, so later targets ask for the same
    rows)."""

    def __init__(self, n_players: int) -> None:
        if n_players > 62:
            raise ValueError(f"at most 62 players (a coalition is an int64 key), not {n_players}")
        self.n_players = n_players
        self.bits = 1 << np.arange(n_players, dtype=np.int64)
        self.known: dict[int, np.ndarray] = {}

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """``(n, T)`` values of the coalitions ``rows``."""
        rows = np.asarray(rows, dtype=bool).reshape(-1, self.n_players)
        keys = (rows.astype(np.int64) @ self.bits).tolist()
        new: dict[int, np.ndarray] = {}
        for row, key in zip(rows, keys):
            if key not in self.known and key not in new:
                new[key] = row
        if new:
            values = ask(np.array(list(new.values()))).reshape(len(new), -1)
            self.known.update(zip(new, values))
        return np.stack([self.known[key] for key in keys])
