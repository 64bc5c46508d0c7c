#!/usr/bin/env bash
# One command: train a paper configuration, freeze its run table and the small per-run
# artefacts into paper/data/, and redraw every paper figure and table from them.
#
#   paper/run_grid.sh [CONFIG] [BUDGET_SECONDS] [GPU_SLOTS]
#   paper/run_grid.sh                               # config/paper.yaml, no time limit, 8 GPU slots
#   paper/run_grid.sh config/paper.yaml 540 12      # stop training after 540 s, 12 jobs share the GPU
#
# Run it again to continue an unfinished grid: Snakemake trains only the stacks whose outputs
# are missing; incomplete outputs of an interrupted job are redone.  To continue on another
# machine or a fresh clone, commit the archive it writes (ARCHIVE, default
# WORKDIR/paper/archive/<config name>.tar.gz: every finished stack's records and input PIPs, a few MB;
# `slabbench archive`): the next run restores the finished stacks from it before training and
# retrains none of them, then writes the archive again with what it added.  Alternatively carry
# results/ together with .snakemake/metadata/ (Snakemake's record of the inputs' checksums), or set
# CARRIED=1 to keep every finished run in a carried results/ as it is (its files are touched so
# that they are newer than the sources; the freeze still refuses runs made with another spec).
# Delete a stack file (results/runs/EXP/METHOD/stack-N.json) to retrain its runs (with
# ARCHIVE=none if the archive holds that stack: it would be restored from there).
#
# Environment: PYTHON (interpreter with slabbench and snakemake; default python3), WORKDIR
# (where results/ and paper/{data,figures,tables} are written; default the repository root),
# CORES (default nproc), CARRIED (1: keep the finished runs of a carried results/), ARCHIVE (the
# archive to continue from and write; "none": neither), CHECKPOINT_MINUTES (with a budget, how
# often a training job saves its state; default 1), SNAKEMAKE_ARGS (more options for the training
# Snakemake, split at spaces, e.g. "--prioritize results/runs/mnist-lenet300/spike_slab_k5/stack-0.json"
# to start that job first when a budget cannot fit every job; a --config there replaces this
# script's own, so under a budget add checkpoint_minutes=N to it).
# GPU slots: each training job on a GPU asks for gpu=1; N slots let N small jobs share one GPU.
# With a budget, Snakemake is interrupted when it is spent (SIGINT: it stops its jobs and
# removes their incomplete outputs), and each training job saves its state every
# CHECKPOINT_MINUTES (default 1; slabbench.checkpoint, docs/reliability.md): run again in the
# same WORKDIR, or with its results/checkpoints/ carried, a stopped job goes on from its last
# save.  Jobs that fail (CIFAR-10 without its files) do not stop the others.  Whatever finished is frozen (freeze.py --partial; only the experiments with runs are
# replaced in paper/data/): the provenance lists per experiment every configured run that is
# missing, and says REDUCED (and what) wherever the runs are not config/paper.yaml's block for it.
# Exit status: 0 when the freeze and the redraw succeeded (missing runs are reported, not an
# error), else the failing step's status.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
config_arg=${1:-config/paper.yaml}
budget=${2:-0}
slots=${3:-8}
python=${PYTHON:-python3}
cores=${CORES:-$(nproc)}
workdir=$(realpath -m "${WORKDIR:-$root}")
for n in "$budget" "$slots" "$cores"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "run_grid.sh: '$n' is not a whole number (budget, GPU slots and CORES are counts)" >&2; exit 2; }
done
# the config as a path from the repository root where it lies inside it (the provenance names it so)
if [ -f "$config_arg" ]; then config_abs=$(realpath "$config_arg"); else config_abs=$(realpath -m "$root/$config_arg"); fi
[ -f "$config_abs" ] || { echo "run_grid.sh: no config file '$config_arg' (looked in $PWD and $root)" >&2; exit 2; }
case "$config_abs" in "$root"/*) config=${config_abs#"$root"/} ;; *) config=$config_abs ;; esac
cd "$root" || exit 2
mkdir -p "$workdir"
if [ -d "$workdir/results/runs" ] && [ ! -d "$workdir/.snakemake/metadata" ]; then
    if [ "${CARRIED:-0}" = 1 ]; then
        echo "run_grid.sh: CARRIED=1: keeping the finished runs in $workdir/results/runs as they are"
        find "$workdir/results/runs" -type f -exec touch {} +
    else
        echo "run_grid.sh: warning: $workdir/results/runs exists without .snakemake/metadata; runs whose sources" \
             "are newer files are retrained (set CARRIED=1 to keep them)" >&2
    fi
fi

archive=${ARCHIVE:-$workdir/paper/archive/$(basename "$config" .yaml).tar.gz}
if [ "$archive" != none ] && [ -f "$archive" ]; then
    "$python" -m slabbench.cli archive unpack "$archive" --directory "$workdir" \
        || { s=$?; echo "run_grid.sh: could not restore the finished stacks of $archive (status $s)" >&2; exit $s; }
fi

# targets first: --configfile and --rerun-triggers take several values.  The target `stacks`
# trains every stack and nothing downstream: the freeze reads the run folders themselves.
smk=(--snakefile "$root/Snakefile" --directory "$workdir" "--configfile=$config_abs")
args=(-m snakemake stacks "${smk[@]}" --cores "$cores" --resources "gpu=$slots" --scheduler greedy
      --keep-going --rerun-incomplete --rerun-triggers params input software-env)
if [ "$budget" -gt 0 ]; then  # (how often jobs save their state: never a rerun trigger)
    args+=(--config "checkpoint_minutes=${CHECKPOINT_MINUTES:-1}")
fi
read -ra extra <<< "${SNAKEMAKE_ARGS:-}"
args+=(${extra[@]+"${extra[@]}"})  # (an empty array is "unbound" to bash < 4.4 under set -u)
start=$(date +%s)
if [ "$budget" -gt 0 ]; then
    timeout -s INT "$budget" "$python" "${args[@]}"
else
    "$python" "${args[@]}"
fi
status=$?
took=$(( $(date +%s) - start ))
echo "run_grid.sh: training: snakemake exit status $status after $took s"

if [ "$archive" != none ]; then
    mkdir -p "$(dirname "$archive")"
    "$python" -m slabbench.cli archive pack "$config" "$archive" --directory "$workdir" \
        || echo "run_grid.sh: no archive written (see above); the runs stay in $workdir/results/runs" >&2
fi

"$python" paper/freeze.py --config "$config" --partial --results-root "$workdir" --out "$workdir/paper/data" \
    --note "paper/run_grid.sh $config budget=${budget}s gpu_slots=$slots cores=$cores; snakemake exit status $status after $took s" \
    || { s=$?; echo "run_grid.sh: freeze failed (status $s)" >&2; exit $s; }
"$python" -m snakemake paper "${smk[@]}" --cores 1 || { s=$?; echo "run_grid.sh: snakemake paper failed (status $s)" >&2; exit $s; }
# configured runs of this config without a row in the frozen table (experiments with no run at all included)
missing=$("$python" -c 'import sys, pandas as pd
from slabbench.config import load_yaml, run_specs, validate
runs = pd.read_csv(sys.argv[2])
have = set(zip(runs["experiment"], runs["method"], runs["seed"].astype(int)))
print(sum((s["experiment"], s["method"], int(s["seed"])) not in have for s in run_specs(validate(load_yaml(sys.argv[1])))))' \
    "$config_abs" "$workdir/paper/data/runs.csv")
echo "run_grid.sh: froze $workdir/paper/data and redrew $workdir/paper/{figures,tables}; $missing configured runs missing" \
     "(listed per experiment in paper/data/provenance.json, experiments without any run under paper_grid_missing;" \
     "run the same command again to continue)"
