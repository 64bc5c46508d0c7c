"""CPU time per training epoch of a per-target method's train job (e.g. ``spike_slab_target``).

    .venv/bin/python benchmarks/per_target.py [config/paper.yaml] [--experiment simulation]
        [--method spike_slab_target] [--seeds 3] [--epochs 5 25] [--threads 1]

The job (the experiment's first ``--seeds`` seeds of ``--method``, one process, through
``slabbench.train.run_stack``, as Snakemake runs it) is run twice without fine-tuning, at
``E1`` and ``E2`` training epochs; the difference of the two runs' CPU time over E2 − E1 is
the cost of one training epoch of the whole job (every seed and target), without data
loading, building and evaluation.  CPU time of this process, which other processes on a
shared machine do not inflate; each record's ``stack_runs`` tells how the runs were stacked.
Run it on two commits to compare them.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

from slabbench.config import load_yaml, run_specs, validate
from slabbench.train import run_stack


def cpu_seconds(specs: list[dict], epochs: int, threads: int) -> tuple[float, list[int]]:
    short = [dict(copy.deepcopy(s), epochs=epochs, finetune_epochs=0, device="cpu") for s in specs]
    t0 = time.process_time()
    results = run_stack(short, threads=threads)
    return time.process_time() - t0, sorted({r["stack_runs"] for records, _ in results for r in records})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, nargs="?", default=Path("config/paper.yaml"))
    ap.add_argument("--experiment", default="simulation")
    ap.add_argument("--method", default="spike_slab_target")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, nargs=2, default=[5, 25], metavar=("E1", "E2"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    specs = [s for s in run_specs(validate(load_yaml(args.config)))
             if s["experiment"] == args.experiment and s["method"] == args.method][:args.seeds]
    if not specs:
        raise SystemExit(f"no runs of method {args.method!r} in experiment {args.experiment!r} of {args.config}")
    e1, e2 = args.epochs
    (t1, _), (t2, stacks) = (cpu_seconds(specs, e, args.threads) for e in (e1, e2))
    targets = len(specs[0]["sparsities"])
    print(f"{args.experiment}/{args.method}: {len(specs)} seeds x {targets} targets, stacks of {stacks} runs: "
          f"{e1} epochs {t1:.2f} s, {e2} epochs {t2:.2f} s of CPU; {1000 * (t2 - t1) / (e2 - e1):.1f} ms per epoch")


if __name__ == "__main__":
    main()
