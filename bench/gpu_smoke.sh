#!/usr/bin/env bash
# GPU smoke test: a 4-trial search of the glaucoma demo on the local GPU(s), two trials per
# device (search.gpus_per_trial=0.5), mixed precision, 4 at a time, into a throwaway SQLite
# MLflow store. Prints each trial's throughput and the devices it saw, and the GPU's name.
#
#   bash bench/gpu_smoke.sh [key=value ...]    # extra overrides, e.g. train.epochs=8
#
# Exits 2 with a message where there is no NVIDIA GPU or torch sees no CUDA device.
# KEEP=1 keeps the temporary folder (store, data, logs); otherwise it is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"

fail() { echo "gpu_smoke: $*" >&2; exit 2; }
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this needs a machine with an NVIDIA GPU and its driver"
gpu_names=$(nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader) \
  || fail "nvidia-smi found no usable GPU"
[ -x "$PY" ] || fail "$PY not found: run \`make install\` first"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || fail "torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device (a CPU-only build, or no driver)"

work=$(mktemp -d -t medxp-gpu-smoke-XXXXXX)
[ "${KEEP:-}" = 1 ] && echo "keeping $work" || trap 'rm -rf "$work"' EXIT
unset RAY_ADDRESS MLFLOW_RUN_ID MLFLOW_EXPERIMENT_NAME MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" MEDXP_CACHE_DIR="$work/cache" MPLBACKEND=Agg
study="gpu-smoke-$(date +%s)"
epochs=6  # every trial trains all of them (grace period = max epochs): comparable throughputs
settings=(data_dir="$work/data/glaucoma" data.demo_images_per_class=400 data.demo_folds=3
  train.device=cuda train.amp=true train.epochs=$epochs train.patience=0
  search.n_trials=4 search.max_concurrent=4 search.gpus_per_trial=0.5 search.cpus_per_trial=2
  search.max_epochs=$epochs search.grace_period=$epochs search.sampler=random search.rerun_duplicates=true
  eval.bootstrap_resamples=100 "$@")

echo "GPU(s): $gpu_names"
started=$(date +%s)
# From the temporary folder, so that MLflow's artifacts and Ray's results land there too.
cd "$work"
"$PY" -m medxp.cli search --dataset glaucoma --name "$study" --no-progress --set "${settings[*]}"
echo "search wall time: $(( $(date +%s) - started )) s"

STUDY="$study" MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false "$PY" - <<'EOF'
"""Reads the trials back: throughput from the per-epoch metric timestamps, devices from the tags."""
import os

import mlflow
from mlflow.tracking import MlflowClient

client = MlflowClient()
experiment = client.get_experiment_by_name("glaucoma")
runs = client.search_runs([experiment.experiment_id], f"tags.`medxp.study` = '{os.environ['STUDY']}'")
trials = sorted((run for run in runs if "medxp.trial_number" in run.data.tags),
                key=lambda run: int(run.data.tags["medxp.trial_number"]))
print(f"\n{'trial':>5} {'state':>9} {'epochs':>6} {'s/epoch':>8} {'img/s':>7}  node          CUDA_VISIBLE_DEVICES  ray_gpu_ids")
images, epochs, spans = 0, 0, []
for run in trials:
    tags = run.data.tags
    # train_loss is logged once per epoch (step = epoch): the gaps between its timestamps are epoch times
    # (training plus validation).
    stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "train_loss")]
    environment = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/config/environment.json")
    train_images = sum(environment["data"]["class_counts"]["train"].values())
    epoch_s = (stamps[-1] - stamps[0]) / 1000 / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    images, epochs = images + train_images * len(stamps), epochs + len(stamps)
    spans.append((stamps[0] / 1000 - epoch_s, stamps[-1] / 1000))  # first epoch's start (estimated) to last's end
    print(f"{tags['medxp.trial_number']:>5} {tags.get('medxp.trial_state', '?'):>9} {len(stamps):>6} "
          f"{epoch_s:>8.2f} {train_images / epoch_s:>7.0f}  {tags.get('medxp.node_id', '')[:12]:<12}  "
          f"{tags.get('medxp.cuda_visible_devices', ''):<20}  {tags.get('medxp.ray_gpu_ids', '')}")
(parent,) = [run for run in runs if "medxp.trial_number" not in run.data.tags]
search_s = (parent.info.end_time - parent.info.start_time) / 1000
training_s, reach = 0.0, float("-inf")  # the time during which at least one trial was training
for start, end in sorted(spans):
    training_s, reach = training_s + max(0.0, end - max(start, reach)), max(reach, end)
params = trials[0].data.params if trials else {}
print(f"{len(trials)} trials (train.device={params.get('train.device')}, train.amp={params.get('train.amp')}): "
      f"{images / training_s:.0f} training images/s over the {training_s:.0f} s some trial was training; "
      f"{epochs} epochs in the search's {search_s:.0f} s ({60 * epochs / search_s:.1f} epochs/min, start-up, "
      "evaluation and model logging included)")
EOF
