#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU and the CUDA driver, builds blip2 with the `cuda`
# feature, runs the parity tests on the GPU (f32 against transformers at 1e-4; f16 and bf16 at the
# tolerances of tests/common/mod.rs), then, if a benchmark model exists, a short benchmark in each
# precision. Prints a summary; exits non-zero if any test failed.
#
#   scripts/gpu-check.sh                 # tests only
#   BENCH_MODEL=target/bench-models/bench-small scripts/gpu-check.sh
#
# The first CUDA build downloads an LLVM bundle (cubecl-llvm's build script): it needs network
# access once, or a target directory where it already happened (CARGO_TARGET_DIR).
# Benchmark models come from `python tools/bench/make_models.py --out target/bench-models`.
# BACKEND=flex (or wgpu, vulkan) runs the same steps on another backend, without the GPU query:
# that is how the script itself is checked on machines without an NVIDIA GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
BACKEND=${BACKEND:-cuda}
FEATURES="--no-default-features --features $BACKEND"
TESTS="--test generation --test generation_t5 --test image_embeddings --test retrieval --test half_precision"
status=0

if [ "$BACKEND" = cuda ]; then
  echo "== GPU"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || {
    echo "no NVIDIA GPU visible (nvidia-smi failed)"; exit 2; }
fi

echo "== build (release, $BACKEND)"
cargo test --release -p blip2 $FEATURES $TESTS --no-run 2>&1 | tail -3 || exit 3

echo "== parity tests on $BACKEND (f32, f16, bf16)"
# The build has one backend, so Device::default() is it (the first GPU for cuda).
if BURN_DEVICE=$BACKEND cargo test --release -p blip2 $FEATURES $TESTS -- --nocapture --test-threads 1 \
    > "$OUT/tests.log" 2>&1; then
  echo "all passed"
else
  echo "FAILED (see $OUT/tests.log)"; status=1
fi
grep -E "^test result|panicked" "$OUT/tests.log"
echo "-- measured differences (max-abs to transformers; in f16/bf16 also rms from the f32 result)"
grep -E "max-abs|rms from f32" "$OUT/tests.log" | sort | tail -60

if [ -n "${BENCH_MODEL:-}" ] && [ -d "$BENCH_MODEL" ]; then
  for dtype in f32 f16 bf16; do
    echo "== benchmark $BENCH_MODEL in $dtype"
    cargo bench --bench pipeline $FEATURES -- "$BENCH_MODEL" --backend "$BACKEND" --dtype "$dtype" \
      --repeat 3 > "$OUT/bench-$dtype.json" 2> "$OUT/bench-$dtype.log" \
      && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ('load_s','encode_s','prefill_s','decode_s_per_token') if k in d})" "$OUT/bench-$dtype.json" \
      || { echo "benchmark in $dtype failed (see $OUT/bench-$dtype.log)"; status=1; }
  done
else
  echo "== benchmark skipped (set BENCH_MODEL to a folder made by tools/bench/make_models.py)"
fi
exit $status
