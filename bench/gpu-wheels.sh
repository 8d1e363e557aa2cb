#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels bench/gpu-check.sh installs on the GPU machine, which reaches no
# package registry. Run it here, then name `.whl` in the device call's `carry` (bench/README.md, "gpu-check.sh").
#
#   bash bench/gpu-wheels.sh [PYTHON_VERSION]     # default 3.12: the device image's python3
#
# The image already holds torch (CUDA), numpy, safetensors, pyyaml, tqdm, xxhash, fsspec, matplotlib, pytest,
# pytest-timeout and nvidia-ml-py (the GPU machine's documented image). What `import a2b_pipeline.train` and
# tests/test_gpu.py need beyond them: pydantic and soundfile (libsndfile bundled), with their dependencies.
# typing-extensions travels too: pydantic-core needs >= 4.16, newer than the image may have. Dagster, wandb
# and s3fs are imported only where they are used (defs/, tracking not `disabled`, s3:// paths): the check
# uses none of them. The pins are the versions this repo's .venv was tested with; keep them in step.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
DEST=${A2B_WHEEL_DIR:-.whl}
WHEELS=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
)
rm -rf "$DEST"
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"
ls -1 "$DEST"
echo "$(du -sh "$DEST" | cut -f1) in $DEST for Python $PYVER (the device call carries at most 64 MiB in all)"
