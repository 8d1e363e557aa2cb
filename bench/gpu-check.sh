#!/usr/bin/env bash
# bench/gpu-check.sh: every GPU path proven and measured in one call of about 7-8 minutes (issue 28).
#
# Phases, in this order, each under its own time limit so that one slow phase can't eat the others' time
# (and all of them inside A2B_TOTAL_S); what they write lands in $OUT, 6 files, no folders:
#   env      the machine: GPU, driver, python, torch, CUDA                            -> env.json
#   setup    the carried wheels (.whl/) installed into /tmp/a2b-site; `import a2b_pipeline.train` checked
#   tests    pytest tests/test_gpu.py: fp32 and bf16 resume bit-exact, torch.compile, async checkpoints
#            staged from the device, the sync audit (no host-device sync on steps that don't log)  -> junit.xml
#   check    bench/gpu.py --check: a ~25 M parameter transformer, batch 64, 8 s windows, bf16: steps/s,
#            samples/s, GPU busy (profiler and NVML), data wait, async checkpoint stall vs a raw safetensors
#            write, torch.compile speedup, peak memory, and the targets               -> gpu-check.json
#   archs    bench/gpu.py: conv_gru, tcn, transformer in fp32 / bf16 / bf16+compile, with whatever time is left
#                                                                                      -> gpu.json
#   summary  bench/gpu_summary.py: figures and targets, printed last                   -> summary.json
# and the whole output in gpu-check.log.
#
# Python. The GPU machine reaches no package registry, so "the CUDA torch from PyPI into a venv" can't happen
# there: the script uses that image's python3 and its CUDA torch (2.11+cu130 when last seen), plus the wheels
# bench/gpu-wheels.sh downloaded here (pydantic, soundfile and their dependencies; 4 MB), installed with
# `pip --target` and put first on PYTHONPATH, with the repo itself (no install, no venv). Where a registry
# is at hand, make a venv instead (TORCH_SPEC=torch bash scripts/setup.sh) and run with
# A2B_PYTHON=.venv/bin/python and no .whl/.
#
# Environment (all optional):
#   OUT                  results folder (default bench/out/gpu-check); the device tool sets it
#   A2B_PYTHON           interpreter (default python3)
#   A2B_PHASES           phases to run (default "env setup tests check archs"; summary always runs), e.g. a
#                        rerun of the ones that failed: A2B_PHASES="setup check"
#   A2B_TOTAL_S          the whole call's budget in seconds (default 450); A2B_LIMIT_<PHASE> one phase's
#                        (defaults: ENV 60, SETUP 90, TESTS 200, CHECK 240, ARCHS 150), cut to what is left
#   A2B_TEST_GPU_DEVICE  cpu: the dry run here, on a CPU (the tests' CPU mode, bench/gpu.py --device cpu)
#   A2B_GPU_CHECK_SIZE   full | tiny (the check's model; default tiny on a CPU, full otherwise)
#   A2B_DATA_DIR         bench data (synthetic corpora, feature cache, runs), default bench/out/data
#   A2B_SITE             where the wheels are installed (default /tmp/a2b-site)
# The CPU dry run of all this, as the GPU machine sees the repo: bench/gpu-check-dryrun.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/bench/out/gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
TEE_PID=$!

PY=${A2B_PYTHON:-python3}
PHASES=" ${A2B_PHASES:-env setup tests check archs} "
DEVICE=${A2B_TEST_GPU_DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then SIZE=${A2B_GPU_CHECK_SIZE:-tiny}; else SIZE=${A2B_GPU_CHECK_SIZE:-full}; fi
DATA=${A2B_DATA_DIR:-$REPO/bench/out/data}
SITE=${A2B_SITE:-/tmp/a2b-site}
END=$((SECONDS + ${A2B_TOTAL_S:-450}))
SUMMARY_RESERVE=20
export PYTHONUNBUFFERED=1 A2B_TEST_GPU_DEVICE=$DEVICE PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg WANDB_MODE=disabled CUBLAS_WORKSPACE_CONFIG=:4096:8 # before CUDA starts (determinism)
PHASE_RESULTS=()

# phase NAME LIMIT_S CMD...: CMD under a limit (cut to the time left); its exit status and seconds are kept
phase() {
  local name=$1 limit=$2 rc=0 t0=$SECONDS left
  shift 2
  if [[ $PHASES != *" $name "* ]]; then
    echo "== $name: not in A2B_PHASES"
    return 0
  fi
  left=$((END - SECONDS - SUMMARY_RESERVE))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    echo "== $name: skipped, ${left} s left"
    PHASE_RESULTS+=("--phase" "$name=skipped:0")
    return 0
  fi
  echo "== $name: up to ${limit} s, $(date -u +%H:%M:%S) UTC"
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  ((rc == 124 || rc == 137)) && echo "== $name: stopped at its limit of ${limit} s"
  echo "== $name: exit status $rc after $((SECONDS - t0)) s"
  PHASE_RESULTS+=("--phase" "$name=$rc:$((SECONDS - t0))")
}

setup() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl ||
      return 1
  else
    echo "no .whl/: the interpreter must already have pydantic and soundfile (bench/gpu-wheels.sh)"
  fi
  "$PY" -c "import torch, a2b_pipeline.train, pydantic, soundfile
print('a2b_pipeline imports; torch', torch.__version__, 'CUDA', torch.version.cuda,
      'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
}

limit() { # limit PHASE DEFAULT: A2B_LIMIT_<PHASE> or DEFAULT
  local var="A2B_LIMIT_$1"
  echo "${!var:-$2}"
}

echo "gpu-check: device $DEVICE, model size $SIZE, python $PY, results in $OUT, $(date -u +%FT%TZ)"
if [ "$DEVICE" = cuda ]; then
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 | head -5
fi
phase env "$(limit ENV 60)" "$PY" bench/gpu_summary.py env --json "$OUT/env.json"
phase setup "$(limit SETUP 90)" bash -c "$(declare -f setup); PY='$PY' SITE='$SITE' setup"
# The check's corpora (2 h of synthetic audio at full size) are synthesized and featurized on the CPU while
# the tests run, so the check's time goes to the GPU.
DATA_PID=
if [[ $PHASES == *" check "* || $PHASES == *" archs "* ]]; then
  echo "== data: the check's corpora and feature cache, in the background"
  timeout 400 "$PY" bench/gpu.py --check --prepare-only --size "$SIZE" --device "$DEVICE" --data-dir "$DATA" \
    > >(sed -u 's/^/[data] /') 2>&1 &
  DATA_PID=$!
fi
TESTS_LIMIT=$(limit TESTS 200)
phase tests "$TESTS_LIMIT" "$PY" -m pytest tests/test_gpu.py -v -p no:cacheprovider \
  --junitxml="$OUT/junit.xml" --timeout "$((TESTS_LIMIT / 2))"
if [ -n "$DATA_PID" ]; then
  rc=0
  wait "$DATA_PID" || rc=$?
  echo "== data: exit status $rc (the check prepares what is missing itself)"
fi
CHECK_LIMIT=$(limit CHECK 240)
left=$((END - SECONDS - SUMMARY_RESERVE))
((CHECK_LIMIT > left)) && CHECK_LIMIT=$left
# the script's own budget ends before the phase's limit, so it writes its verdict itself
phase check "$CHECK_LIMIT" "$PY" bench/gpu.py --check --size "$SIZE" --device "$DEVICE" \
  --budget-s "$((CHECK_LIMIT - 25))" --data-dir "$DATA" --json "$OUT/gpu-check.json"
if [ "$SIZE" = tiny ]; then # the dry run: the archs table's code paths, not its figures
  phase archs "$(limit ARCHS 150)" "$PY" bench/gpu.py --quick --device "$DEVICE" --archs tcn \
    --precisions fp32,bf16 --data-dir "$DATA" --json "$OUT/gpu.json"
else
  phase archs "$(limit ARCHS 150)" "$PY" bench/gpu.py --steps 50 --data-dir "$DATA" --json "$OUT/gpu.json"
fi
"$PY" bench/gpu_summary.py summary --out "$OUT" "${PHASE_RESULTS[@]}"
echo "gpu-check: done in ${SECONDS} s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
failed=0
for r in "${PHASE_RESULTS[@]}"; do [[ $r == *=* && $r != *=0:* ]] && failed=1; done
exec 1>&- 2>&-
wait "$TEE_PID" # the log is complete before the call returns and $OUT is copied back
exit "$failed"
