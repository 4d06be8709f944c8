#!/usr/bin/env bash
# Sets up .venv if needed, then explains the embedded demo model (gray/white matter, trained on the MNI152 T1)
# on the embedded MRI and prints where the outputs are. Extra arguments go to `segshap demo` (e.g. --out DIR).
#
# With --cohort: derives the demo cohort (10 subjects made from the MNI152 templates by deformation, bias field,
# noise and resolution changes: scripts/demo_cohort.py) into DIR/data, then explains both tissue classes of every
# case on a local Ray instance with the tissues as organs (`segshap cohort`) into DIR (default
# ./segshap-demo-cohort): DIR/cohort.png, cohort.csv, cohort.json. Extra arguments go to `segshap cohort`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Only what the demo needs: the engine and slicer-core for slices.png (and Ray for the cohort); test.sh adds the rest.
if [[ "${1:-}" != "--cohort" ]]; then
    SEGSHAP_EXTRAS="${SEGSHAP_EXTRAS:-views}" source "$root/scripts/env.sh"
    cd "$root"
    exec segshap demo "$@"
fi
SEGSHAP_EXTRAS="${SEGSHAP_EXTRAS:-views,cohort,demo}" source "$root/scripts/env.sh"
cd "$root"
shift
out="segshap-demo-cohort"
passed=()
while (($#)); do
    case "$1" in
        --out) out="${2:?--out needs a folder}"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        *) passed+=("$1"); shift ;;
    esac
done
python "$root/scripts/demo_cohort.py" --out "$out/data" >/dev/null
exec segshap cohort --manifest "$out/data/cases.csv" --model "$root/Resources/Models/demo_gmwm.pt" \
    --target gray_matter,white_matter --features organs --out "$out" "${passed[@]+"${passed[@]}"}"
