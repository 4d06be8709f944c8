"""Benchmarks of SegShapExplain against what users would pick instead, in one run.

    python benchmarks/run.py --mode quick --check   # about 10 minutes on 2 CPU cores (CI runs it, then the tests)
    python benchmarks/run.py --mode full       # the numbers in BENCHMARKS.md
    python benchmarks/run.py --mode full --suites anytime   # a suite outside the default run, into anytime.json

Each suite writes its section of BENCHMARKS.md (between ``<!-- bench:SUITE:begin/end -->`` markers), its plots
into ``docs/``, and all raw numbers, with the machine they ran on, into a JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODES, ROOT, log, machine, machine_line, reference_available, write_section  # noqa: E402
from suites import accuracy, anytime, efficiency, faithfulness, speed  # noqa: E402

SUITES = {"speed": speed, "accuracy": accuracy, "efficiency": efficiency, "faithfulness": faithfulness}
"""The suites a run runs unless told otherwise (CI's quick run among them)."""
SEPARATE = {"anytime": anytime}
"""Suites run only when named (``--suites anytime``, ``bash scripts/bench.sh --anytime``): they take long, and each
keeps its raw numbers in a file of its own (:func:`results_file`)."""


def _commit() -> str:
    done = subprocess.run(["git", "log", "-1", "--format=%h"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def render(results: dict, markdown: Path, docs: Path) -> None:
    """Write each suite's section of ``markdown`` and its plot into ``docs`` from its raw numbers."""
    docs.mkdir(parents=True, exist_ok=True)
    for name, suite in {**SUITES, **SEPARATE}.items():
        if name not in results:
            continue
        result = results[name]
        plot = docs / f"bench_{name}.png"
        suite.plot(result, plot)
        relative = plot.relative_to(markdown.parent) if plot.is_relative_to(markdown.parent) else plot
        run = result.get("run", results)  # a suite rerun on its own carries its own run header
        intro = (
            f"Mode `{run['mode']}`, run {run['date']} on {machine_line(run['machine'])}; commit "
            f"`{run['commit']}`; {result['seconds']:.0f} s."
        )
        write_section(markdown, name, intro + "\n\n" + suite.markdown(result, str(relative)))


def check(results: dict) -> list[str]:
    """What is wrong with a run's raw numbers: every method of a speed case must compute the same game as ours
    (values within 1e-6) with more window forwards than ours, the accuracy suite must hold ours and captum (and
    shap and shapiq where their environment exists), and the efficiency suite ours, the paper's scheme and captum
    (and shap where its environment exists). An empty list when all hold."""
    problems = []
    for name, case in results.get("speed", {}).get("cases", {}).items():
        methods = case["methods"]
        ours = methods["ours"]["forwards"]
        for method, row in methods.items():
            if not row["max_abs_diff"] < 1e-6:
                problems.append(f"speed/{name}: {method}'s values differ from ours by {row['max_abs_diff']:.1e}")
            if method != "ours" and not ours < row["forwards"]:
                problems.append(f"speed/{name}: {method} ran {row['forwards']} forwards, ours {ours}")
    if "accuracy" in results:
        expected = {"ours_auto", "captum"} | ({"shap", "regression_msr"} if reference_available() else set())
        missing = expected - set(results["accuracy"]["methods"])
        if missing:
            problems.append(f"accuracy: methods missing: {sorted(missing)}")
    if "efficiency" in results:
        expected = {"ours_auto", "paper_leverage", "captum"} | (
            {"shap", "paper_shap"} if reference_available() else set()
        )
        missing = expected - set(results["efficiency"]["runs"])
        if missing:
            problems.append(f"efficiency: methods missing: {sorted(missing)}")
    return problems


def results_file(mode: str, suites: list[str]) -> Path:
    """Where a run's raw numbers go by default: ``benchmarks/results/MODE.json``; a suite of :data:`SEPARATE` run on
    its own keeps its own file (``anytime.json``; ``anytime-quick.json`` in quick mode), so that it never replaces the
    default run's numbers."""
    folder = ROOT / "benchmarks" / "results"
    if len(suites) == 1 and suites[0] in SEPARATE:
        return folder / (f"{suites[0]}.json" if mode == "full" else f"{suites[0]}-{mode}.json")
    return folder / f"{mode}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=MODES, default="quick")
    parser.add_argument(
        "--suites",
        nargs="+",
        choices=list(SUITES) + list(SEPARATE),
        default=list(SUITES),
        help=f"default: {' '.join(SUITES)} ({', '.join(SEPARATE)} only when named)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=speed.CASES,
        default=list(speed.CASES),
        help="speed cases to run (the SwinUNETR case runs in full mode only)",
    )
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="where the sections are written")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="where the plots are written")
    parser.add_argument("--json", help="raw numbers (default benchmarks/results/MODE.json)")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if the run breaks an invariant (see check())"
    )
    parser.add_argument("--render", metavar="JSON", help="only rewrite the sections and plots from earlier raw numbers")
    args = parser.parse_args(argv)
    if args.render:
        render(json.loads(Path(args.render).read_text()), Path(args.markdown), Path(args.docs))
        return 0

    record = machine()
    header = {"machine": record, "mode": args.mode, "commit": _commit(), "date": datetime.date.today().isoformat()}
    log(f"machine: {machine_line(record)}")
    results = dict(header)
    for name in args.suites:
        started = time.perf_counter()
        suite = {**SUITES, **SEPARATE}[name]
        result = speed.run(args.mode, tuple(args.cases)) if name == "speed" else suite.run(args.mode)
        result["seconds"] = time.perf_counter() - started
        results[name] = result
        render({**header, name: result}, Path(args.markdown), Path(args.docs))
        log(f"{name}: done in {result['seconds']:.0f} s")
    out = Path(args.json) if args.json else results_file(args.mode, args.suites)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    log(f"raw numbers: {out}")
    problems = check(results) if args.check else []
    for problem in problems:
        log(f"check failed: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
