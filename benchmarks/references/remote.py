"""The game of a reference script: a table of every coalition's value, or values asked of the process that started
it (the line protocol below).

A reference script (shap, shapiq; they run in ``.venv-ref``, where the project's engine and its torch are not) asks
for the values of a batch of coalitions by writing one JSON line ``{"rows": [[0, 1, ...], ...]}`` to stdout and
reads ``{"values": [...]}`` (one value, or one list of values per target, per row) from stdin. Its last line is
``{"done": true, ...}`` with its answer. The other end is ``benchmarks/common.answer_coalitions``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class ReferenceGame:
    """What a reference script reads from its folder: ``payload.json``, and the game of ``arrays.npz``."""

    payload: dict
    n_players: int
    values: Callable[[np.ndarray], np.ndarray]
    """``(n, M)`` bool coalitions to ``(n, T)`` values."""
    single: bool
    """The table was one column: the script answers with flat estimates."""
    remote: bool
    """No table: values are asked for with the line protocol, which then carries the answer too."""

    def reply(self, answer: dict) -> None:
        """The script's answer: the protocol's last line, or the JSON on stdout."""
        if self.remote:
            finish(answer)
        else:
            json.dump(answer, sys.stdout)


def open_game(folder: str | Path) -> ReferenceGame:
    """The game in ``folder``: ``arrays.npz``'s ``table`` (``(2**M,)`` or ``(2**M, T)``, row ``k`` the coalition that
    keeps feature ``i`` iff bit ``i`` of ``k`` is set), or, without one, a game of ``payload.json``'s ``players``
    features whose values the starting process gives (stdout is then kept for the protocol)."""
    payload = json.loads((Path(folder) / "payload.json").read_text())
    arrays = np.load(Path(folder) / "arrays.npz")
    if "table" not in arrays.files:
        own_stdout()
        m = int(payload["players"])
        return ReferenceGame(payload, m, RemoteValues(m), single=False, remote=True)
    table = arrays["table"]
    if len(table) < 2 or len(table) & (len(table) - 1):
        raise ValueError(f"table must have 2**M rows (M >= 1), not {len(table)}")
    single = table.ndim == 1
    table = table.reshape(len(table), -1).astype(np.float64)
    m = int(np.log2(len(table)))
    bits = 1 << np.arange(m, dtype=np.int64)
    return ReferenceGame(payload, m, lambda rows: table[rows.astype(np.int64) @ bits], single=single, remote=False)
