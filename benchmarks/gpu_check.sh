#!/usr/bin/env bash
# The GPU evidence of issue 14, in one run on a machine with a CUDA device (under 8 minutes):
#   1. the CUDA tests: reconstruction on CUDA within the fingerprint tolerance of the CPU's and
#      bit-exact with training on the same device, the CUDA backend's pinned host hand-over, the
#      PRNG on the device, and the server streaming from a CUDA engine over real HTTP;
#   2. the CUDA reconstruction benchmark (fractions of FP32 GEMM and HBM write bandwidth);
#   3. the CPU reconstruction benchmark's quick mode on that machine's CPU, for comparison.
# Results go to $OUT (or ./gpu-check-out): the log and the benchmark's JSON.
#
# On the lent H200 (no network): run `bash scripts/gpu_wheels.sh` here first and carry ".whl".
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mcnc-site .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels failed"; exit 2; }
  export PYTHONPATH="$PWD:/tmp/mcnc-site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} 2>&1 | tee "$out/gpu-check.log"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" \
  || { echo "gpu_check: torch sees no CUDA device: nothing to check" | tee -a "$out/gpu-check.log"; exit 3; }
status=0
# CUDA tests only (each of these files skips its CUDA cases without a device); no Redis/PostgreSQL needed.
timeout 300 "$py" -m pytest -q -p no:cacheprovider -o addopts="" -rs \
  tests/core/test_backend.py tests/core/test_reconstruct.py tests/core/test_prng.py tests/core/test_decode_paths.py \
  tests/service/test_cuda_engine.py -k "cuda or gpu or thread or training" 2>&1 | tee -a "$out/gpu-check.log" \
  || status=1
timeout 240 "$py" benchmarks/reconstruct_cuda.py --json "$out/reconstruct_cuda.json" 2>&1 | tee -a "$out/gpu-check.log" \
  || status=1
timeout 120 "$py" benchmarks/reconstruct.py --quick --json "$out/reconstruct_cpu_quick.json" 2>&1 \
  | tee -a "$out/gpu-check.log" || status=1
echo "gpu_check: exit $status" | tee -a "$out/gpu-check.log"
exit $status
