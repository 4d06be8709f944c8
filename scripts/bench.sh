#!/usr/bin/env bash
# Sets up .venv (and .venv-ref, shap's environment) if needed, then runs the benchmarks:
#   bash scripts/bench.sh [--quick|--full] [run.py options]   speed, accuracy... against peers (benchmarks/run.py)
#   bash scripts/bench.sh --engine [options]                  naive vs ROI + all-on cache vs PatchEngine
#   bash scripts/bench.sh --pace [options]                    the engine's own time per window forward and coalition
#   bash scripts/bench.sh --autocast [options]                how far bf16 autocast moves values
#   bash scripts/bench.sh --cohort [options]                  a cohort on Ray vs a loop of segshap explain
#   bash scripts/bench.sh --anytime [--mode quick] [options]  live updates: how soon they show the final values, their
#                                                             cost, shap's PartitionExplainer beside them (anytime.json)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
case "${1:-}" in
    --engine) shift; exec python benchmarks/suites/engine.py "$@" ;;
    --pace) shift; exec python benchmarks/suites/pace.py "$@" ;;
    --autocast) shift; exec python benchmarks/suites/autocast.py "$@" ;;
    --cohort) shift; exec python benchmarks/suites/cohort.py "$@" ;;
    # GOMP_SPINCOUNT as scripts/test.sh sets it: without it torch's OpenMP threads wait out a busy core's time slices,
    # and this suite's times (seconds to the first update, the live updates' cost) are what it measures.
    --anytime) shift; export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"; source "$root/scripts/reference_env.sh"
        exec python benchmarks/run.py --mode full --suites anytime "$@" ;;
    --full) shift; source "$root/scripts/reference_env.sh"; exec python benchmarks/run.py --mode full "$@" ;;
    --quick) shift; source "$root/scripts/reference_env.sh"; exec python benchmarks/run.py --mode quick "$@" ;;
    *) source "$root/scripts/reference_env.sh"; exec python benchmarks/run.py --mode quick "$@" ;;
esac
