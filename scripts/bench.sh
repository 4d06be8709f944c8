#!/usr/bin/env bash
# Sets up .venv if needed, then runs a benchmark: the engine benchmark by default, the bf16 autocast comparison
# with --autocast. Other arguments go to the benchmark script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
script=benchmarks/bench_engine.py
if [ "${1:-}" = "--autocast" ]; then
    script=benchmarks/bench_autocast.py
    shift
fi
exec python "$script" "$@"
