"""Our numbers beside the published ones (SCIENCE.md §4), on full MNIST.

    .venv/bin/python benchmarks/published.py --experiment mnist-lenet300 [--epochs N] [--device cuda]
    .venv/bin/python benchmarks/published.py --runs results/summary/runs.csv   # table only

Runs the experiment of config/published.yaml (the papers' protocols; ``--epochs`` shortens
it, and the output says so) for every method, or reads an existing run table, and prints
test error and weights kept beside the published values.  Our protocol differs where
README.md says so (final epoch, constant-lr Adam, selection on a validation split).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pandas as pd

from slabbench.aggregate import flatten
from slabbench.config import load_yaml, run_specs, validate
from slabbench.train import run

ROOT = Path(__file__).resolve().parents[1]
#: (model, method, selection, published error %, published weights kept, source)
PUBLISHED = [
    ("mlp", "dense", "natural", 1.64, "100%", "Han et al. 2015"),
    ("mlp", "magnitude", "target", 1.59, "8% (12×)", "Han et al. 2015"),
    ("mlp", "sparse_vd", "natural", 1.92, "1.5% (68×)", "Molchanov et al. 2017"),
    ("mlp", "l0", "natural", 1.6, "266-88-33 neurons", "Louizos et al. 2018"),
    ("lenet5", "dense", "natural", 0.80, "100%", "Han et al. 2015"),
    ("lenet5", "magnitude", "target", 0.77, "8% (12×)", "Han et al. 2015"),
    ("lenet5", "sparse_vd", "natural", 0.75, "0.36% (280×)", "Molchanov et al. 2017"),
    ("lenet5", "l0", "natural", 0.9, "20-25-45-462 neurons", "Louizos et al. 2018"),
]


def compare(runs: pd.DataFrame) -> str:
    lines = ["| model | method | ours: error % | ours: weights kept | ours: nodes kept | epochs | published error % | published kept | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, method, selection, err, kept, source in PUBLISHED:
        g = runs[(runs["model"] == model) & (runs["method"] == method) & (runs["selection"] == selection)]
        if g.empty:
            continue
        r = g.iloc[0]
        lines.append(f"| {model} | {method} | {100 * (1 - r['test_accuracy']):.2f} | {100 * (1 - r['sparsity']):.2f}% "
                     f"({r['compression']:.1f}×) | {r['nodes_kept']} | {r.get('epochs', '')} | {err} | {kept} | {source} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, help="read this runs.csv instead of training")
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "published.yaml")
    ap.add_argument("--experiment", default="mnist-lenet300")
    ap.add_argument("--epochs", type=int, help="shorten training (the papers: 200)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.runs:
        runs = pd.read_csv(args.runs)
    else:
        cfg = copy.deepcopy(load_yaml(args.config))
        if args.device:
            cfg["device"] = args.device
        if args.epochs:
            cfg["experiments"][args.experiment]["epochs"] = args.epochs
        cfg["experiments"] = {args.experiment: cfg["experiments"][args.experiment]}
        rows = []
        for spec in run_specs(validate(cfg)):
            records, _ = run(spec, threads=args.threads)
            for rec in records:
                row = flatten(rec)
                row["epochs"] = spec["epochs"]
                rows.append(row)
        runs = pd.DataFrame(rows)
        print(f"{args.experiment}: {cfg['experiments'][args.experiment]['epochs']} epochs "
              f"({'shortened; the papers train 200' if args.epochs else 'the papers protocol'}), device {runs['device'].iloc[0]}\n")
    print(compare(runs))


if __name__ == "__main__":
    main()
