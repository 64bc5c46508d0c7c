"""A stacked training step captured once as a CUDA graph and replayed, against the same step
run eagerly: speed, and whether replay reproduces the eager numbers with per-run generators.

    python3 benchmarks/graph_replay.py [--stacks 1 3 30] [--steps 200] [--only l0 ...] [--out rows.json]

For LeNet-300-100 (784-300-100-10) at batch 128 on random MNIST-shaped data held on the GPU, one
step is what the core's training loop does per minibatch: gather the minibatch by a device index
into a fixed buffer, forward with each run's noise drawn from its own ``torch.Generator``
(``slabbench.layers.stacked.run_generators``), sum of the runs' mean NLL + penalty / N, backward,
fused Adam (``capturable=True``), then the method's ``after_step`` hook, run eagerly on the
stacked model after the step or the replay.  The graph registers every run's generator
(``CUDAGraph.register_generator_state``), so each replay advances each run's own stream.

Two stacks are built identically; one trains eagerly, the other captures the step once and
replays it.  After the same steps (an ``after_epoch`` hook half-way, which updates state in place,
e.g. spike_slab's closed-form phi) their parameters are compared: ``max |diff|`` 0 means replay
reproduces eager training bit for bit, so records need not change when graphs are switched on.
Needs CUDA; prints a markdown table, and writes the rows as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from slabbench.api import DatasetSpec, TrainContext, make_params
from slabbench.layers.stacked import run_generators
from slabbench.models import build_model
from slabbench.registry import method_class
from slabbench.stack import stack_modules

VARIANTS = [
    ("dense", {}),
    ("magnitude", {}),
    ("spike_slab", {"phi_update": "closed_form"}),
    ("spike_slab", {"phi_update": "closed_form", "phi_every": 1}),
    ("spike_slab", {"phi_update": "lrt"}),
    ("spike_slab", {"phi_update": "gumbel"}),
    ("sparse_vd", {}),
    ("l0", {}),
]
N, BATCH, LR = 6000, 128, 1e-3


def build(name, options, stack, device):
    """A stacked LeNet-300-100 of ``stack`` runs (run s initialised from seed s), its method,
    a capturable fused Adam over the method's own parameter groups, and per-run generators."""
    spec = DatasetSpec("bench", "classification", (1, 28, 28), 10, {"train": N})
    cls = method_class(name)
    params = make_params(cls.Params, options, name)
    ctx = TrainContext("classification", N, 10, N // BATCH, LR, device, spec)
    models, methods = [], []
    for s in range(stack):
        torch.manual_seed(s)
        method = cls(params, ctx)
        models.append(method.build(build_model("mlp", spec, {"hidden": [300, 100]})))
        methods.append(method)
    model = stack_modules(models).to(device).train()
    lead = methods[0]  # as the core: a stack's hooks run on its first run's instance
    groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": g.get("weight_decay", 0.0)}
              for g in lead.optimizer(model, LR).param_groups]
    opt = torch.optim.Adam(groups, lr=LR, fused=True, capturable=True)
    gens = [torch.Generator(device=device).manual_seed(1000 + s) for s in range(stack)]
    return model, lead, opt, gens


def make_step(model, lead, opt, gens, x_all, y_all, idx, xb):
    stack, batch = idx.shape

    def step():
        torch.index_select(x_all, 0, idx.view(-1), out=xb.view(stack * batch, *x_all.shape[1:]))
        yb = y_all.index_select(0, idx.view(-1))
        with run_generators(gens):
            out = model(xb)
        nll = torch.nn.functional.cross_entropy(out.reshape(stack * batch, -1), yb, reduction="none").view(stack, batch).mean(1)
        loss = nll.sum()
        penalty = lead.penalty(model)
        if penalty is not None:
            loss = loss + penalty / N
        loss.backward()
        opt.step()
    return step


def probe(name, options, stack, steps, device):
    torch.manual_seed(123)
    x_all = torch.rand(N, 1, 28, 28, device=device)
    y_all = torch.randint(0, 10, (N,), device=device)
    perms = torch.randint(0, N, (steps + 40, stack, BATCH), device=device)
    row = {"method": name, "options": options, "S": stack}
    twins = []
    for _ in range(2):
        model, lead, opt, gens = build(name, options, stack, device)
        idx = torch.zeros(stack, BATCH, dtype=torch.long, device=device)
        xb = torch.empty(stack, BATCH, 1, 28, 28, device=device)
        twins.append((model, lead, opt, gens, idx, make_step(model, lead, opt, gens, x_all, y_all, idx, xb)))

    def eager(t, i, hooks=True):
        model, lead, opt, _, idx, step = t
        idx.copy_(perms[i])
        opt.zero_grad(set_to_none=True)
        step()
        if hooks:
            lead.after_step(model, i, 0)

    warm = 3
    (ea, eb) = twins
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream (fused Adam's state, cuBLAS)
        for i in range(warm):
            eager(ea, i)
            eager(eb, i)
    torch.cuda.current_stream().wait_stream(side)
    model_b, lead_b, opt_b, gens_b, idx_b, step_b = eb
    graph = torch.cuda.CUDAGraph()
    try:
        for g in gens_b:
            graph.register_generator_state(g)
        opt_b.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            step_b()
    except Exception as err:  # report and go on: the probe's answer is whether this works
        row["capture_error"] = f"{type(err).__name__}: {err}"[:300]
        return row

    # equality: the same 12 steps, eager against replay, an in-place after_epoch hook half-way
    k = 12
    for i in range(warm, warm + k):
        eager(ea, i)
        idx_b.copy_(perms[i])
        graph.replay()
        lead_b.after_step(model_b, i, 0)
        if i == warm + k // 2:
            ea[1].after_epoch(ea[0], 10 ** 6)
            lead_b.after_epoch(model_b, 10 ** 6)
    torch.cuda.synchronize()
    diffs = [float((p - q).detach().abs().max()) for p, q in zip(ea[0].parameters(), model_b.parameters())]
    row["max_abs_diff"] = max(diffs)
    row["params_finite"] = all(bool(torch.isfinite(p).all()) for p in model_b.parameters())

    def timed(fn, n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n * 1e3

    def replay(i, hooks=True):
        idx_b.copy_(perms[i % perms.shape[0]])
        graph.replay()
        if hooks:
            lead_b.after_step(model_b, i, 0)

    base = warm + k
    row["eager_ms"] = timed(lambda i: eager(ea, base + i % 20), steps)
    row["graph_ms"] = timed(lambda i: replay(base + i % 20), steps)
    row["graph_no_hooks_ms"] = timed(lambda i: replay(base + i % 20, hooks=False), steps)
    row["speedup"] = row["eager_ms"] / row["graph_ms"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, nargs="+", default=[1, 3, 30])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", nargs="+", default=None, help="methods to probe (default: every variant)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("graph_replay.py needs a CUDA device (torch sees none)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    rows = []
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, LeNet-300-100, batch {BATCH}, {args.steps} steps")
    print("| method | S | eager ms/step | graph ms/step | graph, no hooks | speed-up | max abs diff eager vs replay |")
    print("|---|---|---|---|---|---|---|")
    for name, options in VARIANTS:
        if args.only and name not in args.only:
            continue
        for stack in args.stacks:
            row = probe(name, options, stack, args.steps, device)
            rows.append(row)
            label = name + "".join(f" {k}={v}" for k, v in options.items())
            if "capture_error" in row:
                print(f"| {label} | {stack} | capture failed: {row['capture_error']} |||||")
            else:
                print(f"| {label} | {stack} | {row['eager_ms']:.3f} | {row['graph_ms']:.3f} | {row['graph_no_hooks_ms']:.3f} | "
                      f"{row['speedup']:.1f}x | {row['max_abs_diff']:.3g}{'' if row['params_finite'] else ' (non-finite)'} |",
                      flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
