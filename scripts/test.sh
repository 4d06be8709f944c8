#!/usr/bin/env bash
# Sets up .venv (and .venv-ref, the separate environment of the shap and shapiq references) if needed, then runs
# the test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
source "$root/scripts/reference_env.sh"
source "$root/scripts/egl.sh"
# Here the reference must be there: tests that need it fail instead of skipping.
export SEGSHAP_REQUIRE_REFERENCE=1
# torch's OpenMP threads spin-wait for each other; when another process keeps a core busy, every small operation
# then waits out that process's time slice (the demo model's forward: 7.7 ms idle, 135 ms with one core busy;
# with this spin count 8.2 and 37 ms). The whole suite with it: 808 s with one core busy (the default had done
# three quarters in 40 minutes), 326 s idle (2026-12-05; with the cohort tests 393 s idle, 1073 s with one core
# busy); nnU-Net's tests take the same time idle with or without it. Override by setting it yourself.
export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"
cd "$root"
exec python -m pytest Testing "$@"
