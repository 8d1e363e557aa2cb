#!/usr/bin/env bash
# The CPU dry run of bench/gpu-check.sh, with the repo as the GPU machine sees it: a copy of the tracked and
# untracked-not-ignored files (no .venv, no bench/out, no .git), the wheels of bench/gpu-wheels.sh carried
# as .whl/, and an interpreter that has the GPU image's packages (torch, numpy, safetensors, pyyaml, tqdm,
# xxhash, fsspec, matplotlib, pytest, pytest-timeout, nvidia-ml-py) but not the project's own dependencies.
# Missing files and imports show here, not in the GPU call. About 6-10 minutes on 2 busy cores, most of it
# torch.compile on the CPU; the first run also builds the interpreter's venv (a minute or two).
#
#   bash bench/gpu-check-dryrun.sh        # results in /tmp/a2b-gpu-dryrun/out (A2B_DRYRUN_DIR to move it)
set -euo pipefail
cd "$(dirname "$0")/.."
SIM=${A2B_DRYRUN_DIR:-/tmp/a2b-gpu-dryrun}
PY=${PYTHON:-python3}
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ ! -x "$SIM/venv/bin/python" ]; then
  "$PY" -m venv "$SIM/venv"
  "$SIM/venv/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" numpy safetensors pyyaml tqdm xxhash \
    fsspec matplotlib pytest pytest-timeout nvidia-ml-py
fi
A2B_WHEEL_DIR="$SIM/whl" bash bench/gpu-wheels.sh "$PYVER"
rm -rf "$SIM/repo" "$SIM/out" "$SIM/site"
mkdir -p "$SIM/repo"
git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents {} "$SIM/repo/"
cp -r "$SIM/whl" "$SIM/repo/.whl"
echo "dry run in $SIM/repo ($(du -sh "$SIM/repo" | cut -f1) would travel; the limit is 64 MiB)"
cd "$SIM/repo"
# generous limits: a CPU is slow at what the GPU does in seconds
OUT="$SIM/out" A2B_PYTHON="$SIM/venv/bin/python" A2B_SITE="$SIM/site" A2B_TEST_GPU_DEVICE=cpu \
  A2B_TOTAL_S=${A2B_TOTAL_S:-1800} A2B_LIMIT_TESTS=700 A2B_LIMIT_CHECK=600 A2B_LIMIT_ARCHS=300 \
  bash bench/gpu-check.sh
