#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs the engine with its test, nnunet,
# bench and cohort extras.
# torch is installed first, pinned, so that nothing afterwards pulls a different build (see scripts/constraints.txt).
# Sourced by the other scripts; SEGSHAP_VENV overrides the location.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SEGSHAP_VENV:-$root/.venv}"
python_bin="${SEGSHAP_PYTHON:-$(command -v python3.11 || command -v python3)}"

stamp_inputs=("$root/pyproject.toml" "$root/scripts/constraints.txt" "$root/scripts/env.sh")
want="$(cat "${stamp_inputs[@]}" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.segshap-stamp" 2>/dev/null)" != "$want" ]; then
    echo "Setting up $venv (first run takes a few minutes)..." >&2
    "$python_bin" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
    "$venv/bin/python" -m pip install --quiet -c "$root/scripts/constraints.txt" -e "$root[test,nnunet,bench,cohort]"
    echo "$want" > "$venv/.segshap-stamp"
fi
export PATH="$venv/bin:$PATH"
