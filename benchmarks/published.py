"""Our numbers beside the published ones (docs/published.md), on full MNIST.

    .venv/bin/python benchmarks/published.py --experiment published-lenet300 [--epochs N] [--device cuda]
    .venv/bin/python benchmarks/published.py --runs results/summary/runs.csv   # table only

Runs the experiment of config/published.yaml (the papers' protocols; ``--epochs`` shortens
it, and the output says so) for every method, or reads an existing run table, and prints
test error and weights kept beside the published values.  The config's options reproduce
the official scripts' schedules; our protocol differs where docs/published.md
says so (final epoch, never the best test epoch; 55,000 training images, the data set's own
scaling and the architecture's initialisation).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pandas as pd

from slabbench.aggregate import flatten
from slabbench.config import load_yaml, run_specs, validate
from slabbench.published import published_comparison
from slabbench.train import run

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, help="read this runs.csv instead of training")
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "published.yaml")
    ap.add_argument("--experiment", default="published-lenet300")
    ap.add_argument("--epochs", type=int, help="shorten training (the papers: 200)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.runs:
        runs = pd.read_csv(args.runs)
    else:
        cfg = copy.deepcopy(load_yaml(args.config))
        if args.device:  # on the experiment: an experiment's own device wins over the global one
            cfg["experiments"][args.experiment]["device"] = args.device
        if args.epochs:
            cfg["experiments"][args.experiment]["epochs"] = args.epochs
        cfg["experiments"] = {args.experiment: cfg["experiments"][args.experiment]}
        rows = []
        for spec in run_specs(validate(cfg)):
            records, _ = run(spec, threads=args.threads)
            for rec in records:
                rows.append(flatten(rec))
        runs = pd.DataFrame(rows)
        print(f"{args.experiment}: {cfg['experiments'][args.experiment]['epochs']} epochs "
              f"({'shortened; the papers train 200' if args.epochs else 'the papers protocol'}), device {runs['device'].iloc[0]}\n")
    print(published_comparison(runs, None))


if __name__ == "__main__":
    main()
