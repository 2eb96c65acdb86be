#!/usr/bin/env bash
# The GPU check, in two halves (docs/backends.md, "Checking a GPU machine"):
#
#   scripts/gpu-check.sh --bundle
#       Here, with a toolchain: builds the parity tests (tests/gpu_parity), the pipeline benchmark,
#       the `blip2` binary and `random-checkpoint` for the wgpu backend (Vulkan), stripped, and packs
#       them with the Vulkan loader into target/gpu-bundle.tar.xz (under the 64 MiB a lent GPU
#       machine is sent besides the working tree). Nothing on the GPU machine is built.
#
#   scripts/gpu-check.sh [--shape opt-2.7b] [--dtypes "f32 f16"] [--budget-s 330] [--software-ok]
#       There, with no network and no toolchain: reports the GPU, driver and which Vulkan/CUDA
#       libraries are present (exits 2 when there is no Vulkan driver for a GPU), unpacks the
#       bundle, runs the parity tests on the GPU, one caption through the `blip2` binary, writes a
#       random-weight checkpoint of the shape and benchmarks load, encode, prefill, decode per
#       token and batch 1/8 throughput in each dtype. It writes $OUT/gpu-check.json after every
#       step (so a time-out still leaves what was measured), prints it at the end, and keeps each
#       step's log beside it. Each step's time limit is cut to what is left of --budget-s.
#       --software-ok lets it run on a software Vulkan driver (Mesa's lavapipe): how the whole
#       path is checked on a machine without a GPU, with --shape mini.
#
# Exit status: 0 when every step that ran passed, 1 when one failed or timed out, 2 when there is
# nothing to run on (no GPU driver, or no bundle).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

MODE=run
SHAPE=opt-2.7b
DTYPES="f32 f16"
BUDGET=330
SOFTWARE_OK=0
BUNDLE=target/gpu-bundle.tar.xz
while [ $# -gt 0 ]; do
  case $1 in
    --bundle) MODE=bundle ;;
    --shape) SHAPE=$2; shift ;;
    --dtypes) DTYPES=$2; shift ;;
    --budget-s) BUDGET=$2; shift ;;
    --software-ok) SOFTWARE_OK=1 ;;
    --bundle-file) BUNDLE=$2; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

commit() { git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown; }

# ---------------------------------------------------------------------------------------------
if [ "$MODE" = bundle ]; then
  set -e
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME}/.cache/blip2-ci/target}"
  export CARGO_INCREMENTAL=0
  mkdir -p target
  echo "== build (profile gpu-check: release, stripped; backend wgpu)"
  # One invocation, so blip2-core and burn are built once with the same features for all four.
  cargo build --profile gpu-check -p blip2 -p blip2-cli -p blip2-random-checkpoint \
    --no-default-features --features blip2/wgpu,blip2-cli/wgpu \
    --test gpu_parity --bench pipeline --bin blip2 --bin random-checkpoint \
    --message-format=json-render-diagnostics > target/gpu-bundle-build.json
  executable() { # the path cargo reported for target $1
    grep -o "\"executable\":\"[^\"]*/$1[^\"/]*\"" target/gpu-bundle-build.json | tail -1 | cut -d'"' -f4
  }
  rm -rf target/gpu-bundle && mkdir -p target/gpu-bundle/bin target/gpu-bundle/lib
  for name in gpu_parity pipeline blip2 random-checkpoint; do
    path=$(executable "$name")
    [ -n "$path" ] || { echo "cargo reported no executable for $name" >&2; exit 3; }
    cp "$path" "target/gpu-bundle/bin/$name"
  done
  # The Vulkan loader, for a GPU machine whose driver is installed without it (the loader is a
  # distribution package, libvulkan1; the driver brings only its ICD).
  # (awk reads to the end: exiting early would kill ldconfig with SIGPIPE, fatal under pipefail.)
  loader=$(ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1 / && !p {p = $NF} END {print p}')
  if [ -n "$loader" ]; then cp -L "$loader" target/gpu-bundle/lib/libvulkan.so.1; fi
  echo "$(commit)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '-dirty')" > target/gpu-bundle/COMMIT
  echo "== pack"
  tar -C target -cf - gpu-bundle | xz -T0 -6 > "$BUNDLE"
  ls -l target/gpu-bundle/bin target/gpu-bundle/lib
  size=$(stat -c %s "$BUNDLE")
  echo "$BUNDLE: $size bytes ($((size / 1048576)) MiB; the limit for what is carried is 64 MiB)"
  [ "$size" -lt $((60 * 1048576)) ] || { echo "too large to carry" >&2; exit 1; }
  exit 0
fi

# ---------------------------------------------------------------------------------------------
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT/parts"
rm -f "$OUT"/parts/*
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/blip2-gpu-check}
mkdir -p "$WORK"
START=$SECONDS
status=0

json_str() { # a JSON string of $1: printable ASCII kept, every other byte a space
  printf '"%s"' "$(printf '%s' "$1" | LC_ALL=C tr -c '[:print:]' ' ' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}
# part NAME JSON: records one key of the document and rewrites $OUT/gpu-check.json.
part_index=0
part() {
  part_index=$((part_index + 1))
  printf '%s: %s' "$(json_str "$1")" "$2" > "$OUT/parts/$(printf '%02d' $part_index)"
  { echo "{"; local first=1 f
    for f in "$OUT"/parts/*; do
      [ $first = 1 ] || echo ","
      first=0
      cat "$f"
    done
    echo; echo "}"; } > "$OUT/gpu-check.json"
}
left() { echo $((BUDGET - (SECONDS - START))); }
# step NAME MAX_SECONDS COMMAND...: runs with a limit of min(MAX, what is left), log in $OUT/NAME.log;
# sets STEP_RC and STEP_S.
step() {
  local name=$1 max=$2
  shift 2
  local limit
  limit=$(left)
  [ "$limit" -lt "$max" ] || limit=$max
  if [ "$limit" -lt 5 ]; then
    echo "== $name: skipped (budget of ${BUDGET}s spent)"
    STEP_RC=124; STEP_S=0; status=1
    return
  fi
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2> "$OUT/$name.err"
  STEP_RC=$?
  STEP_S=$((SECONDS - t0))
  if [ $STEP_RC != 0 ]; then
    status=1
    echo "   exit $STEP_RC after ${STEP_S}s (log: $OUT/$name.log, $OUT/$name.err)"
    tail -5 "$OUT/$name.err" | sed 's/^/   /'
  else
    echo "   ok in ${STEP_S}s"
  fi
}

echo "== machine"
gpu=null
if ! command -v nvidia-smi > /dev/null; then
  echo "   no nvidia-smi"
elif line=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1); then
  gpu=$(json_str "$(echo "$line" | head -1)")
  echo "   GPU: $line"
else
  echo "   nvidia-smi failed: $line"
fi
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
# The bundle's binaries need glibc 2.35 or later (they are built on Debian 12).
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null || echo unknown)
echo "   $glibc (the bundle needs 2.35 or later)"
part machine "{\"gpu\": $gpu, \"cpu\": $(json_str "$cpu"), \"cores\": $(nproc), \"glibc\": $(json_str "$glibc"), \"commit\": $(json_str "$(commit)")}"

# Which libraries the backends would load: CUDA's driver and NVRTC, the Vulkan loader and the
# Vulkan drivers (ICD manifests) it would find.
find_lib() {
  local hit
  hit=$(ldconfig -p 2>/dev/null | awk -v l="$1" 'index($1, l) == 1 && !p {p = $NF} END {print p}')
  if [ -z "$hit" ]; then
    hit=$(ls /usr/lib/x86_64-linux-gnu/"$1"* /usr/lib64/"$1"* /usr/local/cuda*/lib64/"$1"* \
      /usr/local/cuda*/targets/x86_64-linux/lib/"$1"* 2>/dev/null | head -1)
  fi
  echo "$hit"
}
libs=""
for lib in libcuda.so libnvrtc.so libnvidia-ptxjitcompiler.so libvulkan.so.1 libGLX_nvidia.so.0; do
  path=$(find_lib "$lib")
  echo "   $lib: ${path:-absent}"
  libs="$libs$(json_str "$lib"): $( [ -n "$path" ] && json_str "$path" || echo null ), "
done
icds=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json 2>/dev/null | tr '\n' ' ')
echo "   Vulkan drivers: ${icds:-none}"
part libraries "{${libs}\"vulkan_icds\": $(json_str "$icds")}"

# Mesa installs its Intel and AMD drivers' manifests whether or not such a GPU exists, and with
# no GPU driver wgpu falls back to lavapipe without a word: so a GPU must be seen (a device node),
# and an NVIDIA one must have NVIDIA's Vulkan driver, or the figures would be the CPU's.
nogo() {
  echo "!! $1 Nothing measured."
  part verdict "$(json_str "$1")"
  exit 2
}
nvidia=0
{ [ -e /dev/nvidia0 ] || [ "$gpu" != null ]; } && nvidia=1
if [ $nvidia = 1 ]; then
  echo "$icds" | grep -qi nvidia || nogo "An NVIDIA GPU without NVIDIA's Vulkan driver (no \
nvidia_icd.json; in a container NVIDIA_DRIVER_CAPABILITIES must include 'graphics'): the bundle's \
backend is wgpu over Vulkan."
  [ -n "$(find_lib libGLX_nvidia.so.0)" ] || echo "   warning: libGLX_nvidia.so.0 (what nvidia_icd.json names) not found"
elif ls /dev/dri/renderD* > /dev/null 2>&1; then
  echo "   no NVIDIA GPU; a DRM render node is present: running on whatever Vulkan driver serves it"
elif [ "$SOFTWARE_OK" = 1 ] && echo "$icds" | grep -q lvp_icd; then
  echo "   no GPU: running on lavapipe, Mesa's CPU Vulkan driver (--software-ok)"
else
  nogo "No GPU here (no /dev/nvidia0, no /dev/dri render node); --software-ok runs on lavapipe."
fi

echo "== bundle"
if [ ! -f "$BUNDLE" ]; then
  echo "!! $BUNDLE is missing: build it with scripts/gpu-check.sh --bundle and carry it"
  part verdict '"no bundle"'
  exit 2
fi
rm -rf "$WORK/gpu-bundle"
if command -v xz > /dev/null; then
  xz -dc "$BUNDLE" | tar -C "$WORK" -xf -
else
  python3 -c 'import lzma, sys, tarfile; tarfile.open(fileobj=lzma.open(sys.argv[1])).extractall(sys.argv[2])' "$BUNDLE" "$WORK"
fi
BIN=$WORK/gpu-bundle/bin
built=$(cat "$WORK/gpu-bundle/COMMIT")
echo "   built from $built; this tree is $(commit)"
if [ -z "$(find_lib libvulkan.so.1)" ] && [ -f "$WORK/gpu-bundle/lib/libvulkan.so.1" ]; then
  echo "   no system Vulkan loader: using the bundle's"
  export LD_LIBRARY_PATH="$WORK/gpu-bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
part bundle "{\"built_from\": $(json_str "$built"), \"bytes\": $(stat -c %s "$BUNDLE")}"

# The parity tests need the committed fixtures: they look under $CARGO_MANIFEST_DIR.
export CARGO_MANIFEST_DIR=$REPO BURN_DEVICE=wgpu
step tests 170 "$BIN/gpu_parity" --test-threads 1
summary=$(grep -E '^test result' "$OUT/tests.log" | tail -1)
count() { echo "$summary" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0; }
failed=$(grep -E '^test .* FAILED$' "$OUT/tests.log" | sed 's/^test //; s/ \.\.\. FAILED$//' | tr '\n' ' ')
echo "   ${summary:-no summary}"
part tests "{\"exit\": $STEP_RC, \"seconds\": $STEP_S, \"passed\": $(count passed), \"failed\": $(count failed), \"ignored\": $(count ignored), \"failures\": $(json_str "$failed")}"

IMAGE=$REPO/tests/fixtures/images/rgb_96x64.png
step caption 40 "$BIN/blip2" caption --model "$REPO/tests/fixtures/tiny-opt" --backend wgpu "$IMAGE"
part caption "{\"exit\": $STEP_RC, \"seconds\": $STEP_S, \"text\": $(json_str "$(cat "$OUT/caption.log")")}"

MODEL=$WORK/model-$SHAPE
rm -rf "$MODEL"
step checkpoint 90 "$BIN/random-checkpoint" --shape "$SHAPE" --out "$MODEL"
part checkpoint "$( [ $STEP_RC = 0 ] && cat "$OUT/checkpoint.log" || echo "{\"exit\": $STEP_RC}")"

if [ $STEP_RC = 0 ]; then
  remaining=$(echo $DTYPES | wc -w)
  for dtype in $DTYPES; do
    # An equal share of what is left for each precision still to run.
    share=$(($(left) / remaining))
    remaining=$((remaining - 1))
    step "bench-$dtype" $share "$BIN/pipeline" "$MODEL" --backend wgpu --dtype "$dtype" \
      --image "$IMAGE" --tokens 20 --batches 1,8 --repeat 3
    if [ $STEP_RC = 0 ]; then
      part "bench_$dtype" "$(cat "$OUT/bench-$dtype.log")"
    else
      # What the benchmark had measured before it stopped (it reports each phase on stderr).
      measured=$(awk '$1 == "measured" {printf "%s\"%s\": %s", sep, $2, $3; sep = ", "}' "$OUT/bench-$dtype.err")
      part "bench_$dtype" "{\"exit\": $STEP_RC, \"seconds\": $STEP_S, \"measured_before_it_stopped\": {$measured}}"
    fi
  done
fi
rm -rf "$MODEL"

part total_seconds $((SECONDS - START))
echo "== result ($OUT/gpu-check.json)"
cat "$OUT/gpu-check.json"
exit $status
