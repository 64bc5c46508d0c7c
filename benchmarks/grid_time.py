"""How long a config's grid takes here: every train job timed at two short lengths, extrapolated.

    .venv/bin/python benchmarks/grid_time.py config/paper.yaml [--experiments simulation friedman]
        [--epochs 2 6] [--min-gain 0.5] [--repeat 2] [--device cpu|cuda|auto] [--slots 2] [--eager] [--out rows.csv]

Each train job of the config (one experiment x method x stack of seeds, as Snakemake runs it) is
run through the core (``slabbench.train.run_stack``) shortened: at ``E1`` and ``E2`` training
epochs without fine-tuning, and at ``E1`` with one fine-tuning epoch, each ``--repeat`` times,
keeping the fastest (the first call of a job pays one-time costs).  The second length and the
fine-tuning length grow four times at a time (up to the config's own) until the job takes at
least ``--min-gain`` times its ``E1`` time (and 1 s) longer: a small stacked job's fixed cost
(tens of seconds evaluating every target) otherwise hides a per-epoch cost of a few
milliseconds, and a fixed 2-vs-6-epoch timing read 0 s per epoch for Friedman's spike_slab,
whose job takes 3 minutes.  A job that fine-tunes nothing (dense: it has no scores, so no
sparsity targets) is timed at one fine-tuning epoch only, its cost per fine-tuning epoch is 0
and the table shows "+ 0".  Wall times give,
per job, the cost of one training epoch, of one fine-tuning epoch and the rest (data, building,
evaluation of every target), and so the job at the config's own length:

    T = rest + epochs x per_epoch + finetune_epochs x per_finetune_epoch.

A screened-restarts variant screens at the same fraction of its shortened schedule.  The grid's
wall time is then the longest-first schedule of the jobs on ``--slots`` parallel lanes (CPU
cores, or GPU slots with ``resources: gpu=N``), assuming jobs do not slow each other down (they
do when they share a core or a GPU's launch queue: a lower bound).  Records are not written.
Prints a markdown table per job and the totals.
"""

from __future__ import annotations

import argparse
import copy
import heapq
import logging
import time
from pathlib import Path

import torch

from slabbench.config import load_yaml, stack_jobs, validate
from slabbench.train import resolve_device, run_stack


def shortened(specs: list[dict], epochs: int, finetune: int, device: str, eager: bool = False) -> list[dict]:
    out = []
    for spec in specs:
        s = dict(copy.deepcopy(spec))  # a plain dict: the run spec itself is read-only
        full = int(s["epochs"])
        s.update(epochs=epochs, finetune_epochs=finetune, device=device)
        if eager:  # the config's own choice otherwise (graphs on by default, CUDA only)
            s["graphs"] = False
        if s.get("restarts_screen_epochs") is not None:  # the same fraction of the shortened run
            s["restarts_screen_epochs"] = max(1, min(epochs - 1, round(epochs * s["restarts_screen_epochs"] / full)))
        out.append(s)
    return out


def timed(specs: list[dict], threads: int) -> tuple[float, bool]:
    """(wall seconds of the job, whether any of its records was fine-tuned)."""
    dev = resolve_device(specs[0]["device"])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    results = run_stack(specs, threads=threads)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return seconds, any(rec.get("finetune_epochs", 0) > 0 for records, _ in results for rec in records)


def grown(measure, base: float, start: int, cap: int, min_gain: float) -> tuple[float, int]:
    """Time ``measure(n)`` from ``n = start``, four times longer each try, until it exceeds
    ``base`` by ``min_gain`` seconds or ``n`` reaches ``cap``: a per-epoch cost is then read from
    a difference well above the noise of the job's fixed cost (data, building, evaluating
    every target), which a few epochs of a small stacked job cannot show.  Returns (the last
    time, its n)."""
    n = max(1, min(start, cap))
    while True:
        t = measure(n)
        if t - base >= min_gain or n >= cap:
            return t, n
        n = min(cap, 4 * n)


def makespan(seconds: list[float], slots: int) -> float:
    """Longest-first list scheduling of jobs of ``seconds`` on ``slots`` lanes."""
    lanes = [0.0] * max(1, slots)
    heapq.heapify(lanes)
    for s in sorted(seconds, reverse=True):
        heapq.heappush(lanes, heapq.heappop(lanes) + s)
    return max(lanes)


def add_job_arguments(ap: argparse.ArgumentParser, epochs: list[int]) -> None:
    """The arguments that pick a config's train jobs and how they are timed (this script's and
    benchmarks/compile_gain.py's)."""
    ap.add_argument("config", type=Path)
    ap.add_argument("--experiments", nargs="+", help="only these experiments (default: all)")
    ap.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    ap.add_argument("--epochs", type=int, nargs=2, default=epochs, metavar=("E1", "E2"))
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="time each length this many times, keep the fastest")


def chosen_jobs(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The train jobs (:func:`slabbench.config.stack_jobs`) that ``args`` pick, after checking
    the timing arguments (an error naming the bad value otherwise)."""
    e1, e2 = args.epochs
    if not 1 <= e1 < e2:
        ap.error(f"--epochs E1 E2 needs 1 <= E1 < E2, got {e1} {e2}")
    if args.repeat < 1:
        ap.error(f"--repeat needs at least 1, got {args.repeat}")
    logging.basicConfig(level=logging.WARNING)
    config = validate(load_yaml(args.config))
    jobs = {k: v for k, v in stack_jobs(config).items()
            if (not args.experiments or k[0] in args.experiments) and (not args.methods or k[1] in args.methods)}
    if not jobs:
        ap.error("no train job matches --experiments / --methods")
    return jobs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(ap, [2, 6])
    ap.add_argument("--min-gain", type=float, default=0.5,
                    help="lengthen the second timing until the job takes this fraction of its first time longer")
    ap.add_argument("--slots", type=int, default=1, help="jobs running at once (cores, or GPU slots)")
    ap.add_argument("--eager", action="store_true", help="train with graphs: false (CUDA: eager steps, not replays)")
    ap.add_argument("--out", type=Path, help="also write the rows as CSV")
    args = ap.parse_args(argv)
    jobs = chosen_jobs(ap, args)
    e1, e2 = args.epochs
    device = str(resolve_device(args.device))
    rows = []
    print(f"{args.config}: {len(jobs)} train jobs on {device}{' with eager steps' if args.eager else ''}, "
          f"timed at {e1} epochs and at {e2} or more (four times longer until the job takes "
          f"{args.min_gain:g}x its {e1}-epoch time longer, or 1 s), fine-tuning likewise from 1 epoch")
    print("| experiment | method | runs | epochs | timed at | s / epoch | s / fine-tuning epoch | rest s | job s (extrapolated) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (experiment, method, stack), specs in jobs.items():
        full_epochs, full_ft = int(specs[0]["epochs"]), int(specs[0].get("finetune_epochs", 0))
        # each length timed --repeat times and the fastest kept: the first call of a
        # job pays one-time costs (imports, lazy initialisation, data caches) that would
        # otherwise be charged to the shorter length and hide the cost per epoch
        def best(epochs: int, finetune: int) -> tuple[float, bool]:
            """(the fastest of --repeat timings, whether the job fine-tuned anything)."""
            times = [timed(shortened(specs, epochs, finetune, device, args.eager), args.threads)
                     for _ in range(args.repeat)]
            return min(t for t, _ in times), any(tuned for _, tuned in times)

        t1 = best(e1, 0)[0]
        gain = max(args.min_gain * t1, 1.0)
        t2, e2_used = grown(lambda n: best(n, 0)[0], t1, e2, max(full_epochs, e1 + 1), gain)
        t1f, ft_used = (t1, 0)
        if full_ft:
            # one fine-tuning epoch first: a job with nothing to fine-tune (dense has no sparsity
            # targets) is not grown to the config's fine-tuning length to read a cost of 0
            t, tuned = best(e1, 1)
            if tuned and (t - t1 >= gain or full_ft == 1):
                t1f, ft_used = t, 1
            elif tuned:  # one epoch hides the cost: grow 4, 16, ... as the training length does
                t1f, ft_used = grown(lambda n: best(e1, n)[0], t1, 4, full_ft, gain)
        per_epoch = max(0.0, (t2 - t1) / (e2_used - e1))
        per_ft = max(0.0, (t1f - t1) / ft_used) if ft_used else 0.0
        rest = max(0.0, t1 - e1 * per_epoch)
        total = rest + full_epochs * per_epoch + full_ft * per_ft
        rows.append(dict(experiment=experiment, method=method, stack=stack, runs=len(specs), epochs=full_epochs,
                         finetune_epochs=full_ft, timed_epochs=e2_used, timed_finetune_epochs=ft_used,
                         s_per_epoch=per_epoch, s_per_finetune_epoch=per_ft, rest_s=rest, job_s=total))
        print(f"| {experiment} | {method} | {len(specs)} | {full_epochs} + {full_ft} | {e1}, {e2_used} + {ft_used} | "
              f"{per_epoch:.4f} | {per_ft:.3f} | {rest:.1f} | {total:.0f} |", flush=True)
    serial = sum(r["job_s"] for r in rows)
    print(f"\none job after another: {serial:.0f} s ({serial / 60:.1f} min); on {args.slots} slot(s), longest first: "
          f"{makespan([r['job_s'] for r in rows], args.slots) / 60:.1f} min (jobs assumed not to slow each other)")
    by_exp: dict[str, float] = {}
    for r in rows:
        by_exp[r["experiment"]] = by_exp.get(r["experiment"], 0.0) + r["job_s"]
    for exp, s in by_exp.items():
        print(f"  {exp}: {s / 60:.1f} min of jobs")
    if args.out:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
