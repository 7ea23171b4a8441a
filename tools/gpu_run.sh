#!/usr/bin/env bash
# GPU checks and benchmarks of the CUDA kernels, in one go, on a machine with a CUDA GPU:
#   install the repo (editable, no dependencies), compile the kernels (stops here when one fails
#   to compile), run the gpu tests, then tools/bench_kernels.py (--sweep by default: M <= 8 kernel
#   variants first; BENCH_ARGS=--mma-sweep / --wg-sweep times every qgemm_mma / qgemm_wg tile x split
#   at M >= 64), tools/bench_decode_gpu.py, tools/bench_ort_cuda.py (onnxruntime device="cuda"
#   vs "cpu").
#
#   bash tools/gpu_run.sh                     # everything
#   STAGES="test bench" BENCH_ARGS=--quick bash tools/gpu_run.sh
#   STAGES=test TEST_PATHS=tests/kernels/test_cuda_wgmma.py bash tools/gpu_run.sh   # some tests only
#   STAGES="probe test" PROBE_SHAPES="8192x28672x512 4096x11008x512" PROBE_ARGS="--variants --tiles ..." \
#     bash tools/gpu_run.sh                   # tools/probe_wgmma.py on each K x N x M first (probe.log)
#   STAGES="bench baseline" BASELINE=old_tree BENCH_ARGS="--ms 1" bash tools/gpu_run.sh
#                                             # then the same bench on another source tree (e.g.
#                                             # `git archive <commit> | tar -x -C old_tree`), installed
#                                             # apart (baseline.log, baseline/bench.json): ours vs a
#                                             # commit side by side
#   STAGES=pdl PRECOMPILE=0 bash tools/gpu_run.sh   # the opt-in launch paths (PDL, the direct
#                                             # torch launch): their GPU tests, tools/probe_pdl.py,
#                                             # bench_decode_gpu.py --env-ab $PDL_AB --profile-eager 8 (pdl.log)
#
# Needs python3 with torch (CUDA), cupy, transformers, onnxruntime, pytest. onnxruntime-extensions
# (for the onnxruntime device="cuda" test) is installed from ./.whl/*.whl when that folder exists.
# Logs go to $OUT (default ./gpu_out): env.log, pytest.log, bench.log (+ bench.json),
# decode.log (+ decode.json), ort.log (+ ort_cuda.json), ncu.log (Nsight Compute
# sections of the M = 1 kernel, where ncu exists). Exit status: nonzero if any stage failed.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
export OUT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PY:-python3}"
STAGES="${STAGES:-test bench decode ort ncu}"
status=0

{
  echo "== environment"
  nvidia-smi -L || true
  "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
import cupy
print("cupy", cupy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "devices", cupy.cuda.runtime.getDeviceCount())
EOF
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && echo "installed $(ls .whl)"
  fi
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . && echo "installed gptq-export (editable)"
} 2>&1 | tee "$OUT/env.log" || status=1
if [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"; fi

if [[ " $STAGES " == *" probe "* ]]; then
  echo "== probe_wgmma" | tee "$OUT/probe.log"
  for shape in ${PROBE_SHAPES:-8192x28672x512}; do
    # shellcheck disable=SC2086
    timeout "${PROBE_TIMEOUT:-200}" "$PY" tools/probe_wgmma.py ${shape//x/ } ${PROBE_ARGS:-} 2>&1 | tee -a "$OUT/probe.log" \
      || status=1
  done
fi

# NVRTC takes seconds per kernel: compile the common ones in parallel processes (CuPy's disk cache).
# (python -c, not a heredoc on stdin: spawned workers re-import __main__ from its path.)
# PRECOMPILE=0 skips it (a probe-only run compiles just what it times).
echo "== precompile" | tee -a "$OUT/env.log"
if [ "${PRECOMPILE:-1}" = 1 ] && ! "$PY" -c '
import time
from gptq_export.kernels import cuda as kc
from gptq_export.kernels import cuda_mma as km
from gptq_export.kernels import cuda_wgmma as kw
t = time.time()
names = sorted(set(kc.common_kernel_names() + [n for n, _ in kc.sweep_kernel_names()] + km.kernel_names()
                   + (kw.kernel_names() if kw.supported() else [])))
kc.precompile(names)
print(f"compiled {len(names)} kernels in {time.time() - t:.1f}s")
' 2>&1 | tee -a "$OUT/env.log"; then
  echo "== a kernel failed to compile: stopping"
  tail -n 40 "$OUT/env.log"
  exit 1
fi

if [[ " $STAGES " == *" pdl "* ]]; then
  (
    rc=0
    echo "== pytest -m gpu: PDL and direct-launch tests"
    timeout "${TEST_TIMEOUT:-300}" "$PY" -P -m pytest -m gpu -q -p no:cacheprovider -rfE tests/kernels/test_launch.py \
      tests/kernels/test_cuda.py -k "pdl or direct" || rc=1
    echo "== probe_pdl"
    # shellcheck disable=SC2086
    timeout "${PROBE_TIMEOUT:-300}" "$PY" tools/probe_pdl.py ${PDL_ARGS:---bits 4 3} || rc=1
    echo "== bench_decode_gpu --env-ab"
    # shellcheck disable=SC2086
    timeout "${DECODE_TIMEOUT:-300}" "$PY" tools/bench_decode_gpu.py ${DECODE_ARGS:---bits 4 --profile-eager 8} --env-ab \
      ${PDL_AB:-GPTQ_EXPORT_PDL=1 GPTQ_EXPORT_TORCH_DIRECT=0 GPTQ_EXPORT_PDL=1,GPTQ_EXPORT_TORCH_DIRECT=0} || rc=1
    exit $rc
  ) 2>&1 | tee "$OUT/pdl.log" || status=1
fi
if [[ " $STAGES " == *" test "* ]]; then
  echo "== pytest -m gpu"
  timeout "${TEST_TIMEOUT:-300}" "$PY" -P -m pytest -m gpu -q -p no:cacheprovider -rfE --continue-on-collection-errors ${TEST_PATHS:-tests} 2>&1 \
    | tee "$OUT/pytest.log" || status=1
fi
if [[ " $STAGES " == *" bench "* ]]; then
  echo "== bench_kernels"
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-240}" "$PY" tools/bench_kernels.py ${BENCH_ARGS---sweep} 2>&1 | tee "$OUT/bench.log" || status=1
fi
if [[ " $STAGES " == *" baseline "* ]]; then
  echo "== bench_kernels on the baseline tree ${BASELINE:-}"
  (
    [ -n "${BASELINE:-}" ] && [ -f "$BASELINE/pyproject.toml" ] || { echo "BASELINE must name a source tree"; exit 1; }
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-deps --no-build-isolation --target "$site" "$(cd "$BASELINE" && pwd)" || exit 1
    mkdir -p "$OUT/baseline"
    # the baseline package first on the path (the editable install's finder comes after it)
    # shellcheck disable=SC2086
    OUT="$OUT/baseline" PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" timeout "${BENCH_TIMEOUT:-240}" "$PY" "$BASELINE/tools/bench_kernels.py" \
      ${BASELINE_ARGS-${BENCH_ARGS---sweep}}
  ) 2>&1 | tee "$OUT/baseline.log" || status=1
fi
if [[ " $STAGES " == *" decode "* ]]; then
  echo "== bench_decode_gpu"
  # shellcheck disable=SC2086
  timeout "${DECODE_TIMEOUT:-110}" "$PY" tools/bench_decode_gpu.py ${DECODE_ARGS:-} 2>&1 | tee "$OUT/decode.log" \
    || status=1
fi
if [[ " $STAGES " == *" ort "* ]]; then
  echo "== bench_ort_cuda"
  timeout "${ORT_TIMEOUT:-240}" "$PY" tools/bench_ort_cuda.py 2>&1 | tee "$OUT/ort.log" || status=1
fi

if [[ " $STAGES " == *" ncu "* ]] && command -v ncu >/dev/null; then
  echo "== ncu (fused kernel, 8192 x 28672, M = 1)"
  for v in w4 w3; do
    timeout "${NCU_TIMEOUT:-90}" ncu --clock-control none -k regex:qgemm_small --launch-skip 5 --launch-count 1 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
      --section LaunchStats "$PY" tools/bench_kernels.py --one "8192x28672:1:$v" 2>&1 | tee -a "$OUT/ncu.log" \
      | grep -E "qgemm_small|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issue Slot|L2 Hit|Mem Busy|Max Bandwidth" \
      || true
  done
fi

# The tables last (a log tail shows them).
echo
echo "================ summary (status $status)"
[ -f "$OUT/probe.log" ] && grep -E "^[0-9]+ x [0-9]+|^  " "$OUT/probe.log" | cut -c1-400
[ -f "$OUT/pdl.log" ] && grep -E "passed|failed|^ *[34] |^[A-Z].*us per matmul|with GPTQ_EXPORT|^(FAILED|ERROR) |cProfile|us cum" "$OUT/pdl.log" | cut -c1-220
[ -f "$OUT/pytest.log" ] && grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)" "$OUT/pytest.log" | cut -c1-220 | tail -n 30
[ -f "$OUT/bench.log" ] && sed -n '/copy bandwidth (read/p' "$OUT/bench.log" && sed -n '/^.*: copy .* GB\/s, read/,$p' "$OUT/bench.log"
[ -f "$OUT/bench.log" ] && sed -n '/^sweep (us/,/^$/p' "$OUT/bench.log"
[ -f "$OUT/bench.log" ] && sed -n '/^mma sweep (us/,/^$/p' "$OUT/bench.log"
[ -f "$OUT/bench.log" ] && sed -n '/^wgmma sweep (us/,/^$/p' "$OUT/bench.log"
[ -f "$OUT/decode.log" ] && sed -n '/^Greedy decode/,$p' "$OUT/decode.log"
[ -f "$OUT/ort.log" ] && sed -n '/^onnxruntime .*gptq custom op/,$p' "$OUT/ort.log"
exit $status
