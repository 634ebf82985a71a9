#!/bin/bash
# ssljax's SimCLR train step against the plain PyTorch peer (../shared/bench/torch_simclr_step.py),
# same machine, same shell session, same batch, image size, channels and width.
#   bash experiments/bench_peer.sh [TORCH_PYTHON]     (default: /tmp/torchenv/bin/python)
# Prints, per setting: the peer's line, then ssljax's with its CPU XLA defaults (ssljax/xla_flags.py)
# and with XLA's own defaults (SSLJAX_XLA_CPU_DEFAULTS=0).
set -u
cd "$(dirname "$0")/.."
TORCH_PY=${1:-/tmp/torchenv/bin/python}
PY=${PY:-.venv/bin/python}
PEER=../shared/bench/torch_simclr_step.py
for stride in 1 2; do
for width in 16 32; do
  echo "== batch 128, 28x28x1, width $width, stride-$stride 3x3 stem, projector 2048-128, SGD"
  if [ -x "$TORCH_PY" ] && [ -f "$PEER" ]; then
    if [ "$stride" = 1 ]; then
      "$TORCH_PY" "$PEER" --batch 128 --size 28 --channels 1 --width $width 2>/dev/null | grep images/s
    else  # the peer's stem has a fixed stride; this wrapper sets it
      "$TORCH_PY" experiments/peer_stem_stride.py --stem-stride $stride --batch 128 --size 28 \
        --channels 1 --width $width 2>/dev/null | grep images/s
    fi
  else
    echo "(no PyTorch peer: install it as ../shared/bench/README.md says)"
  fi
  for defaults in 1 0; do
    echo -n "ssljax (SSLJAX_XLA_CPU_DEFAULTS=$defaults): "
    SSLJAX_XLA_CPU_DEFAULTS=$defaults "$PY" experiments/bench_step.py \
      --config=configs/simclr.py:fashion_mnist --batch 128 --config.model.width=$width \
      --config.model.stem_stride=$stride --config.projector.hidden_dims="(2048,)" \
      --config.optimizer.name=sgd --steps 3 --repeats 3 --pipeline_batches 2 2>/dev/null | grep images/s
  done
done
done
echo "== the main job's step: configs/simclr.py:fashion_mnist (batch 256, width 16, stride-2 stem, LARS)"
for defaults in 1 0; do
  echo -n "ssljax (SSLJAX_XLA_CPU_DEFAULTS=$defaults): "
  SSLJAX_XLA_CPU_DEFAULTS=$defaults "$PY" experiments/bench_step.py \
    --config=configs/simclr.py:fashion_mnist --steps 5 --repeats 3 2>/dev/null | grep images/s
done
