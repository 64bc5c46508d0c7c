"""Training step time of each method relative to `dense`, measured in one run.

    .venv/bin/python benchmarks/step_time.py [--device cpu|cuda|auto] [--batch 128 1024] [--steps 200]

For LeNet-300-100 (784-300-100-10) on random MNIST-shaped inputs held on the device, one
"step" is what the core's training loop does per minibatch: forward, mean NLL + penalty/N,
backward, optimiser step and the method's after_step hook.  Each variant is timed over
``--steps`` steps after a warm-up, repeated ``--repeats`` times (the median is kept), and
printed as milliseconds per step and as a ratio to dense at the same batch size.
Ratios, not absolute times, are the result: they transfer between machines of one kind.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from slabbench import metrics as M
from slabbench.api import DatasetSpec, TrainContext, make_params
from slabbench.models import build_model
from slabbench.registry import available, method_class
from slabbench.train import resolve_device, set_threads

VARIANTS = [
    ("dense", {}),
    ("magnitude", {}),
    ("spike_slab", {"phi_update": "closed_form"}),
    ("spike_slab", {"phi_update": "lrt"}),
    ("spike_slab", {"phi_update": "gumbel"}),
    ("sparse_vd", {}),
    ("l0", {}),
]
N_TRAIN = 60000


def time_variant(name, options, batch, steps, repeats, device) -> float:
    spec = DatasetSpec(name="bench", task="classification", input_shape=(1, 28, 28), outputs=10, sizes={"train": N_TRAIN})
    cls = method_class(name)
    params = make_params(cls.Params, options, name)
    ctx = TrainContext("classification", N_TRAIN, 10, N_TRAIN // batch, 1e-3, device, spec, target=0.9)
    torch.manual_seed(0)
    method = cls(params, ctx)
    model = method.build(build_model("mlp", spec, {"hidden": [300, 100]})).to(device).train()
    opt = method.optimizer(model, 1e-3)
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step(i):
        loss = M.nll_loss(model(x), y, "classification")
        pen = method.penalty(model)
        if pen is not None:
            loss = loss + pen / N_TRAIN
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(model, i, 0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(max(10, steps // 10)):
        step(i)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        sync()
        times.append((time.perf_counter() - t0) / steps * 1e3)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    have = set(available("method"))
    variants = [(n, o) for n, o in VARIANTS if n in have]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"LeNet-300-100 training step, {name}, torch {torch.__version__}, median of {args.repeats} x {args.steps} steps\n")
    print(f"| method | options | " + " | ".join(f"ms/step @{b} | × dense @{b}" for b in args.batch) + " |")
    print("|---|---|" + "---|---|" * len(args.batch))
    results = {}
    for batch in args.batch:
        for n, o in variants:
            results[(n, str(o), batch)] = time_variant(n, o, batch, args.steps, args.repeats, device)
    for n, o in variants:
        cells = []
        for batch in args.batch:
            ms = results[(n, str(o), batch)]
            cells.append(f"{ms:.3f} | {ms / results[('dense', '{}', batch)]:.2f}")
        opts = ", ".join(f"{k}={v}" for k, v in o.items()) or "defaults"
        print(f"| {n} | {opts} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
