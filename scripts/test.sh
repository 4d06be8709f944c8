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
cd "$root"
exec python -m pytest Testing "$@"
