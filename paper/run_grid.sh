#!/usr/bin/env bash
# Run a paper configuration on this machine within a wall-clock budget, then freeze its run
# table into paper/data/ (runs.csv + provenance.json).  Run from the repository root with the
# environment active (PYTHON names the interpreter; default python3):
#   paper/run_grid.sh config/paper-gpu.yaml 420 12     # config, budget in s (0 = none), GPU slots
# GPU slots: each training job asks for gpu=1; N slots let N small jobs share one GPU.
# When the budget is spent, Snakemake is interrupted (SIGINT: it stops its jobs and removes
# their incomplete outputs); the frozen provenance lists every configured run that is missing,
# and anything but the complete config/paper.yaml grid is labelled a REDUCED run.
set -uo pipefail
config=${1:?usage: paper/run_grid.sh CONFIG [BUDGET_SECONDS] [GPU_SLOTS]}
budget=${2:-0}
slots=${3:-1}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
args=(--configfile "$config" --cores "$(nproc)" --resources "gpu=$slots" --scheduler greedy --keep-going
      results/summary/runs.csv)
start=$(date +%s)
if [ "$budget" -gt 0 ]; then
    timeout -s INT "$budget" "$python" -m snakemake "${args[@]}"
else
    "$python" -m snakemake "${args[@]}"
fi
status=$?
echo "snakemake exit status $status after $(( $(date +%s) - start )) s"
"$python" paper/freeze.py --config "$config" --partial --note "paper/run_grid.sh $config budget=${budget}s gpu_slots=$slots; snakemake exit status $status"
