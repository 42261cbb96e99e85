#!/usr/bin/env bash
# The GPU benchmark suite in one command; finishes in under 10 minutes on one H100/H200.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (default benchmarks/results/<gpu-name>/)
#
# Runs the GPU tests, then: loader throughput (fastcas vs a 16-worker torchvision baseline vs
# DALI's own reader vs decode only; no mixing / CutMix / CMO; uniform vs CMO weights),
# the mixing kernels, the sampler, and CAS scoring; each writes JSON, then BENCHMARKS.md is
# regenerated. Commit benchmarks/results/ and BENCHMARKS.md afterwards.
#
# A bare GPU image (e.g. the device machine) has torch, CuPy and Numba but not DALI. Carry the
# wheel: download it where the registry is reachable,
#   pip download --no-deps -d .whl nvidia-dali-cuda130==2.4.0
# split it into pieces under 64 MiB if your transport limits file size,
#   split -b 60m .whl/nvidia_dali_cuda130-*.whl .whl/dali.part.
# and on the GPU machine reassemble and install before running this script:
#   cat .whl/dali.part.* > /tmp/nvidia_dali_cuda130-2.4.0-py3-none-manylinux_2_28_x86_64.whl
#   pip install --no-deps /tmp/nvidia_dali_cuda130-*.whl webdataset==1.0.2
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${1:-}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
if [ -z "$OUT" ]; then
  OUT=$($PY -c "from fastcas._machine import machine_tag; print('benchmarks/results/' + machine_tag())")
fi
mkdir -p "$OUT"
DATA=${FASTCAS_BENCH_DATA:-demo-data}

echo "== GPU tests"
$PY -m pytest -q -m gpu tests 2>&1 | tail -n 5 | tee "$OUT/gpu-tests.txt"

echo "== corpus"
$PY -m fastcas demo --root "$DATA" --data-only --corpus-size 5000 >/dev/null

echo "== loader"
for mix in none cutmix cmo; do
  timeout 150 $PY -m fastcas bench "$DATA/photo-corpus" --device cuda --batch-size 256 --workers 4 \
    --baseline-workers 16 --threads 8 --mix "$mix" --seconds 8 --rounds 3 \
    --json "$OUT/loader-$mix.json" || echo "loader $mix failed"
done
timeout 120 $PY -m fastcas bench "$DATA/photo-corpus" --device cuda --batch-size 256 --workers 4 \
  --threads 8 --loaders fastcas --weights cmo --mix none --seconds 8 --rounds 3 \
  --json "$OUT/loader-weighted.json" || echo "weighted loader failed"

echo "== kernels, sampler"
timeout 120 $PY benchmarks/bench_mix.py --out "$OUT" || echo "bench_mix failed"
timeout 120 $PY benchmarks/bench_sampler.py --sizes 1e6,1e7,1e8 --out "$OUT" || echo "bench_sampler failed"
[ -f benchmarks/bench_score.py ] && { timeout 120 $PY benchmarks/bench_score.py --out "$OUT" || echo "bench_score failed"; }

$PY benchmarks/make_report.py
echo "results in $OUT; commit them with BENCHMARKS.md"
