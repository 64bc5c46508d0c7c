#!/usr/bin/env bash
# Every check that needs a GPU, in one command, for a short session on a GPU machine:
#
#   benchmarks/gpu_checks.sh [OUT_DIR]      # default gpu-checks/
#
# 1. with pytest: the training loop's CUDA graphs against its eager steps (tests/test_graphs.py:
#    same records, every method and option; no host synchronisation in a step) and a
#    gradient-reading method stacked vs alone (tests/test_plugin_hooks.py).  First, because graphs
#    are on by default on CUDA: where this fails, train on the GPU with `graphs: false`;
#    then jobs stopped and resumed from their checkpoints against jobs that never stopped
#    (tests/test_checkpoint.py, step checkpoint_tests_cuda: records equal bit for bit; checked
#    on the CPU only until then; where it fails, do not resume GPU jobs: delete
#    results/checkpoints/ before a rerun); then `compile: true` on CUDA (tests/test_compile.py
#    and tests/test_counter_noise.py, step compile_tests_cuda: compiled steps captured and replayed give the records of steps as
#    written; Inductor's Triton kernels inside the CUDA graphs);
# 2. benchmarks/graph_replay.py (a captured stacked step replayed vs eager: speed, and whether
#    replay reproduces eager training); then, step graph_replay_compile_cuda, the same at S = 3
#    with the step also compiled by Inductor (its compile time, replayed compiled vs replayed as
#    written, and how far compiling moves the parameters: whether compiling the training loop's
#    step would bring each method near dense's step time); then, step graph_replay_counter_cuda,
#    the same compiled at S = 3 and 30 with `noise_rng: counter` (one fused draw for the stack
#    instead of a kernel per run and draw: whether counter-based noise should go with compile);
# 3. benchmarks/compile_gain.py on CUDA (step compile_gain_cuda; cut off after COMPILE_GAIN_S
#    seconds, default 150): each train job of mnist-lenet300 as written and compiled, graphs on,
#    seconds per epoch both ways, and compiled with `noise_rng: counter`: whether `compile: true`
#    (with counter-based noise or not) should train the paper grid on a GPU;
#    benchmarks/grid_time.py on CUDA (graphs on, the default) for config/paper.yaml's
#    mnist-lenet300 (every train job at 1 and 3 epochs, extrapolated to 200; 8 GPU slots):
#    whether that experiment fits a short GPU session.  Needs the MNIST files in
#    resources/MNIST/raw (git-ignored: copy that folder with the checkout); cut off after GRID_TIME_S seconds
#    (default 180), the rows printed by then are kept;
# 4. benchmarks/step_time.py on CUDA (each method's step against dense);
# 5. benchmarks/stacking.py on CUDA (wall time per run, S = 1, 3, 10, 30; the simulation,
#    LeNet-300-100 and LeNet-5 with grouped stacked convolutions), and LeNet-5 with one
#    convolution per run for comparison;
# 6. the stacking equivalence tests with their runs on CUDA (seed 1 in a stack == seed 1 alone,
#    every method and option, mlp and conv nets; graphs on, the default).
# Each writes its output to OUT_DIR; a failing step does not stop the others. PYTHON picks the
# interpreter (default python3). STEPS picks steps by name (default all, in the order above:
# graph_tests_cuda checkpoint_tests_cuda compile_tests_cuda graph_replay_cuda graph_replay_compile_cuda
# graph_replay_counter_cuda compile_gain_cuda grid_time_cuda step_time_cuda stacking_cuda stacking_cuda_lenet5_loop stacking_tests_cuda), e.g. STEPS="graph_tests_cuda grid_time_cuda"
# for a short session. The paper grid has its own script: paper/run_grid.sh.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-gpu-checks}
py=${PYTHON:-python3}
mkdir -p "$out"
cd "$root"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" SLABBENCH_ROOT="$root"
status=0
all="graph_tests_cuda checkpoint_tests_cuda compile_tests_cuda graph_replay_cuda graph_replay_compile_cuda graph_replay_counter_cuda compile_gain_cuda grid_time_cuda step_time_cuda stacking_cuda stacking_cuda_lenet5_loop stacking_tests_cuda"
for name in ${STEPS:-}; do
    case " $all " in *" $name "*) ;; *) echo "gpu_checks.sh: unknown step '$name' in STEPS; the steps: $all" >&2; exit 2 ;; esac
done
step() {  # step NAME COMMAND...: run, keep its output, remember a failure
    local name=$1; shift
    case " ${STEPS:-$all} " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" > "$out/$name.txt" 2>&1 || { echo "   failed (exit $?), see $out/$name.txt"; status=1; }
    echo "   $((SECONDS - t0)) s"
}
command -v nvidia-smi > /dev/null && nvidia-smi > "$out/nvidia-smi.txt" 2>&1
have_pytest=0
"$py" -c "import pytest" 2> /dev/null && have_pytest=1
if [ $have_pytest = 1 ]; then
    step graph_tests_cuda env SLABBENCH_TEST_DEVICE=cuda "$py" -m pytest tests/test_graphs.py tests/test_plugin_hooks.py -q -p no:cacheprovider
    step checkpoint_tests_cuda env SLABBENCH_TEST_DEVICE=cuda "$py" -m pytest tests/test_checkpoint.py -q -p no:cacheprovider
    step compile_tests_cuda env SLABBENCH_TEST_DEVICE=cuda "$py" -m pytest tests/test_compile.py tests/test_counter_noise.py \
        -q -p no:cacheprovider
else
    echo "== graph_tests_cuda, checkpoint_tests_cuda, compile_tests_cuda, stacking_tests_cuda: skipped (no pytest for $py)"
fi
step graph_replay_cuda "$py" benchmarks/graph_replay.py
step graph_replay_compile_cuda "$py" benchmarks/graph_replay.py --compile --stacks 3 --steps 100 \
    --out "$out/graph_replay_compile_cuda.json"
step graph_replay_counter_cuda "$py" benchmarks/graph_replay.py --compile --noise-rng counter --stacks 3 30 --steps 100 \
    --out "$out/graph_replay_counter_cuda.json"
step compile_gain_cuda timeout "${COMPILE_GAIN_S:-150}" "$py" benchmarks/compile_gain.py config/paper.yaml \
    --experiments mnist-lenet300 --device cuda --epochs 1 2 --repeat 1 --counter --out "$out/compile_gain_cuda.csv"
step grid_time_cuda timeout "${GRID_TIME_S:-180}" "$py" benchmarks/grid_time.py config/paper.yaml \
    --experiments mnist-lenet300 --device cuda --epochs 1 3 --repeat 1 --slots 8 --out "$out/grid_time_cuda.csv"
step step_time_cuda "$py" benchmarks/step_time.py --device cuda
step stacking_cuda "$py" benchmarks/stacking.py --device cuda --sim-epochs 30 --workloads simulation lenet300 lenet5 --conv grouped
step stacking_cuda_lenet5_loop "$py" benchmarks/stacking.py --device cuda --workloads lenet5 --conv loop --stacks 1 10 30
if [ $have_pytest = 1 ]; then
    step stacking_tests_cuda env SLABBENCH_TEST_DEVICE=cuda "$py" -m pytest tests/test_stacking.py -q -x -p no:cacheprovider
fi
exit $status
