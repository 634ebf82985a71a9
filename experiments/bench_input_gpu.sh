#!/bin/bash
# Issue 24's goal figures on one GPU (prepared for a session that is lent one; ~6-8 min):
# the ResNet-50 SimCLR step (bfloat16, 224 px, batch 256, synthetic batch on the device) with
# and without device augmentation, the augmentation stage alone, and, where TensorFlow and
# TFDS are installed, the host figures per thread on the GPU host's CPU.
#   bash experiments/bench_input_gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp}}
PY=${PYTHON:-python}
SKIP=()
if ! $PY -c "import tensorflow_datasets" 2>/dev/null; then
  echo "TensorFlow/TFDS not installed: host figures skipped" >&2
  SKIP=(--skip host --skip device)
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY -c "import jax; print(jax.__version__, jax.devices())"
$PY experiments/bench_input.py --images 256 --batch 64 --steps 8 --device-batch 256 \
    --step-config configs/simclr.py:imagenet --step-batch 256 --step-repeats 10 \
    --set model.dtype=bfloat16 "${SKIP[@]}" 2>&1 | tee "$OUT/bench_input_gpu.log"
tail -n 1 "$OUT/bench_input_gpu.log" > "$OUT/bench_input_gpu.json"
