#!/usr/bin/env bash
# Creates (or reuses) .venv-ref: a separate environment holding shap, used only as a reference by tests and
# benchmarks. shap depends on a PyPI package named `slicer` that would overwrite slicer-core's `slicer` package,
# so it never enters the project's own environment. Exports SEGSHAP_REFERENCE_PYTHON.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ref="${SEGSHAP_REFERENCE_VENV:-$root/.venv-ref}"
python_bin="${SEGSHAP_PYTHON:-$(command -v python3.11 || command -v python3)}"

want="$(sha256sum "$root/scripts/reference_requirements.txt" "$root/scripts/reference_env.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$ref/bin/python" ] || [ "$(cat "$ref/.segshap-stamp" 2>/dev/null)" != "$want" ]; then
    echo "Setting up the reference environment $ref (shap)..." >&2
    "$python_bin" -m venv "$ref"
    "$ref/bin/python" -m pip install --quiet --upgrade pip
    "$ref/bin/python" -m pip install --quiet -r "$root/scripts/reference_requirements.txt"
    echo "$want" > "$ref/.segshap-stamp"
fi
export SEGSHAP_REFERENCE_PYTHON="$ref/bin/python"
