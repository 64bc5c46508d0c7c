"""Wall time per run of S stacked runs against one run alone, every method, measured in one run.

    .venv/bin/python benchmarks/stacking.py [--device cpu|cuda|auto] [--stacks 1 3 10 30]
        [--sim-epochs 20] [--lenet-n 1000] [--lenet-epochs 1] [--lenet5-n 320] [--lenet5-batch 32]
        [--workloads simulation lenet300 lenet5] [--methods dense spike_slab ...]

Three workloads, each timed through the core's own training path (``slabbench.train._train``:
the stacked loop when the runs stack, the same code the pipeline runs):

(a) Bai et al.'s simulation at the paper's size: p = 200 inputs, n = 3,000, 200-7-7-7-1,
    batch 500 (6 steps per epoch), ``--sim-epochs`` epochs;
(b) LeNet-300-100 (784-300-100-10) on MNIST-shaped random data held on the device, batch 100,
    ``--lenet-n`` training points for ``--lenet-epochs`` epochs;
(c) LeNet-5-Caffe (conv20-5x5, conv50-5x5, fc500, fc10) on the same kind of data, batch
    ``--lenet5-batch``, ``--lenet5-n`` training points, one epoch (not run by default: a conv
    net's step is mostly arithmetic, slow on a CPU).

For every method and S it prints the time per run and per epoch (ms) and the ratio to S = 1
measured in the same run: the cost of one run inside a stack of S relative to alone.  On the
CPU the clock is the process's CPU time by default (``--clock``), which other processes on a
shared machine do not inflate; on a GPU it is wall time.  Ratios, not absolute times, are the
result.
"""

from __future__ import annotations

import argparse
import time

import torch

from slabbench.api import DatasetSpec, TrainContext, make_params
from slabbench.layers import stacked
from slabbench.models import build_model
from slabbench import engine
from slabbench.registry import method_class
from slabbench.train import Member, _train, resolve_device, set_threads

METHODS = [("dense", {}), ("magnitude", {}), ("spike_slab", {}), ("spike_slab", {"phi_update": "lrt"}),
           ("spike_slab", {"phi_update": "gumbel"}), ("sparse_vd", {}), ("l0", {})]


def workload(name: str, args) -> dict:
    if name == "simulation":
        spec = DatasetSpec("sim", "regression", (200,), 1, {"train": 3000})
        x, y = torch.rand(3000, 200) * 2 - 1, torch.randn(3000)
        return dict(spec=spec, x=x, y=y, model="mlp", options={"hidden": [7, 7, 7], "init": "uniform:0.6"}, batch=500,
                    epochs=args.sim_epochs, lr=5e-3)
    n = args.lenet_n if name == "lenet300" else args.lenet5_n
    spec = DatasetSpec("mnist", "classification", (1, 28, 28), 10, {"train": n})
    data = dict(spec=spec, x=torch.rand(n, 1, 28, 28), y=torch.randint(0, 10, (n,)), lr=1e-3)
    if name == "lenet5":
        return dict(data, model="lenet5", options={}, batch=args.lenet5_batch, epochs=1)
    return dict(data, model="mlp", options={"hidden": [300, 100]}, batch=100, epochs=args.lenet_epochs)


def time_stack(method: str, options: dict, w: dict, s_runs: int, device: torch.device, clock=time.perf_counter,
               starts: int = 1) -> float:
    """Seconds (of ``clock``) to train ``s_runs`` runs of ``method`` together; with ``starts``
    > 1 they are s_runs / starts runs of ``starts`` starts each (a run's starts share its data
    order, as restarts do)."""
    cls = method_class(method)
    params = make_params(cls.Params, options, method)
    x, y = w["x"].to(device), w["y"].to(device)
    n = len(y)
    members = []
    for seed in range(s_runs):
        torch.manual_seed(seed)
        ctx = TrainContext(w["spec"].task, n, w["epochs"], -(-n // w["batch"]), w["lr"], device, w["spec"], target=0.9)
        m = cls(params, ctx)
        members.append(Member(label=f"bench seed={seed}", seed=seed, target=0.9 if cls.trains_per_target(params) else None,
                              method=m, model=m.build(build_model(w["model"], w["spec"], w["options"])).to(device)))
    t0 = clock()
    _train(members, [x] * s_runs, [y] * s_runs, epochs=w["epochs"], batch_size=w["batch"], lr=w["lr"], task=w["spec"].task,
           noise_sd=1.0, device=device, data_seeds=[seed // starts for seed in range(s_runs)], stop=False, what="bench")
    return clock() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stacks", type=int, nargs="+", default=[1, 3, 10, 30])
    ap.add_argument("--sim-epochs", type=int, default=20)
    ap.add_argument("--lenet-n", type=int, default=1000)
    ap.add_argument("--lenet-epochs", type=int, default=1)
    ap.add_argument("--lenet5-n", type=int, default=320)
    ap.add_argument("--lenet5-batch", type=int, default=32)
    ap.add_argument("--workloads", nargs="+", default=["simulation", "lenet300"],
                    choices=["simulation", "lenet300", "lenet5"])
    ap.add_argument("--methods", nargs="+", default=None, help="method names (default: all built-in variants)")
    ap.add_argument("--conv", default=stacked.CONV_IMPL, choices=["auto", "grouped", "loop"],
                    help="how a stacked convolution runs (slabbench.layers.stacked.CONV_IMPL)")
    ap.add_argument("--starts", type=int, default=0,
                    help="also time the simulation's runs as runs of this many starts each (restarts), their "
                         "batches shared (slabbench.engine.SHARE_INPUTS) against one matmul per start")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                    help="wall time, or the process's CPU time (robust on a shared machine; auto: cpu on the CPU, "
                         "wall on a GPU, whose work the CPU clock does not see)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    stacked.CONV_IMPL = args.conv
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    variants = [v for v in METHODS if args.methods is None or v[0] in args.methods]
    use_cpu = args.clock == "cpu" or (args.clock == "auto" and device.type == "cpu")
    clock, clock_name = (time.process_time, "CPU time") if use_cpu else (time.perf_counter, "wall time")
    for wname in args.workloads:
        w = workload(wname, args)
        conv = f", stacked convolutions: {args.conv}" if wname == "lenet5" else ""
        print(f"\n{wname} on {name}: {w['epochs']} epoch(s) of {len(w['y'])} points, batch {w['batch']}{conv}; "
              f"ms of {clock_name} per run per epoch (x S = 1 in this run)")
        header = "| method | " + " | ".join(f"S = {s}" for s in args.stacks) + " |"
        print(header + "\n|" + "---|" * (len(args.stacks) + 1))
        for method, options in variants:
            time_stack(method, options, w, 1, device, clock)  # warm-up: allocations, kernels
            per_run = {}
            for s in args.stacks:
                per_run[s] = time_stack(method, options, w, s, device, clock) / s / w["epochs"] * 1e3
            base = per_run[args.stacks[0]]
            label = method + "".join(f" {k}={v}" for k, v in options.items())
            cells = [f"{per_run[s]:.1f} ({per_run[s] / base:.2f}x)" for s in args.stacks]
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
        if args.starts > 1 and wname == "simulation":
            restarts_table(variants, w, args, device, clock, clock_name)


def restarts_table(variants, w: dict, args, device, clock, clock_name: str) -> None:
    """S = (stack) x ``--starts`` runs, each run's starts sharing its batches: the time per start
    with shared batches against one gather and matmul per start, in one run."""
    k = args.starts
    print(f"\nsimulation, runs of {k} starts (restarts): ms of {clock_name} per start per epoch, shared batches "
          f"(one gather and first-layer matmul per run) against per start (ratio shared / per start)")
    print("| method | " + " | ".join(f"S = {s} x {k}" for s in args.stacks) + " |\n|" + "---|" * (len(args.stacks) + 1))
    for method, options in variants:
        cells = []
        for s in args.stacks:
            times = {}
            for share in (False, True):
                engine.SHARE_INPUTS = share
                times[share] = time_stack(method, options, w, s * k, device, clock, starts=k) / (s * k) / w["epochs"] * 1e3
            engine.SHARE_INPUTS = True
            cells.append(f"{times[True]:.2f} vs {times[False]:.2f} ({times[True] / times[False]:.2f}x)")
        label = method + "".join(f" {key}={v}" for key, v in options.items())
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
