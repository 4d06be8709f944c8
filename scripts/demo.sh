#!/usr/bin/env bash
# Sets up .venv if needed, then explains the embedded demo model (gray/white matter, trained on the MNI152 T1)
# on the embedded MRI and prints where the outputs are. Extra arguments go to `segshap demo` (e.g. --out DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
exec segshap demo "$@"
