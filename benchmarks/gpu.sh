#!/usr/bin/env bash
# The GPU check and benchmark suite in one command; finishes in under 10 minutes on one H100/H200.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (default benchmarks/results/<gpu-name>/)
#   bash benchmarks/gpu.sh --fetch-wheels   (on a machine that reaches the package registry)
#
# Order: install carried wheels (if any) -> `fastcas selftest --device cuda` (when the command
# exists) -> `pytest -m gpu` -> loader throughput (fastcas vs a 16-worker torchvision baseline vs
# DALI's own reader vs decode only; no mixing / CutMix / CMO; uniform vs CMO weights), the mixing
# kernels, the sampler, CAS scoring; each writes JSON, then BENCHMARKS.md is regenerated. Commit
# benchmarks/results/ and BENCHMARKS.md afterwards. Nothing needs installing fastcas itself: from
# a checkout with PYTHONPATH=$PWD, `fastcas.kernels` is loaded from the top-level kernels/.
#
# Carrying the wheels (a bare GPU image has torch, CuPy and Numba, but not DALI, and may have no
# registry). DALI 2.4's run-time dependencies (its wheel METADATA, Requires-Dist) are: optree,
# nvtx, makefun, astunparse, gast, libcst, six, packaging, nvidia-nvimgcodec-cu13[all] (which
# pulls nvidia-nvjpeg, nvidia-nvjpeg2k-cu13, nvidia-nvtiff-cu13) and nvidia-libnvcomp-cu13;
# numba-cuda[cu13] adds libNVVM (nvidia-nvvm, cuda-toolkit 13). Installing DALI with --no-deps
# (what this script did before) leaves `import nvidia.dali` failing on optree and the decoders
# without nvImageCodec / nvCOMP. So:
#   1. where the registry is reachable (same Python version and platform as the GPU machine):
#        bash benchmarks/gpu.sh --fetch-wheels        # -> .whl/ (DALI + all its dependencies)
#      it also splits files over 60 MiB into .whl/<name>.part.* for transports with a size limit;
#   2. copy .whl/ next to this checkout on the GPU machine and run this script: it reassembles
#      the parts and installs from .whl/ only (`--no-index --find-links`), resolving DALI's
#      dependencies from the folder (pip reports any missing one by name) and keeping what the
#      image already has (torch, numpy, CuPy).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WHL=${FASTCAS_WHEELS:-.whl}
CARRY="nvidia-dali-cuda130==2.4.0 webdataset==1.0.2 numba-cuda[cu13]==0.30.4"

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p "$WHL"
  # shellcheck disable=SC2086
  $PY -m pip download --only-binary=:all: -d "$WHL" $CARRY
  for f in "$WHL"/*.whl; do
    if [ "$(stat -c %s "$f")" -gt $((60 * 1024 * 1024)) ]; then
      split -b 60m "$f" "$f.part." && rm "$f"
    fi
  done
  ls -la "$WHL"
  exit 0
fi

OUT=${1:-}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

if [ -d "$WHL" ]; then
  echo "== installing carried wheels from $WHL"
  for first in "$WHL"/*.whl.part.aa; do
    [ -e "$first" ] || continue
    whl=${first%.part.aa}
    [ -e "$whl" ] || cat "$whl".part.* > "$whl"
  done
  # shellcheck disable=SC2086
  $PY -m pip install --no-index --find-links "$WHL" $CARRY
fi
$PY -c "import nvidia.dali, optree; from nvidia.dali.plugin.pytorch import feed_ndarray; \
print('DALI', nvidia.dali.__version__)"

if [ -z "$OUT" ]; then
  OUT=$($PY -c "from fastcas.tools.machine import machine_tag; print('benchmarks/results/' + machine_tag())")
fi
mkdir -p "$OUT"
DATA=${FASTCAS_BENCH_DATA:-demo-data}

if $PY -m fastcas selftest --help >/dev/null 2>&1; then
  echo "== fastcas selftest --device cuda"
  $PY -m fastcas selftest --device cuda --json "$OUT/selftest.json" 2>&1 | tee "$OUT/selftest.txt" \
    || echo "selftest reported a FAIL (see $OUT/selftest.txt)"
else
  echo "== fastcas selftest: not in this checkout, skipped"
fi

echo "== GPU tests"
$PY -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -n 30 | tee "$OUT/gpu-tests.txt" || true

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
