#!/usr/bin/env bash
# Sets up .venv (and .venv-ref, shap's environment) if needed, then runs the benchmarks:
#   bash scripts/bench.sh [--quick|--full] [run.py options]   speed, accuracy... against peers (benchmarks/run.py)
#   bash scripts/bench.sh --engine [options]                  naive vs ROI + all-on cache vs PatchEngine
#   bash scripts/bench.sh --autocast [options]                how far bf16 autocast moves values
#   bash scripts/bench.sh --cohort [options]                  a cohort on Ray vs a loop of segshap explain
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
case "${1:-}" in
    --engine) shift; exec python benchmarks/suites/engine.py "$@" ;;
    --autocast) shift; exec python benchmarks/suites/autocast.py "$@" ;;
    --cohort) shift; exec python benchmarks/suites/cohort.py "$@" ;;
    --full) shift; source "$root/scripts/reference_env.sh"; exec python benchmarks/run.py --mode full "$@" ;;
    --quick) shift; source "$root/scripts/reference_env.sh"; exec python benchmarks/run.py --mode quick "$@" ;;
    *) source "$root/scripts/reference_env.sh"; exec python benchmarks/run.py --mode quick "$@" ;;
esac
