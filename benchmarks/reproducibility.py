"""Train the same run twice in one process and print how far its records differ.

    .venv/bin/python benchmarks/reproducibility.py --config config/paper-gpu.yaml \
        --experiment mnist-lenet300 --method spike_slab --epochs 1 [--device cuda]

Same config and seed should give identical numbers on the same machine; on a GPU, kernels
that use atomics (and cuDNN's algorithm choice) may make the last digits differ.  Prints, per
record and metric, both values and their absolute difference; wall-time columns are skipped.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from slabbench.aggregate import METRICS, flatten
from slabbench.config import load_yaml, run_specs, validate
from slabbench.train import run

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, help="shorten training")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    specs = [s for s in run_specs(validate(load_yaml(args.config)))
             if (s["experiment"], s["method"], s["seed"]) == (args.experiment, args.method, args.seed)]
    if not specs:
        raise SystemExit(f"no run {args.experiment}/{args.method}/seed={args.seed} in {args.config}")
    spec = dict(specs[0], **({"epochs": args.epochs} if args.epochs else {}), **({"device": args.device} if args.device else {}))
    first, second = ([flatten(r) for r in run(copy.deepcopy(spec))[0]] for _ in range(2))
    worst = 0.0
    print(f"{args.experiment}/{args.method}/seed={args.seed}, {spec['epochs']} epochs, device {first[0]['device']}")
    print("| selection | target | metric | run 1 | run 2 | abs. difference |\n|---|---|---|---|---|---|")
    for a, b in zip(first, second):
        for m in METRICS:
            if m == "train_seconds" or a.get(m) is None:
                continue
            diff = abs(float(a[m]) - float(b[m]))
            worst = max(worst, diff)
            print(f"| {a['selection']} | {a['target_sparsity']} | {m} | {a[m]:.6g} | {b[m]:.6g} | {diff:.3g} |")
    print(f"\nlargest absolute difference: {worst:.3g}")
    return worst


if __name__ == "__main__":
    main()
