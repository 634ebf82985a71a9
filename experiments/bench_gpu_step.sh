#!/usr/bin/env bash
# Issue 27's table in one run on one GPU: ssljax's SimCLR step (ResNet-50, ViT-B/16 with the
# new attention and with the reference attention, ViT-B/16 with remat), MRCL's ViT-B/16 step
# (50% masks on both views), and the PyTorch peers (../shared/bench/gpu/), eager and
# torch.compile. Batch 256, 224 px, bfloat16 compute. Each case runs in its own process and
# appends one JSON line (with the commit and the command) to experiments/bench_gpu_step.jsonl.
#
#   SSLJAX_COMMIT=$(git rev-parse --short HEAD) bash experiments/bench_gpu_step.sh
#
# About 10 minutes on an H200 (each JAX case compiles in under a minute; each torch.compile
# warms up for 1-2). CASES picks a subset, e.g. CASES="vit vit_ref torch_vit torch_vit_c".
# On the device tool (which sends the session's checkout, not ../shared): first, here,
#   mkdir -p .peers && cp ../shared/bench/gpu/*.py .peers/
#   pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0
# then run:  PEERS=.peers SSLJAX_COMMIT=<sha> bash experiments/bench_gpu_step.sh;
#            cp experiments/bench_gpu_step.jsonl $OUT/
# COMMON: the shared arguments (a CPU smoke test: COMMON="--batch=2 --config.data.image_size=32
# --config.model.dtype=bfloat16 --warmup=0 --steps=1 --repeats=1" CASES=mrcl).
# PEERS: the folder of the PyTorch peers (default: shared/bench/gpu, then ../shared/bench/gpu).
# Needs jax, flax, optax, orbax, absl and ml_collections (no TensorFlow); if ml_collections
# is missing and .whl/ holds its wheel, it is installed to /tmp/site first:
#   pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0
set -u
cd "$(dirname "$0")/.."
OUT=${OUT_JSONL:-experiments/bench_gpu_step.jsonl}
PY=${PYTHON:-python3}
export SSLJAX_COMMIT=${SSLJAX_COMMIT:-$(git describe --always --dirty 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if ! $PY -c "import ml_collections" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
PEERS=${PEERS:-shared/bench/gpu}
[ -d "$PEERS" ] || PEERS=../shared/bench/gpu
# In order of importance: a case starts only while BUDGET seconds (default 540, inside the
# device tool's 10-minute command) minus a minute are left, so the run ends in time.
CASES=${CASES:-"vit torch_vit_c resnet torch_resnet_c mrcl torch_vit torch_resnet vit_ref vit_remat"}
LIMIT=${CASE_TIMEOUT:-240}
BUDGET=${BUDGET:-540}
START=$(date +%s)

COMMON=${COMMON:-"--batch=256 --config.data.image_size=224 --config.model.dtype=bfloat16 --warmup=3 --steps=10 --repeats=3"}
VIT="--config.model.name=vit_base --config.model.patch_size=16 --config.optimizer.name=adamw --config.optimizer.weight_decay=0.05"

ssljax() {  # label, then arguments of experiments/bench_gpu_step.py
  local label=$1; shift
  timeout "$LIMIT" $PY experiments/bench_gpu_step.py --label="$label" --out="$OUT" "$@" \
    2> >(grep -v "^I[0-9]\|^W[0-9]" | tail -5 >&2) | tail -1
}
peer() {  # label, script, arguments
  local label=$1 script=$2; shift 2
  local line
  line=$(timeout "$LIMIT" $PY "$PEERS/$script" "$@" | tail -1)
  if [ -n "$line" ]; then
    $PY - "$label" "$line" "$SSLJAX_COMMIT" "python $PEERS/$script $*" "$OUT" <<'EOF'
import json, sys
label, line, commit, command, out = sys.argv[1:]
row = dict(label=label, **json.loads(line), commit=commit, command=command)
row.setdefault("ex_per_s", row.get("img_per_s"))
print(json.dumps(row))
open(out, "a").write(json.dumps(row) + "\n")
EOF
  fi
}

for c in $CASES; do
  if [ $(( $(date +%s) - START )) -gt $(( BUDGET - 60 )) ]; then
    echo "skipped $c: the time budget ($BUDGET s) is spent" >&2; continue
  fi
  case $c in
    resnet) ssljax resnet50_simclr --config=configs/simclr.py:imagenet $COMMON \
              --config.optimizer.name=sgd ;;
    vit) ssljax vitb16_simclr --config=configs/simclr.py:imagenet $COMMON $VIT ;;
    vit_ref) ssljax vitb16_simclr_reference_attention --config=configs/simclr.py:imagenet \
              $COMMON $VIT --config.model.attention=reference ;;
    vit_remat) ssljax vitb16_simclr_remat --config=configs/simclr.py:imagenet $COMMON $VIT \
              --config.model.remat=True ;;
    mrcl) ssljax vitb16_mrcl_mask50 --config=configs/mrcl.py:imagenet,vit $COMMON ;;
    torch_resnet) peer torch_resnet50_eager torch_resnet50_simclr_step.py --batch 256 ;;
    torch_resnet_c) peer torch_resnet50_compile torch_resnet50_simclr_step.py --batch 256 --compile ;;
    torch_vit) peer torch_vitb16_eager torch_vitb16_simclr_step.py --batch 256 ;;
    torch_vit_c) peer torch_vitb16_compile torch_vitb16_simclr_step.py --batch 256 --compile ;;
    *) echo "unknown case $c" >&2 ;;
  esac
done
