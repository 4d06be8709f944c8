"""A cohort on Ray against what a user would write instead, a loop of ``segshap explain``, and a scaling sketch.

Both run the demo cohort (``scripts/demo_cohort.py``) with the same settings (the demo model, both tissue classes,
the tissues as organs), on the same machine, in one run: first the loop, one ``segshap explain`` process per case,
then one ``segshap cohort`` on a local Ray instance. Their wall times give Ray's overhead; their values must agree.
Then, from the forwards each case cost, what 1,000 cases cost on N GPUs, by simulating Ray's scheduling of one case
per GPU at a time.

Usage::

    bash scripts/bench.sh --cohort [--cases 10] [--seed 0] [--device cpu]

Writes ``benchmarks/results/cohort.json`` and the ``cohort`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common
from common import DEMO_MODEL, ROOT, machine, machine_line, write_section

from segshap.manifest import read_manifest

TARGETS = "gray_matter,white_matter"
SUPERVOXELS = 100
GPU_FORWARD_SECONDS = {"demo model, measured": 17.2 / 4838, "96^3 window, assumed": 0.030}
"""Seconds per window forward on a GPU for the sketch: the demo's on the lent H200, end to end (17.2 s for 4838
forwards: BENCHMARKS.md, GPU), and one stated for a SwinUNETR or nnU-Net sized model on 96^3 windows."""
GPU_CASE_FIXED_SECONDS = 10.0
"""Stated per-case time on a GPU node besides the explanation's forwards: worker start, model load, reading and
writing the case (measured on the CPU here as the loop's time outside the explanation, see ``startup_s``)."""
GPU_COUNTS = (1, 4, 8, 16)
SIMULATED_CASES = 1000


def _segshap(*args: str, device: str) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "segshap.cli", *args, "--device", device, "--quiet"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _case_record(folder: Path) -> dict:
    report = json.loads((folder / "explanation.json").read_text())
    stats = report["stats"]
    return {
        "forwards": stats["patch_forwards"],
        "seconds": stats["seconds"],
        "values": [
            feature["value"] for feature in sorted(report["features"], key=lambda f: str(f.get("organ", f["id"])))
        ],
    }


def simulate(case_seconds: np.ndarray, cases: int, gpus: int, seed: int) -> float:
    """Hours to run ``cases`` cases whose times are drawn from ``case_seconds`` on ``gpus`` GPUs, each case taking
    one GPU and the next case going to the first GPU free (Ray's scheduling of tasks asking for one GPU each)."""
    drawn = np.random.default_rng(seed).choice(case_seconds, size=cases)
    free_at = np.zeros(gpus)
    for seconds in drawn:
        first = int(np.argmin(free_at))
        free_at[first] += seconds
    return float(free_at.max() / 3600.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "cohort.json"))
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    record = {"machine": machine(), "date": datetime.date.today().isoformat(), "settings": vars(args)}
    print(f"machine: {machine_line(record['machine'])}")

    spec = importlib.util.spec_from_file_location("demo_cohort", ROOT / "scripts" / "demo_cohort.py")
    demo_cohort = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_cohort)
    with tempfile.TemporaryDirectory(prefix="segshap-bench-cohort-") as folder:
        work = Path(folder)
        manifest = demo_cohort.write_cohort(work / "data", args.cases, args.seed)
        cases = read_manifest(manifest)
        common = ["--model", str(DEMO_MODEL), "--target", TARGETS, "--features", "organs"]

        loop_s = 0.0
        for case in cases:
            loop_s += _segshap(
                "explain", *common, "--image", str(case.image), "--labelmap", str(case.labelmap),
                "--out", str(work / "loop" / case.case_id),
                device=args.device,
            )  # fmt: skip
        loop_rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(f"loop of segshap explain: {loop_s:.1f} s")
        cohort_s = _segshap(
            "cohort", *common, "--manifest", str(manifest), "--out", str(work / "ray"), device=args.device
        )
        print(f"segshap cohort on Ray: {cohort_s:.1f} s")

        loop = {case.case_id: _case_record(work / "loop" / case.case_id) for case in cases}
        ray = {case.case_id: _case_record(work / "ray" / "cases" / case.case_id) for case in cases}
        difference = max(float(np.abs(np.subtract(loop[case]["values"], ray[case]["values"])).max()) for case in loop)
        # One case with supervoxels, for the sketch's second feature set.
        _segshap(
            "explain", "--model", str(DEMO_MODEL), "--target", TARGETS, "--features", "slic",
            "--n-features", str(SUPERVOXELS), "--image", str(cases[0].image), "--out", str(work / "slic"),
            device=args.device,
        )  # fmt: skip
        slic = _case_record(work / "slic")

    explain_s = np.array([case["seconds"] for case in loop.values()])
    forwards = np.array([case["forwards"] for case in loop.values()])
    record.update(
        cases=args.cases,
        loop_s=loop_s,
        cohort_s=cohort_s,
        overhead=cohort_s / loop_s - 1.0,
        overhead_per_case_s=(cohort_s - loop_s) / args.cases,
        explain_s_loop=float(explain_s.sum()),
        explain_s_ray=float(sum(case["seconds"] for case in ray.values())),
        startup_s=float((loop_s - explain_s.sum()) / args.cases),
        max_abs_difference=difference,
        forwards_organs=forwards.tolist(),
        forwards_supervoxels=slic["forwards"],
        loop_peak_rss_gib=loop_rss_gib,
    )
    record["sketch"] = _sketch(forwards, slic["forwards"], args.seed)
    Path(args.json).write_text(json.dumps(record, indent=1))
    write_section(Path(args.markdown), "cohort", markdown(record))
    print(markdown(record))


def _sketch(organ_forwards: np.ndarray, supervoxel_forwards: int, seed: int) -> list[dict]:
    """Per feature set and stated GPU forward time: seconds per case, cases per GPU-hour, and the simulated hours of
    1,000 cases on each GPU count."""
    rows = []
    sets = {"organs": organ_forwards, f"{SUPERVOXELS} supervoxels": np.array([supervoxel_forwards])}
    for features, forwards in sets.items():
        for forward_name, forward_s in GPU_FORWARD_SECONDS.items():
            seconds = forwards * forward_s + GPU_CASE_FIXED_SECONDS
            rows.append(
                {
                    "features": features,
                    "forward": forward_name,
                    "forward_ms": 1e3 * forward_s,
                    "forwards_per_case": float(forwards.mean()),
                    "seconds_per_case": float(seconds.mean()),
                    "cases_per_gpu_hour": 3600.0 / float(seconds.mean()),
                    "hours": {gpus: simulate(seconds, SIMULATED_CASES, gpus, seed) for gpus in GPU_COUNTS},
                }
            )
    return rows


def markdown(record: dict) -> str:
    """The ``cohort`` section of BENCHMARKS.md."""
    cores = record["machine"]["cores"]
    lines = [
        f"Run {record['date']} on {machine_line(record['machine'])}; {record['cases']} cases of the demo cohort "
        f"(`scripts/demo_cohort.py`, seed {record['settings']['seed']}), the demo model, targets gray and white "
        f"matter, the tissues as organs, device `{record['settings']['device']}`. One run of each.",
        "",
        "| | wall s | per case s | explanation s (sum) |",
        "|---|---|---|---|",
        f"| loop of `segshap explain` | {record['loop_s']:.1f} | {record['loop_s'] / record['cases']:.2f} | "
        f"{record['explain_s_loop']:.1f} |",
        f"| `segshap cohort` (Ray) | {record['cohort_s']:.1f} | {record['cohort_s'] / record['cases']:.2f} | "
        f"{record['explain_s_ray']:.1f} |",
        "",
        f"Ray against the loop: **{100 * record['overhead']:+.1f} %** of the loop's time "
        f"({record['overhead_per_case_s']:+.2f} s per case; the aim: under +10 %). The loop spends "
        f"{record['startup_s']:.1f} s per case outside the explanation (process start, imports, model load, "
        "writing), which Ray's workers pay once, and Ray runs one case per core with one thread each, where each "
        f"loop process spreads one case over all {cores} cores. What Ray's run spends beyond its explanations "
        f"spread over the {cores} cores ({record['cohort_s'] - record['explain_s_ray'] / cores:.1f} s: "
        "the command's start, Ray's start and stop, its workers' imports and model unpacking, aggregation and "
        "cohort.png) is mostly paid once per run. The values of the two agree within "
        f"{record['max_abs_difference']:.1e}. The loop's largest process peaked at "
        f"{record['loop_peak_rss_gib']:.2f} GiB resident.",
        "",
        "**Scaling sketch** (on paper, from the forwards measured above, and by simulating Ray's scheduling of one "
        f"case per GPU at a time over {SIMULATED_CASES:,} cases drawn from the measured ones). A case costs "
        f"{np.mean(record['forwards_organs']):.0f} window forwards with organ features "
        f"({min(record['forwards_organs'])}-{max(record['forwards_organs'])}) and "
        f"{record['forwards_supervoxels']} with {SUPERVOXELS} supervoxels (one case measured); on a GPU it takes "
        "those forwards times the time per forward (the demo model's measured end to end on the lent H200, in the "
        "GPU section below; 30 ms assumed, not measured, for a SwinUNETR or nnU-Net sized model on 96^3 windows), "
        f"plus {GPU_CASE_FIXED_SECONDS:.0f} s stated for the rest (worker start, model load, I/O, the full "
        "prediction). Memory per case: one worker process "
        "(the loop's peak above, plus the engine's cache, bounded by its budget) and one GPU.",
        "",
        "| features | GPU forward | forwards / case | s / case | cases / GPU-hour | "
        + " | ".join(f"{SIMULATED_CASES:,} cases on {n} GPU{'s' if n > 1 else ''}" for n in GPU_COUNTS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(GPU_COUNTS),
    ]
    for row in record["sketch"]:
        hours = " | ".join(f"{row['hours'][n]:.1f} h" for n in GPU_COUNTS)
        lines.append(
            f"| {row['features']} | {row['forward_ms']:.1f} ms, {row['forward']} | {row['forwards_per_case']:.0f} | "
            f"{row['seconds_per_case']:.1f} | {row['cases_per_gpu_hour']:.0f} | {hours} |"
        )
    lines += [
        "",
        "Cases are independent, so the time divides by the GPU count until the last cases finish unevenly; the "
        "cluster needs segshap installed on each node and the case files on storage every node reads.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
