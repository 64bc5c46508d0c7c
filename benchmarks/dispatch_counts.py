"""Operators one stacked training step dispatches, per method and stack size S, on the CPU.

The engine's step (:class:`slabbench.engine.StackedStep`: gather, forward with every run's own
noise, loss and penalty, backward, the optimizer's step) is run on S runs of an mlp stacked
into one model, under a :class:`torch.utils._python_dispatch.TorchDispatchMode` that counts every
ATen operator it calls (views included: on a GPU most of them are a kernel launch or a host
round trip of their own).  A step whose count grows with S costs more host time per step at
larger stacks; the per-run noise generators make every noise draw one operator per run (one
``normal_`` / ``uniform_`` per run and draw), so a stochastic method's count is a + b·S with b
the number of draws per step, and nothing else grows.  The table also names any operator that
makes the host wait for the device (``.item()``, ``nonzero``, ...): there must be none.
With ``--noise-rng counter`` (:class:`slabbench.layers.stacked.CounterNoise`) a draw is the same
few operators for the whole stack, so no count grows with S (b = 0).

    python benchmarks/dispatch_counts.py                  # every built-in method, S = 1, 2, 4, 8
    python benchmarks/dispatch_counts.py --stacks 1 3 --methods spike_slab l0
    python benchmarks/dispatch_counts.py --noise-rng counter

``tests/test_step.py`` asserts the same counts' shape (a + b·S, b = draws per step) and no
synchronisation for every built-in method.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slabbench.api import DatasetSpec, TrainContext, make_params
from slabbench.engine import StackedStep, _batches
from slabbench.layers.stacked import run_noise
from slabbench.models import build_model
from slabbench.registry import method_class
from slabbench.stack import stack_modules

#: every built-in method and the options that change its step
METHODS = [("dense", {}), ("magnitude", {}), ("spike_slab", {}), ("spike_slab", {"phi_update": "lrt"}),
           ("spike_slab", {"phi_update": "gumbel"}), ("spike_slab", {"granularity": "node"}),
           ("spike_slab", {"prior_from_target": True}), ("sparse_vd", {}), ("l0", {}), ("l0", {"gates": "weight"})]
#: operators whose result the host must wait for (a CUDA graph cannot capture them)
SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::equal", "aten::is_nonzero",
           "aten::unique", "aten::_unique2", "aten::item"}
#: operators that fill a run's slice from that run's own generator
NOISE = {"aten::normal_", "aten::uniform_", "aten::bernoulli_", "aten::exponential_"}


class Count(TorchDispatchMode):
    """Counts the ATen operators called inside it (``ops``: name -> calls)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


def stacked_step(name: str, options: dict, runs: int, *, n: int = 64, p: int = 8, hidden=(6, 4), batch: int = 32,
                 target: float = 0.5, noise_rng: str = "generators") -> tuple[StackedStep, torch.Tensor]:
    """A :class:`StackedStep` of ``runs`` runs of ``name`` (regression on random data, an mlp),
    each run its own initialisation and noise generator (``noise_rng="counter"``: its own
    counter-based stream), and a minibatch index for it."""
    spec = DatasetSpec("toy", "regression", (p,), 1, {"train": n})
    cls = method_class(name)
    params = make_params(cls.Params, options, name)
    target = target if cls.trains_per_target(params) else None
    models, methods = [], []
    for s in range(runs):
        torch.manual_seed(s)
        ctx = TrainContext("regression", n, 4, -(-n // batch), 1e-2, torch.device("cpu"), spec, target=target)
        methods.append(cls(params, ctx))
        models.append(methods[-1].build(build_model("mlp", spec, {"hidden": list(hidden)})))
    model = stack_modules(models)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, p, generator=g), torch.randn(n, generator=g)
    x_all, y_all, offsets = _batches([x] * runs, [y] * runs)
    step = StackedStep(model, methods[0], methods[0].optimizer(model, 1e-2), x_all, y_all, n, batch_size=batch,
                       task="regression", noise_sd=1.0,
                       noise_gens=run_noise(noise_rng, [1000 + s for s in range(runs)]),
                       group_of=list(range(runs)))
    idx = torch.stack([torch.randperm(n, generator=g)[:batch] for _ in range(runs)]) + offsets[:, None]
    model.train()
    return step, idx


def count_step(name: str, options: dict, runs: int, **kw) -> Counter:
    """Operators of one step (penalty on, after one warm-up step: Adam's state exists)."""
    step, idx = stacked_step(name, options, runs, **kw)
    step(idx, 1.0, True, False)
    with Count() as counter:
        step(idx, 1.0, True, False)
    return counter.ops


def label(name: str, options: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in options.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stacks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--methods", nargs="+", default=None, help="method names (default: every built-in variant)")
    ap.add_argument("--noise-rng", choices=["generators", "counter"], default="generators",
                    help="the runs' noise: per-run generators (default) or counter-based")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = [(m, o) for m, o in METHODS if args.methods is None or m in args.methods]
    print("operators dispatched by one stacked training step (mlp 8-6-4-1, batch 32, penalty on), by stack size S,")
    print(f"noise from {'counter-based streams' if args.noise_rng == 'counter' else 'per-run generators'};")
    print("a + b·S: b = noise draws per step (one operator per run and draw of a generator); syncs: operators that "
          "wait for the device")
    print("| method | " + " | ".join(f"S = {s}" for s in args.stacks) + " | a + b·S | noise draws / step | syncs |")
    print("|---" * (len(args.stacks) + 4) + "|")
    for name, options in cases:
        counts = [count_step(name, options, s, noise_rng=args.noise_rng) for s in args.stacks]
        totals = [sum(c.values()) for c in counts]
        draws = sum(counts[0][op] for op in NOISE) // args.stacks[0]
        a = totals[0] - draws * args.stacks[0]
        fits = all(t == a + draws * s for t, s in zip(totals, args.stacks))
        syncs = sorted(set().union(*counts) & SYNCING)
        print(f"| {label(name, options)} | " + " | ".join(map(str, totals))
              + f" | {a} + {draws}·S{'' if fits else ' (does not fit)'} | {draws} | {', '.join(syncs) or 'none'} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
