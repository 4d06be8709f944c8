#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs the engine with the extras the caller
# needs: SEGSHAP_EXTRAS, comma-separated (default all of them: test, nnunet, bench, cohort, views, demo). The demo asks
# for views only, so that a first run installs less; later calls add what they need to what is there.
# torch is installed first, pinned, so that nothing afterwards pulls a different build (see scripts/constraints.txt).
# Sourced by the other scripts; SEGSHAP_VENV overrides the location.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SEGSHAP_VENV:-$root/.venv}"
python_bin="${SEGSHAP_PYTHON:-$(command -v python3.11 || command -v python3)}"
extras="${SEGSHAP_EXTRAS:-test,nnunet,bench,cohort,views,demo}"

stamp_inputs=("$root/pyproject.toml" "$root/scripts/constraints.txt" "$root/scripts/env.sh")
want="$(cat "${stamp_inputs[@]}" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.segshap-stamp"
# The stamp holds the inputs' hash and the extras installed with them: a rebuild when the inputs changed, an
# install of the missing extras when they did not.
installed=""
if [ -x "$venv/bin/python" ] && [ "$(head -n 1 "$stamp" 2>/dev/null)" = "$want" ]; then
    installed="$(sed -n 2p "$stamp")"
fi
missing="$(comm -23 <(tr ',' '\n' <<<"$extras" | sort -u) <(tr ',' '\n' <<<"$installed" | sort -u) | paste -sd, -)"
if [ -n "$missing" ]; then
    if [ -z "$installed" ]; then
        echo "Setting up $venv (first run takes a few minutes)..." >&2
        "$python_bin" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
    else
        echo "Adding $missing to $venv..." >&2
    fi
    all="$(tr ',' '\n' <<<"$installed,$missing" | grep -v '^$' | sort -u | paste -sd, -)"
    "$venv/bin/python" -m pip install --quiet -c "$root/scripts/constraints.txt" -e "$root[$all]"
    printf '%s\n%s\n' "$want" "$all" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
