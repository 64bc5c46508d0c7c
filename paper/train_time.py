"""paper/figures/train_time.{png,pdf}: training wall time per run as the jobs ran (not a method's cost
alone: jobs shared the machine), every method and experiment; from paper/data/ only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from _common import REFREEZE, fill, finish, grid, load, panel_tag, run_seconds, save_figure, say  # noqa: F401 (tests take run_seconds from here)
from slabbench.plotting import method_colour, method_order


def draw(runs: pd.DataFrame, prov: dict, columns: int = 3):
    """Training wall time per run as the jobs ran (log scale), one panel per
    experiment, a bar per method at the mean over seeds with every seed as a dot, labelled
    with the mean and its ratio to dense."""
    if "train_seconds" not in runs:
        fig, axes = grid(1, 1)
        say(axes[0, 0], f"train_seconds not in the frozen table; {REFREEZE}")
        finish(fig, prov, "training time per run")
        return fig
    per_run = run_seconds(runs)
    exps = sorted(per_run["experiment"].unique())
    fig, axes = grid(len(exps), columns, size=(5.2, 0.55 * max(1, per_run["method"].nunique()) + 1.6))
    for ax, exp in zip(axes.flat, exps):
        g = per_run[(per_run["experiment"] == exp) & per_run["seconds"].notna()]
        methods = method_order(g["method"].unique())
        dense = g.loc[g["method"] == "dense", "seconds"].mean() if "dense" in methods else math.nan
        for i, method in enumerate(methods):
            s = g.loc[g["method"] == method, "seconds"].to_numpy()
            ax.barh(i, s.mean(), color=method_colour(method), alpha=0.8, height=0.6)
            ax.scatter(s, np.full(len(s), i) + np.linspace(-0.18, 0.18, len(s)), color="k", s=6, zorder=3, lw=0)
            ratio = f", {s.mean() / dense:.1f}× dense" if dense == dense and method != "dense" else ""
            ax.text(s.max() * 1.08, i, f"{s.mean():.3g} s{ratio}", va="center", fontsize=7)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(g):
            ax.set_xlim(g["seconds"].min() / 2, g["seconds"].max() * 8)
        device = ", ".join(sorted(set(", ".join(g["device"]).split(", ")) - {""})) or "device unknown"
        ax.set_title(f"{exp}: {g['seed'].nunique()} seeds; {device}\n{fill(panel_tag(prov, exp), 60)}", fontsize=7.5)
        ax.set_xlabel("training time per run (s, log scale)")
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(exps):]:
        ax.set_visible(False)
    if not exps:
        say(axes[0, 0], "no runs in the frozen table")
    finish(fig, prov, "training wall time per run, as the jobs ran (not each method's cost alone)",
            ["Wall time of training only (no evaluation, no fine-tuning); runs trained stacked in one job share its "
             "wall time equally; a run of a method that trains once per target (spike_slab_target; magnitude with a gradual "
             "schedule) sums its targets' trainings. "
             "Bars: mean over seeds; dots: each seed's share (equal within one stack: not separate measurements). Jobs that "
             "shared a device ran slower than alone (see the provenance note), so a bar is not the method's cost: "
             "benchmarks/grid_time.py times each job alone."],
            experiments=exps)
    return fig


if __name__ == "__main__":
    runs, prov, _ = load()
    save_figure(draw(runs, prov), "train_time")
