"""What every benchmark suite shares: the machine record, peak memory, the shap reference process, and writing
results into BENCHMARKS.md between markers."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = Path(
    os.environ.get("SEGSHAP_REFERENCE_PYTHON")
    or Path(os.environ.get("SEGSHAP_REFERENCE_VENV", ROOT / ".venv-ref")) / "bin" / "python"
)
"""shap's Python (``.venv-ref``, see ``scripts/reference_env.sh``)."""
_DEMO_CASE = ROOT / "Resources" / "Demo" / "demo.json"
_DEMO = json.loads(_DEMO_CASE.read_text())
DEMO_MODEL = (_DEMO_CASE.parent / _DEMO["model"]).resolve()
DEMO_IMAGE = (_DEMO_CASE.parent / _DEMO["image"]).resolve()
DEMO_ROI = tuple(tuple(pair) for pair in _DEMO["roi"])
"""The demo case, as ``segshap demo`` and the Slicer self-test read it."""
MODES = ("quick", "full")


def machine() -> dict:
    """CPU model and cores, GPU, memory, and the versions that matter for the numbers."""
    import monai

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    if os.path.exists("/proc/meminfo"):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai.__version__,
        "python": platform.python_version(),
    }


def machine_line(record: dict) -> str:
    gpu = record["gpu"] or "no GPU"
    return (
        f"{record['cpu']}, {record['cores']} cores, {record['memory_gib']} GiB, {gpu}; torch {record['torch']} "
        f"({record['torch_threads']} threads), MONAI {record['monai']}, Python {record['python']}"
    )


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reference_available() -> bool:
    return REFERENCE_PYTHON.exists()


def run_reference(script: str, payload: dict, arrays: dict[str, np.ndarray], evaluate=None) -> dict:
    """Run ``benchmarks/references/<script>`` in the shap environment (``.venv-ref``) on a JSON payload and NumPy
    arrays; returns its JSON answer. shap never enters this process (its ``slicer`` package would shadow
    slicer-core's). Without ``evaluate`` the script reads its game from the arrays (a table of every coalition's
    value) and prints its answer; with it (``(n, M)`` bool coalitions to ``(n,)`` or ``(n, T)`` values) the game
    lives here and the script asks for values line by line (``references/remote.py``)."""
    with tempfile.TemporaryDirectory(prefix="segshap-bench-") as folder:
        np.savez(Path(folder) / "arrays.npz", **arrays)
        (Path(folder) / "payload.json").write_text(json.dumps(payload))
        command = [str(REFERENCE_PYTHON), str(ROOT / "benchmarks" / "references" / script), folder]
        if evaluate is not None:
            answer, _, _ = answer_coalitions(command, evaluate)
            return answer
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{script} failed in {REFERENCE_PYTHON}:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout)


def answer_coalitions(command: list[str], evaluate) -> tuple[dict, np.ndarray, np.ndarray]:
    """Run ``command`` (a reference script speaking ``references/remote.py``'s protocol), answering each batch of
    coalitions it asks for with ``evaluate``; returns its answer, the coalitions it asked for and their values."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    asked, answered, answer = [], [], None
    try:
        for line in process.stdout:
            message = json.loads(line)
            if message.pop("done", False):
                answer = message
                break
            coalitions = np.array(message["rows"], bool)
            values = np.asarray(evaluate(coalitions))
            asked.append(coalitions)
            answered.append(values)
            process.stdin.write(json.dumps({"values": values.tolist()}) + "\n")
            process.stdin.flush()
        process.wait()
    finally:
        if process.poll() is None:  # this side failed: the script would wait for an answer forever
            process.kill()
            process.wait()
    if process.returncode != 0 or answer is None:
        raise RuntimeError(f"{Path(command[1]).name} failed in {command[0]} (its messages are above, on stderr)")
    if not asked:
        return answer, np.zeros((0, 0), bool), np.zeros(0)
    return answer, np.concatenate(asked), np.concatenate(answered)


def shap_kernel_explainer(
    m: int, nsamples: int, seed: int, evaluate
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``shap.KernelExplainer(l1_reg=False)`` in the shap environment (``benchmarks/references/shap_bridge.py``) on a
    game that lives in this process: ``evaluate`` maps ``(n, m)`` bool coalitions to ``(n,)`` or ``(n, T)`` values.
    Returns shap's estimate ``(m, T)``, the coalitions it asked for and their values, and the wall seconds."""
    return _shap_bridge([m, nsamples, seed], m, evaluate)


def shap_partition_explainer(
    m: int, max_evals: int, seed: int, linkage: np.ndarray, evaluate
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``shap.PartitionExplainer`` (Owen values over the hierarchy ``linkage``, a SciPy linkage matrix over the
    ``m`` features) with ``max_evals`` evaluations, in the shap environment, on a game that lives in this process;
    ``evaluate`` and the returns as for :func:`shap_kernel_explainer`."""
    with tempfile.TemporaryDirectory(prefix="segshap-bench-") as folder:
        path = Path(folder) / "linkage.npy"
        np.save(path, np.asarray(linkage, dtype=np.float64))
        return _shap_bridge([m, max_evals, seed, path], m, evaluate)


def _shap_bridge(arguments: list, m: int, evaluate) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Run ``shap_bridge.py`` with ``arguments``, answering each batch of coalitions it asks for with ``evaluate``."""
    started = time.perf_counter()
    command = [str(REFERENCE_PYTHON), str(ROOT / "benchmarks" / "references" / "shap_bridge.py"), *map(str, arguments)]
    answer, asked, answered = answer_coalitions(command, evaluate)
    seconds = time.perf_counter() - started
    return np.array(answer["shap_values"]).reshape(m, -1), asked, answered, seconds


def write_section(markdown: Path, name: str, text: str) -> None:
    """Replace the text between ``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` (appended if
    missing)."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = markdown.read_text() if markdown.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block
    markdown.write_text(updated + ("\n" if not updated.endswith("\n") else ""))


@contextlib.contextmanager
def plain_estimates(surrogate: bool = True):
    """Inside the block, ``segshap.kernel_shap`` returns its designs' plain estimates: the regression adjustments
    (boosted trees, and Leverage SHAP's MSR) are switched off (their size limits set to 0), as in the paper's
    scheme. With ``surrogate=False`` the chains also lose their cross-fitted second-order surrogate (it is fitted
    as zero): their unadjusted estimate, antithetic permutation sampling mixed with the per-size estimate."""
    import segshap.chains
    import segshap.leverage
    from segshap.surrogate import Surrogate

    def zero_surrogate(coalitions, values, pairs=None):
        t = np.asarray(values).reshape(len(coalitions), -1).shape[1]
        m = coalitions.shape[1]
        return Surrogate(np.zeros(t), np.zeros((m, t)), np.zeros((0, 2), np.int64), np.zeros((0, t)))

    saved = segshap.leverage.ADJUST_CELLS, segshap.chains.ADJUST_CELLS, segshap.chains.fit_surrogate
    segshap.leverage.ADJUST_CELLS = segshap.chains.ADJUST_CELLS = 0
    if not surrogate:
        segshap.chains.fit_surrogate = zero_surrogate
    try:
        yield
    finally:
        segshap.leverage.ADJUST_CELLS, segshap.chains.ADJUST_CELLS, segshap.chains.fit_surrogate = saved


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: plots are files, no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path) -> None:
    """Lay out, write (110 dpi) and close a figure."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
