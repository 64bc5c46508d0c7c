"""paper/figures/calibration.{png,pdf}: ECE and NLL against sparsity, point network and spike_slab's
BMA, per classification experiment; intervals cut at the metric's range, y-axes from the means,
nets with no path from input to output as crosses; from paper/data/ only."""

from __future__ import annotations

import pandas as pd

from _common import (PIP_METHOD, RANGE_NOTE, REFREEZE, X_FLOOR, experiments, figure_legend, fill, finish, load,
                     log_scale, logit_x, no_path_summary, panel_tag, plt, save_figure, say, ylim_from)
from slabbench.aggregate import metric_values
from slabbench.plotting import method_colour, method_order, metric_range, target_points
from slabbench.stats import CI_NAME, describe


CALIBRATION = [("ece", "ECE (15 bins)"), ("test_nll", "test NLL (nats per example)")]


def draw(runs: pd.DataFrame, prov: dict):
    """Calibration of classifiers against sparsity: ECE (top row) and test NLL (bottom row),
    one column per classification experiment; every method's point network (the exported,
    masked net: lines with Student-t 95% CI bands over seeds, natural selections as stars)
    and spike_slab's BMA (dashed, hollow markers) wherever the records carry it."""
    exps = experiments(runs, "classification")
    width = 5.0 * max(1, len(exps)) + 2.6
    right = 1 - 2.6 / width
    fig, axes = plt.subplots(2, max(1, len(exps)), figsize=(width, 8.0 + 1.4), squeeze=False)
    notes = []
    for c, exp in enumerate(exps):
        g = runs[runs["experiment"] == exp]
        ticks = sorted(set(g["target_sparsity"].dropna().round(4)))
        for r, (col, label) in enumerate(CALIBRATION):
            ax = axes[r, c]
            if col not in g or g[col].isna().all():
                say(ax, f"{exp}: {col} not in the frozen table; {REFREEZE}")
                continue
            xs, means = _draw_metric(ax, g, col, bma=False)
            message = None
            bma = f"{col}_bma"
            if bma not in g:
                message = f"{PIP_METHOD} BMA {col}: not in the frozen table (frozen before records carried {bma}); {REFREEZE}"
            elif g.loc[g["method"] == PIP_METHOD, bma].isna().all():
                message = f"{PIP_METHOD} BMA {col}: not measured in these runs"
            else:
                more = _draw_metric(ax, g[g["method"] == PIP_METHOD], bma, bma=True)
                xs, means = xs + more[0], means + more[1]
            logit_x(ax, xs + [X_FLOOR], ticks)
            ax.set_ylabel(label + log_scale(ax, "y", means))
            ylim_from(ax, means, *metric_range(col))
            ax.set_title(f"{exp}: {label.split(' (')[0]}\n{fill(panel_tag(prov, exp), 70)}"
                         + (f"\n{fill(message, 80)}" if message else ""), fontsize=7.5)
            ax.grid(alpha=0.3)
    if not exps:
        for ax in axes.flat:
            say(ax, "no classification experiment in the frozen table (ECE is defined for classifiers)")
    ft = sorted(runs.loc[runs["selection"] == "target", "finetune_epochs"].dropna().unique()) if "finetune_epochs" in runs else []
    if any(f > 0 for f in ft):
        notes.append("The BMA of a matched target is measured only without fine-tuning (a fine-tuned net has no posterior); "
                     "with fine-tuning it appears at the natural selection only.")
    notes.append(f"Lines: point network (the exported, masked posterior mean or trained weights) at each target, "
                 f"bands: {CI_NAME} over seeds, {RANGE_NOTE}; y-axes span the means drawn (a band may run past the "
                 f"edge); stars: natural selections; dashed, hollow: {PIP_METHOD}'s BMA (MC average of sampled masked "
                 f"networks; its star larger, behind the point network's). Regression experiments: tables/results.")
    empty = no_path_summary(runs[runs["task"] == "classification"])
    notes.append("Crosses: targets where some net has no path from input to output: a constant prediction, whose low ECE "
                 "says nothing of calibration (its error is that of guessing): " + ("; ".join(empty) if empty else "none") + ".")
    figure_legend(fig, right)
    finish(fig, prov, "calibration against sparsity: ECE and NLL, point network and BMA", notes, exps, right=right)
    return fig


def _draw_metric(ax, g: pd.DataFrame, col: str, bma: bool) -> tuple[list[float], list[float]]:
    """Lines (targets; crosses where some net has no path from input to output) and stars
    (natural) of ``col`` per method; returns the x positions and the means drawn."""
    xs, means = [], []
    style = dict(ls="--", mfc="white") if bma else dict(ls="-")
    tag = " BMA" if bma else ""
    for method in method_order(g["method"].unique()):
        m = g[g["method"] == method]
        colour = method_colour(method)
        t = m[(m["selection"] == "target") & m[col].notna()]
        if not t.empty:
            p = target_points(t, col).sort_values("target_sparsity")
            ax.plot(p["reached"], p["mean"], marker="o", ms=4, color=colour, label=f"{method}{tag}", **style)
            if not bma:
                ax.fill_between(p["reached"], p["ci_low"], p["ci_high"], color=colour, alpha=0.15, lw=0)
            empty = p[p["no_path"] > 0]
            if not empty.empty:
                ax.plot(empty["reached"], empty["mean"], marker="X", ms=8, mfc="white", mec=colour, mew=1.4, ls="none",
                        zorder=4, label="no path from input to output")
            xs += p["reached"].tolist()
            means += p["mean"].tolist()
        nat = m[(m["selection"] == "natural") & m[col].notna()]
        if nat.empty:
            continue
        y = describe(metric_values(nat, col).tolist())
        x = float(nat["sparsity"].mean())
        means.append(y["mean"])
        if method == "dense" or x == 0:
            what = "" if method == "dense" else " natural (0% sparse)"
            ax.axhline(y["mean"], color=colour, ls="--" if not bma else ":", lw=1, label=f"{method}{tag}{what}")
            continue
        shown = max(x, X_FLOOR)
        # the BMA's hollow star is larger and behind: where the two nearly coincide (NLL 0.147 vs 0.148)
        # the point net's filled star stays visible inside it
        size = (17 if bma else 11) if x >= X_FLOOR else (13 if bma else 8)
        ax.plot([shown], [y["mean"]], marker="*" if x >= X_FLOOR else "<", ms=size, color=colour, zorder=3 if bma else 5,
                mec="k", ls="none", mfc="white" if bma else colour, label=f"{method}{tag} natural ({100 * x:.1f}% sparse)")
        xs.append(shown)
    return xs, means


if __name__ == "__main__":
    runs, prov, _ = load()
    save_figure(draw(runs, prov), "calibration")
