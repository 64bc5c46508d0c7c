"""A stacked training step captured once as a CUDA graph and replayed, against the same step
run eagerly: speed, and whether replay reproduces the eager numbers with per-run generators.

    python3 benchmarks/graph_replay.py [--stacks 1 3 30] [--steps 200] [--only l0 ...] [--out rows.json]
        [--compile [--backend inductor]] [--noise-rng generators|counter]

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

``--compile``: two more stacks of each case run the same step with its gather, forward, loss and
penalty compiled by ``torch.compile(fullgraph=True, backend=--backend)`` (default Inductor, which
fuses the elementwise work of a layer into a few kernels; the backward is compiled with it), one
eagerly and one captured and replayed.  The table then adds the first compiled step's time (the
compilation), ms per step compiled (eager and replayed), replayed compiled against replayed as
written, and how far compiled training moves the parameters from training as written after the
same steps (float rounding of the fused kernels: compiled steps would be new records).  The
per-run noise stays torch's generators (an opaque operator in the traced step), so compiling
changes rounding only.  What this answers: how many of a step's milliseconds under graphs are
the number of kernels, which the training loop does not compile (yet).

``--noise-rng counter``: the runs' noise from counter-based streams
(:class:`slabbench.layers.stacked.CounterNoise`, ``noise_rng: counter``) instead of per-run
generators: a draw is a few tensor operations for the whole stack (no kernel per run), which a
compiled step fuses into the kernels that use the noise; positions advanced after each backward,
as the training loop does.  Other random streams (the parameters cannot be compared with a
``generators`` run), the same comparisons within the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from slabbench.api import DatasetSpec, TrainContext, make_params
from slabbench.engine import with_compile_settings
from slabbench.layers.stacked import run_generators, run_noise
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


def build(name, options, stack, device, noise_rng="generators"):
    """A stacked LeNet-300-100 of ``stack`` runs (run s initialised from seed s), its method,
    a capturable fused Adam over the method's own parameter groups, and per-run generators (or
    counter-based noise)."""
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
    opt = torch.optim.Adam(groups, lr=LR, fused=True, capturable=device.type == "cuda")
    return model, lead, opt, run_noise(noise_rng, [1000 + s for s in range(stack)], device)


def make_step(model, lead, opt, gens, x_all, y_all, idx, xb, backend=None):
    """The step as a function of nothing (it reads ``idx``, fills ``xb``); with ``backend`` its
    gather, forward, loss and penalty compiled (``fullgraph``: a graph break is an error)."""
    stack, batch = idx.shape

    def loss_fn():
        torch.index_select(x_all, 0, idx.view(-1), out=xb.view(stack * batch, *x_all.shape[1:]))
        yb = y_all.index_select(0, idx.view(-1))
        with run_generators(gens):
            out = model(xb)
        nll = torch.nn.functional.cross_entropy(out.reshape(stack * batch, -1), yb, reduction="none").view(stack, batch).mean(1)
        loss = nll.sum()
        penalty = lead.penalty(model)
        if penalty is not None:
            loss = loss + penalty / N
        return loss

    # compiled as the training loop compiles (compile: true), with its settings
    forward = loss_fn if backend is None else with_compile_settings(
        torch.compile(loss_fn, fullgraph=True, dynamic=False, backend=backend))

    def step():
        gens.begin_step()
        forward().backward()
        gens.advance()  # (counter-based noise: after the backward, as the training loop does)
        opt.step()
    return step


class _CallGraph:
    """On the CPU (a dry run of this script's plumbing, tests/test_benchmarks.py): a "graph"
    whose replay calls the step (``fn``)."""

    fn = None

    def register_generator_state(self, generator):
        pass

    def replay(self):
        self.fn()


def probe(name, options, stack, steps, device, backend=None, noise_rng="generators"):
    """One case: identical stacks trained eagerly and by replay (and, with ``backend``, both
    again with the step compiled); their parameters compared after the same steps, then timed."""
    torch.manual_seed(123)
    if backend:
        torch._dynamo.reset()  # each case compiles afresh (the recompile limit counts across cases)
    x_all = torch.rand(N, 1, 28, 28, device=device)
    y_all = torch.randint(0, 10, (N,), device=device)
    perms = torch.randint(0, N, (steps + 40, stack, BATCH), device=device)
    row = {"method": name, "options": options, "S": stack, "noise_rng": noise_rng}
    kinds = [(False, None), (True, None)] + ([(False, backend), (True, backend)] if backend else [])
    twins = {}
    for replayed, compiled in kinds:
        model, lead, opt, gens = build(name, options, stack, device, noise_rng)
        idx = torch.zeros(stack, BATCH, dtype=torch.long, device=device)
        xb = torch.empty(stack, BATCH, 1, 28, 28, device=device)
        twins[replayed, compiled] = dict(model=model, lead=lead, opt=opt, gens=gens, idx=idx,
                                         step=make_step(model, lead, opt, gens, x_all, y_all, idx, xb, compiled))

    def eager(t, i, hooks=True):
        t["idx"].copy_(perms[i])
        t["opt"].zero_grad(set_to_none=True)
        t["step"]()
        if hooks:
            t["lead"].after_step(t["model"], i, 0)

    warm, cuda = 3, device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    side = torch.cuda.Stream() if cuda else None
    if cuda:
        side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side) if cuda else contextlib.nullcontext():  # warm-up off the capture stream
        for key, t in list(twins.items()):
            t0 = time.perf_counter()
            try:
                eager(t, 0)
            except Exception as err:  # a compiled step that does not compile: say so, time the rest
                if key[1] is None:
                    raise
                row["compile_error"] = f"{type(err).__name__}: {err}"[:300]
                del twins[key]
                continue
            sync()
            if key == (False, backend) and backend:
                row["compile_s"] = time.perf_counter() - t0  # the first call compiles
            for i in range(1, warm):
                eager(t, i)
    if cuda:
        torch.cuda.current_stream().wait_stream(side)
    for (replayed, compiled), t in twins.items():
        if not replayed:
            continue
        graph = t["graph"] = torch.cuda.CUDAGraph() if cuda else _CallGraph()
        try:
            for g in t["gens"].generators:
                graph.register_generator_state(g)
            t["opt"].zero_grad(set_to_none=True)
            if cuda:
                with torch.cuda.graph(graph):
                    t["step"]()
            else:  # a replay writes gradients of its own, as the captured step (captured with none) does
                graph.fn = lambda t=t: (t["opt"].zero_grad(set_to_none=True), t["step"]())
        except Exception as err:  # report and go on: the probe's answer is whether this works
            row["capture_error" if compiled is None else "compiled_capture_error"] = f"{type(err).__name__}: {err}"[:300]
            if compiled is None:
                return row
            del twins[True, compiled]
            break

    def replay(t, i, hooks=True):
        t["idx"].copy_(perms[i % perms.shape[0]])
        t["graph"].replay()
        if hooks:
            t["lead"].after_step(t["model"], i, 0)

    # equality: the same 12 steps, eager against replay, an in-place after_epoch hook half-way
    k = 12
    for i in range(warm, warm + k):
        for (replayed, _), t in twins.items():
            (replay if replayed else eager)(t, i)
            if i == warm + k // 2:
                t["lead"].after_epoch(t["model"], 10 ** 6)
    sync()

    def diff(a, b):
        return max(float((p - q).detach().abs().max()) for p, q in zip(twins[a]["model"].parameters(),
                                                                        twins[b]["model"].parameters()))
    row["max_abs_diff"] = diff((False, None), (True, None))
    row["params_finite"] = all(bool(torch.isfinite(p).all()) for p in twins[True, None]["model"].parameters())
    if backend and (True, backend) in twins:
        row["compiled_max_abs_diff"] = diff((False, backend), (True, backend))
        row["compiled_vs_written"] = diff((False, None), (False, backend))

    def timed(fn, n):
        sync()
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        sync()
        return (time.perf_counter() - t0) / n * 1e3

    base = warm + k
    row["eager_ms"] = timed(lambda i: eager(twins[False, None], base + i % 20), steps)
    row["graph_ms"] = timed(lambda i: replay(twins[True, None], base + i % 20), steps)
    row["graph_no_hooks_ms"] = timed(lambda i: replay(twins[True, None], base + i % 20, hooks=False), steps)
    row["speedup"] = row["eager_ms"] / row["graph_ms"]
    if backend and (False, backend) in twins:
        row["compiled_eager_ms"] = timed(lambda i: eager(twins[False, backend], base + i % 20), steps)
        if (True, backend) in twins:
            row["compiled_graph_ms"] = timed(lambda i: replay(twins[True, backend], base + i % 20), steps)
            row["compiled_speedup"] = row["graph_ms"] / row["compiled_graph_ms"]
    return row


def _cell(row, key, fmt="{:.3f}"):
    return fmt.format(row[key]) if key in row else "–"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, nargs="+", default=[1, 3, 30])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", nargs="+", default=None, help="methods to probe (default: every variant)")
    parser.add_argument("--compile", action="store_true", help="also time the step compiled (see above)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend for --compile (default inductor)")
    parser.add_argument("--noise-rng", choices=["generators", "counter"], default="generators",
                        help="the runs' noise: per-run generators (default) or counter-based streams")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("graph_replay.py needs a CUDA device (torch sees none)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    backend = args.backend if args.compile else None
    rows = []
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, LeNet-300-100, batch {BATCH}, {args.steps} steps"
          + (f"; compiled with backend {backend!r}" if backend else "")
          + ("; noise from counter-based streams" if args.noise_rng == "counter" else "; noise from per-run generators"))
    head = "| method | S | eager ms/step | graph ms/step | graph, no hooks | speed-up | max abs diff eager vs replay |"
    if backend:
        head += (" compile s | compiled eager ms | compiled graph ms | graph / compiled graph |"
                 " max abs diff, compiled eager vs replay | max abs diff, compiled vs as written |")
    print(head)
    print("|---" * head.count(" |") + "|")
    for name, options in VARIANTS:
        if args.only and name not in args.only:
            continue
        for stack in args.stacks:
            row = probe(name, options, stack, args.steps, device, backend, args.noise_rng)
            rows.append(row)
            label = name + "".join(f" {k}={v}" for k, v in options.items())
            if "capture_error" in row:
                print(f"| {label} | {stack} | capture failed: {row['capture_error']} |||||")
                continue
            line = (f"| {label} | {stack} | {row['eager_ms']:.3f} | {row['graph_ms']:.3f} | {row['graph_no_hooks_ms']:.3f} | "
                    f"{row['speedup']:.1f}x | {row['max_abs_diff']:.3g}{'' if row['params_finite'] else ' (non-finite)'} |")
            if backend:
                failed = row.get("compile_error") or row.get("compiled_capture_error")
                line += (f" {_cell(row, 'compile_s', '{:.1f}')} | {_cell(row, 'compiled_eager_ms')} | "
                         f"{_cell(row, 'compiled_graph_ms')} | {_cell(row, 'compiled_speedup', '{:.2f}x')} | "
                         f"{_cell(row, 'compiled_max_abs_diff', '{:.3g}')} | {_cell(row, 'compiled_vs_written', '{:.3g}')} |")
                if failed:
                    line += f" {failed}"
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
