"""What the CUDA-graph guard costs a step: :meth:`slabbench.graphs.StepGraphs.check`, run
after a hook between replays, per method, on the CPU (it is host work on any device).

The step of ``S`` stacked LeNet-300-100 runs (784-300-100-1, batch 100; the model, optimizer
state and method instance of :func:`dispatch_counts.stacked_step`) is "captured" by a stand-in,
then ``check()`` is timed: the best of ``--repeat`` rounds of ``--number`` calls.  With
``--against FILE`` (another version of ``src/slabbench/graphs.py``, e.g. ``git show
REV:src/slabbench/graphs.py > old.py``) both are timed in turn in the same process and the
ratio is printed.

    python benchmarks/graph_guard.py
    python benchmarks/graph_guard.py --against old.py --runs 3
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import timeit
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dispatch_counts as DC  # noqa: E402

from slabbench import graphs as current  # noqa: E402

METHODS = ["dense", "magnitude", "spike_slab", "sparse_vd", "l0"]


class _Captures:
    """Captures by keeping nothing: only the guard's entries matter here."""

    def warm(self, fn):
        fn()

    def capture(self, fn, generators):
        return SimpleNamespace(replay=lambda: None)


def check_seconds(module, step, number: int, repeat: int) -> tuple[int, float]:
    """(entries, seconds per ``check()``) of ``module``'s StepGraphs on ``step``'s model."""
    graphs = module.StepGraphs(lambda key: None, state=lambda: module.state_entries(step.model, step.opt, step.method),
                               generators=[], label="guard", backend=_Captures(), warmup=0)
    graphs.run("step")
    return len(graphs.entries), min(timeit.repeat(graphs.check, number=number, repeat=repeat)) / number


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--runs", type=int, default=3, help="stacked runs S (default 3)")
    ap.add_argument("--number", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--against", type=Path, help="another graphs.py to time beside the installed one")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    other = None
    if args.against is not None:
        spec = importlib.util.spec_from_file_location("graphs_against", args.against)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
    print(f"StepGraphs.check, LeNet-300-100, S = {args.runs}, µs per call (best of {args.repeat} x {args.number})\n")
    print("| method | entries | µs |" + (f" µs ({args.against.name}) | ratio |" if other else ""))
    print("|---|---|---|" + ("---|---|" if other else ""))
    for name in args.methods:
        step, idx = DC.stacked_step(name, {}, args.runs, p=784, hidden=(300, 100), batch=100)
        step(idx, 1.0, True, False)  # Adam's state and the layers' caches exist
        entries, now = check_seconds(current, step, args.number, args.repeat)
        row = f"| {name} | {entries} | {now * 1e6:.1f} |"
        if other is not None:
            _, then = check_seconds(other, step, args.number, args.repeat)
            row += f" {then * 1e6:.1f} | {then / now:.1f}x |"
        print(row)


if __name__ == "__main__":
    main()
