"""paper/figures/error_vs_sparsity.{png,pdf}: the central figure: test error (classification) or
RMSE (regression) against sparsity, one panel per experiment, every method; from paper/data/ only.

Student-t 95% CI bands of the mean over seeds, cut at the metric's range; each panel's y-axis
spans the means drawn, so one wide band cannot squash the other curves; nets with no path from
input to output are crosses, named in the caption; each panel says its provenance (protocol or
REDUCED, and what is reduced); the legend sits right of each panel, outside the data.
"""

from __future__ import annotations

import math

import pandas as pd

from _common import RANGE_NOTE, X_FLOOR, experiment_title, finish, load, no_path_summary, off_path_summary, plt, save_figure

#: targets whose nets keep fewer than this share of their nonzero weights on an input-output path are named
OFF_PATH_SHARE = 0.2
from slabbench.plotting import plot_experiment
from slabbench.stats import CI_NAME


def draw(runs: pd.DataFrame, prov: dict, columns: int = 2):
    experiments = sorted(runs["experiment"].unique())
    cols = min(columns, len(experiments))
    rows = math.ceil(len(experiments) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8.2 * cols, 4.3 * rows + 1.6), squeeze=False)
    for ax, exp in zip(axes.flat, experiments):
        g = runs[runs["experiment"] == exp]
        plot_experiment(g, title=experiment_title(g, prov), ax=ax, x_floor=X_FLOOR, log_y=True, ylim_from_means=True,
                        legend="outside")
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(experiments):]:
        ax.set_visible(False)
    empty = no_path_summary(runs)
    notes = [f"Bands, bars: {CI_NAME} over seeds; {RANGE_NOTE}. Each panel's y-axis spans the means drawn (a band may "
             "run past its edge). Stars: natural selections (◄ at the left edge: one below 30% sparsity, its sparsity in the "
             "legend); dashed horizontal line and band: dense; dashed curves: a method's variants (spike_slab_k5, ...); "
             "dotted: the constant predictor (training mean). Diabetes RMSE is in units of the target's training sd.",
             "Sparsity counts every nonzero weight, also weights that lie on no path from an input to the output; targets "
             f"where fewer than {OFF_PATH_SHARE:.0%} of the nonzero weights lie on such a path (mean over seeds, "
             "physical_weights / nonzero_weights in runs.csv), up to target 0.9: "
             + ("; ".join(off_path_summary(runs, OFF_PATH_SHARE, 0.9)) or "none") + ".",
             "Crosses: targets where some net has no path from input to output (a hidden layer with no unit kept, or no "
             "weight left; its prediction is a constant): " + ("; ".join(empty) if empty else "none") + "."]
    finish(fig, prov, "test error vs sparsity", notes, experiments)
    return fig


if __name__ == "__main__":
    runs, prov, _ = load()
    save_figure(draw(runs, prov), "error_vs_sparsity")
