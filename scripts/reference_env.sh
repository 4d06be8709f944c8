#!/usr/bin/env bash
# Creates (or reuses) .venv-ref: a separate environment holding the reference methods (shap, shapiq), used only by
# tests and benchmarks, every package pinned in scripts/reference_requirements.txt. shap depends on a PyPI package
# named `slicer` that would overwrite slicer-core's `slicer` package, so it never enters the project's own
# environment; shapiq needs Python >= 3.12, so this environment is built with its own interpreter (.venv stays on
# 3.11). SEGSHAP_REFERENCE_BASE_PYTHON names that interpreter; otherwise the first Python >= 3.12 found (PATH, then
# pyenv's versions) is used. Exports SEGSHAP_REFERENCE_PYTHON.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ref="${SEGSHAP_REFERENCE_VENV:-$root/.venv-ref}"

_segshap_python_at_least_312() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

_segshap_reference_base_python() {
    if [ -n "${SEGSHAP_REFERENCE_BASE_PYTHON:-}" ]; then
        if _segshap_python_at_least_312 "$SEGSHAP_REFERENCE_BASE_PYTHON"; then
            echo "$SEGSHAP_REFERENCE_BASE_PYTHON"
            return 0
        fi
        echo "SEGSHAP_REFERENCE_BASE_PYTHON=$SEGSHAP_REFERENCE_BASE_PYTHON does not run as Python >= 3.12" \
             "(shapiq needs it)." >&2
        return 1
    fi
    # pyenv's shims are on PATH even for versions that are installed but not selected, and then fail to run: each
    # candidate is run, not just looked up.
    local pyenv_versions="${PYENV_ROOT:-$HOME/.pyenv}/versions" candidate
    for candidate in python3.12 "$pyenv_versions"/3.12*/bin/python3 python3.13 "$pyenv_versions"/3.13*/bin/python3 \
                     python3.14 "$pyenv_versions"/3.14*/bin/python3 python3; do
        if _segshap_python_at_least_312 "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "No Python >= 3.12 found for the reference environment $ref (shapiq needs it): install one (e.g." \
         "\`pyenv install 3.12\`) or point SEGSHAP_REFERENCE_BASE_PYTHON at it." >&2
    return 1
}

# The contents alone, not their paths: a checkout moved or cloned elsewhere reuses its environment.
want="$(cat "$root/scripts/reference_requirements.txt" "$root/scripts/reference_env.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$ref/bin/python" ] || [ "$(cat "$ref/.segshap-stamp" 2>/dev/null)" != "$want" ] \
        || ! _segshap_python_at_least_312 "$ref/bin/python"; then
    python_bin="$(_segshap_reference_base_python)" || { return 1 2>/dev/null || exit 1; }
    echo "Setting up the reference environment $ref (shap, shapiq) with $python_bin (about a minute)..." >&2
    # --clear: a rebuild starts empty, so nothing from an older requirement list (or Python) is left behind.
    "$python_bin" -m venv --clear "$ref"
    "$ref/bin/python" -m pip install --quiet pip==26.3
    "$ref/bin/python" -m pip install --quiet -r "$root/scripts/reference_requirements.txt"
    echo "$want" > "$ref/.segshap-stamp"
fi
export SEGSHAP_REFERENCE_PYTHON="$ref/bin/python"
