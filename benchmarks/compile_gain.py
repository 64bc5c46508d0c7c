"""What ``compile: true`` buys each train job of a config on the device at hand, measured in one run.

    .venv/bin/python benchmarks/compile_gain.py config/paper.yaml --experiments mnist-lenet300 [--methods ...]
        [--epochs 1 3] [--repeat 2] [--device cpu|cuda|auto] [--backend inductor] [--counter] [--out rows.csv]

Each train job (one experiment x method x stack of seeds, as Snakemake runs it) is run through
the core (``slabbench.train.run_stack``) shortened, without fine-tuning, at ``E1`` and ``E2``
training epochs, once as written and once with its training step compiled
(``slabbench.engine.CompiledLoss``), alternating, each length ``--repeat`` times and the fastest
kept; before them each compiled arm runs once at ``E1``, untimed (its first compile, with
Inductor's cache cold for its graphs, would fall in one length and not the other).  Times are
the training's own (the records' ``train_seconds``, summed over the stack's runs), not the
job's: a job's evaluation after training (every target pruned, measured, its physical network
timed) depends on what training left, so a difference of whole-job times between two lengths
is not a cost per epoch.  The table gives, per job, the seconds per training
epoch both ways and their ratio; what compiling costs once per training (that first compiled
training's time less its epochs at the compiled rate: compiling every kind of step and the
first steps, with Inductor's on-disk cache as the machine had it; later jobs find most kernels
there); and how far the compiled run's records are from those as written after ``E2`` epochs
(test NLL, relative: fused kernels round differently, so a compiled run is another run).
``step`` says how the steps ran ("eager (...)" where compiling failed).  The totals
extrapolate each job's training to the config's epochs.  Records are not written.

``--counter``: a third arm, compiled with counter-based noise (``noise_rng: counter``,
:class:`slabbench.layers.stacked.CounterNoise`: each draw is tensor operations that the compiler
fuses into the kernels using the noise, where a per-run generator's draw is an opaque operator
per run), its seconds per epoch and ratio against as written.  Other random streams: its test
NLL differs from as written by what another seed would give.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grid_time as G  # noqa: E402

from slabbench import engine as E  # noqa: E402
from slabbench.train import resolve_device, run_stack  # noqa: E402


#: the arms: as written, compiled, and (``--counter``) compiled with counter-based noise
ARMS = {"written": {}, "compiled": {"compile": True}, "counter": {"compile": True, "noise_rng": "counter"}}


def run(specs: list[dict], epochs: int, device: str, arm: str, threads: int) -> tuple[float, list]:
    """(training seconds of the stack, its records) of the job shortened to ``epochs`` epochs,
    no fine-tuning, in the options of ``arm`` (:data:`ARMS`)."""
    short = [dict(s, **ARMS[arm]) for s in G.shortened(specs, epochs, 0, device)]
    results = run_stack(short, threads=threads)
    return sum(records[0]["train_seconds"] for records, _ in results), [rec for records, _ in results for rec in records]


def nll_gap(got: list[dict], want: list[dict]) -> float:
    """The largest relative difference in test NLL between two runs' records."""
    gaps = [abs(g["test_nll"] - w["test_nll"]) / max(abs(w["test_nll"]), 1e-12)
            for g, w in zip(got, want) if "test_nll" in g and "test_nll" in w]
    return max(gaps, default=float("nan"))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    G.add_job_arguments(ap, [1, 3])
    ap.add_argument("--backend", default=E.COMPILE_BACKEND, help="torch.compile backend (default: %(default)s)")
    ap.add_argument("--counter", action="store_true",
                    help="also compiled with counter-based noise (noise_rng: counter)")
    ap.add_argument("--out", type=Path, help="also write the rows as CSV")
    args = ap.parse_args(argv)
    jobs = G.chosen_jobs(ap, args)
    e1, e2 = args.epochs
    E.COMPILE_BACKEND = args.backend
    device = str(resolve_device(args.device))
    print(f"{args.config}: {len(jobs)} train jobs on {device}, as written and compiled ({args.backend}) alternately, "
          f"{e1} and {e2} epochs without fine-tuning, training time the fastest of {args.repeat}")
    arms = ["written", "compiled"] + (["counter"] if args.counter else [])
    extra = " compiled + counter | ratio |" if args.counter else ""
    print("| experiment | method | runs | s / epoch as written | compiled | ratio |" + extra
          + " compile s | test NLL rel. diff | step |")
    print("|---" * (9 + 2 * args.counter) + "|")
    rows = []
    for (experiment, method, stack), specs in jobs.items():
        times: dict = {}
        records: dict = {}
        # each compiled arm once first, untimed: its first compile (Inductor's cache cold for
        # those graphs) would otherwise fall in one length's time and not the other's
        first_compiled = run(specs, e1, device, "compiled", args.threads)[0]
        if args.counter:
            run(specs, e1, device, "counter", args.threads)
        for _ in range(args.repeat):
            for epochs in (e1, e2):
                for arm in arms:
                    t, recs = run(specs, epochs, device, arm, args.threads)
                    times[epochs, arm] = min(t, times.get((epochs, arm), float("inf")))
                    records[epochs, arm] = recs
        per = {a: max(0.0, (times[e2, a] - times[e1, a]) / (e2 - e1)) for a in arms}
        how = records[e2, "compiled"][0]["provenance"].get("step_compile", "?")

        def ratio(arm: str) -> float:
            return per[arm] / per["written"] if per["written"] > 0 else float("nan")
        row = dict(experiment=experiment, method=method, stack=stack, runs=len(specs), epochs=int(specs[0]["epochs"]),
                   s_per_epoch=per["written"], s_per_epoch_compiled=per["compiled"], ratio=ratio("compiled"),
                   compile_s=max(0.0, first_compiled - e1 * per["compiled"]),
                   test_nll_rel_diff=nll_gap(records[e2, "compiled"], records[e2, "written"]), step=how)
        counter = ""
        if args.counter:
            row.update(s_per_epoch_counter=per["counter"], ratio_counter=ratio("counter"),
                       counter_test_nll_rel_diff=nll_gap(records[e2, "counter"], records[e2, "written"]))
            counter = f" {per['counter']:.3f} | {row['ratio_counter']:.2f}x |"
        rows.append(row)
        print(f"| {experiment} | {method} | {row['runs']} | {per['written']:.3f} | {per['compiled']:.3f} | "
              f"{row['ratio']:.2f}x |{counter} {row['compile_s']:.0f} | {row['test_nll_rel_diff']:.1e} | {how} |",
              flush=True)
    written = sum(r["epochs"] * r["s_per_epoch"] for r in rows)
    compiled = sum(r["epochs"] * r["s_per_epoch_compiled"] + r["compile_s"] for r in rows)
    counter = sum(r["epochs"] * r["s_per_epoch_counter"] + r["compile_s"] for r in rows) if args.counter else None
    print(f"\ntraining epochs at the config's length, one job after another: as written {written / 60:.1f} min, "
          f"compiled {compiled / 60:.1f} min with one compile per job ({compiled / written if written else float('nan'):.2f}x)"
          + (f"; compiled with counter-based noise {counter / 60:.1f} min" if args.counter else ""))
    if args.out:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out, index=False)
    return rows


if __name__ == "__main__":
    main()
