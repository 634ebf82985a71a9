#!/usr/bin/env bash
# Pre-train on a Cloud TPU VM slice: create it (or reuse it), install this checkout of ssljax
# on every worker, and run the same `python -m ssljax.main` command on all workers at once.
#
#   experiments/launch_tpu_pod.sh --name ssl-v4 --zone us-central2-b --type v4-32 \
#       --bucket gs://my-bucket [--project my-project] [--spot] [--dry-run] \
#       -- --config=configs/simclr.py:imagenet --config.num_epochs=100
#
# Everything after `--` goes to ssljax.main on every worker. The datasets are read from
# BUCKET/tensorflow_datasets (prepare them once with `tfds build --data_dir=...`) and the
# workdir (checkpoints, metrics.jsonl, results.json) is BUCKET/runs/NAME, so a run survives
# the VMs: the workers find each other by themselves (jax.distributed auto-detects Cloud TPU),
# and running this script again resumes from the last checkpoint. With --spot, a preempted
# slice is deleted and created again, and training resumes, up to --retries times.
#
# --dry-run prints every command (gcloud, tar) instead of running it, assuming the slice
# does not exist yet; nothing is created and no gcloud is called.
set -euo pipefail

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

NAME="" ZONE="" TYPE="" BUCKET="" PROJECT="" SPOT=0 DRY_RUN=0 RETRIES=3
VERSION="tpu-ubuntu2204-base"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --type) TYPE="$2"; shift 2 ;;
    --bucket) BUCKET="${2%/}"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --retries) RETRIES="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1; see --help." >&2; exit 2 ;;
  esac
done
TRAIN_ARGS=("$@")

for var in NAME ZONE TYPE BUCKET; do
  if [[ -z "${!var}" ]]; then
    flag=$(echo "$var" | tr '[:upper:]' '[:lower:]')
    echo "error: --$flag is required; see --help." >&2
    exit 2
  fi
done
if [[ "$BUCKET" != gs://* ]]; then
  echo "error: --bucket must be a gs:// path (got $BUCKET), so every worker sees the data and the workdir." >&2
  exit 2
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARBALL="/tmp/ssljax-${NAME}.tar.gz"
DATA_DIR="$BUCKET/tensorflow_datasets"
WORKDIR="$BUCKET/runs/$NAME"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

# Print a command shell-quoted; run it unless --dry-run.
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ $DRY_RUN -eq 0 ]]; then "$@"; fi
}

ensure_slice() {
  local state=NONE
  if [[ $DRY_RUN -eq 1 ]]; then  # shown, not asked: a dry run assumes no slice exists yet
    printf '+'; printf ' %q' "${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)'
    printf '\n'
  else
    state=$("${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null) \
      || state=NONE
  fi
  if [[ "$state" == PREEMPTED || "$state" == TERMINATED ]]; then
    run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
    state=NONE
  fi
  if [[ "$state" == NONE ]]; then
    local extra=()
    [[ $SPOT -eq 1 ]] && extra+=(--spot)
    run "${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$TYPE" \
      --version="$VERSION" "${extra[@]}"
  else
    echo "# reusing TPU VM slice $NAME ($state)"
  fi
}

install() {
  # This checkout (committed files), so every worker runs exactly the code that was tested.
  run git -C "$REPO" archive --format=tar.gz -o "$TARBALL" HEAD
  run "${GCLOUD[@]}" scp "$TARBALL" "$NAME:ssljax.tar.gz" "${WHERE[@]}" --worker=all
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command \
    "rm -rf ~/ssljax && mkdir -p ~/ssljax && tar xzf ~/ssljax.tar.gz -C ~/ssljax && python3 -m pip install -q -U 'jax[tpu]' ~/ssljax'[train]'"
}

train() {
  # The user's flags first: config overrides must follow --config.
  local args=""
  [[ ${#TRAIN_ARGS[@]} -gt 0 ]] && args=$(printf ' %q' "${TRAIN_ARGS[@]}")
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command \
    "cd ~/ssljax && TFDS_DATA_DIR=$DATA_DIR python3 -m ssljax.main$args --workdir=$WORKDIR --config.data.data_dir=$DATA_DIR"
}

attempt=0
while :; do
  ensure_slice
  install
  rc=0
  train || rc=$?
  if [[ $rc -eq 0 ]]; then
    echo "# done: results in $WORKDIR/results.json"
    exit 0
  fi
  attempt=$((attempt + 1))
  if [[ $attempt -gt $RETRIES ]]; then
    echo "error: training failed $attempt times (last exit status $rc); see the log above." >&2
    exit "$rc"
  fi
  # 75: preempted after a checkpoint (ssljax.main); 255: ssh lost the workers (slice preempted).
  echo "# training stopped (exit $rc); resuming from the last checkpoint ($attempt/$RETRIES)"
done
