#!/usr/bin/env bash
# Everything issue 29 measures on a GPU, in one run of a few minutes; results (logs and JSON) go to $OUT or ./gpu-check.
#   bash scripts/gpu_check.sh                 on a CUDA machine: the CUDA tests, then the benchmarks below
#   bash scripts/gpu_check.sh --device cpu    a check of the script itself on small cases (no CUDA tests)
# Uses the Python on PATH (or $PYTHON) with segshap's dependencies installed; segshap is read from the checkout.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
device=cuda
[[ "${1:-}" == "--device" ]] && device="$2"
out="${OUT:-$root/gpu-check}"
mkdir -p "$out"
python="${PYTHON:-python}"
export PYTHONPATH="$root/SegShapExplain${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME COMMAND...: run, log, time; a failing step does not stop the others
    local name="$1"; shift
    echo "== $name: $*"
    local started=$SECONDS
    "$@" > "$out/$name.log" 2>&1 || { echo "   FAILED (see $out/$name.log)"; status=1; }
    echo "   $((SECONDS - started)) s"; tail -n 8 "$out/$name.log"
}
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [[ "$device" == cuda ]]; then
    step cuda_tests "$python" -m pytest -q -p no:cacheprovider Testing/test_engine_cuda.py \
        "Testing/test_nnunet.py::test_on_cuda_values_follow_nnunets_cuda_predictor"
    step pace "$python" benchmarks/suites/pace.py --device cuda --batch-size 16 --json "$out/pace.json"
    step engine "$python" benchmarks/suites/engine.py --device cuda --batch-size 16 --naive 4 --roi-all-on 32 \
        --json "$out/engine.json"
    step demo "$python" -c 'import sys; from segshap.cli import main; sys.exit(main())' demo --device cuda \
        --out "$out/demo" --quiet
    step swin "$python" benchmarks/suites/swin.py --device cuda --json "$out/swin.json"
else
    step pace "$python" benchmarks/suites/pace.py --device "$device" --repeats 1 --cases efficiency --json "$out/pace.json"
    step swin "$python" benchmarks/suites/swin.py --device "$device" --small --paper 2 --naive 1 --json "$out/swin.json"
fi
exit $status
