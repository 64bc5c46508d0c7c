"""paper/figures/nodes_kept.{png,pdf}: structured compression: units kept per hidden layer against
sparsity, every method; nets with no path from input to output named; from paper/data/ only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from _common import (REFREEZE, X_FLOOR, experiments, figure_legend, fill, finish, load, logit_x, no_path_summary,
                     panel_tag, plt, save_figure, say)
from slabbench.plotting import method_colour, method_order


def _nodes(values: pd.Series) -> np.ndarray:
    """'300-100' strings -> (rows, layers) float array (NaN where a row has fewer layers)."""
    lists = [[int(v) for v in str(s).split("-")] if isinstance(s, str) and s else [] for s in values]
    width = max((len(v) for v in lists), default=0)
    out = np.full((len(lists), width), np.nan)
    for i, v in enumerate(lists):
        out[i, :len(v)] = v
    return out


def layer_widths(g: pd.DataFrame, runs: pd.DataFrame | None = None) -> tuple[np.ndarray, str]:
    """Units per hidden layer of one experiment's net: its dense network's (every unit kept),
    else that of another experiment in ``runs`` that trained the same net (same data set, model
    and number of weights: a variant's own experiment, such as the restarts), else the most any
    run kept (then said so)."""
    dense = g[(g["method"] == "dense")]
    if not dense.empty:
        return np.nanmax(_nodes(dense["nodes_kept"]), axis=0), "of the dense net's"
    if runs is not None and {"dataset", "model", "n_weights"} <= set(g.columns) and len(g):
        first = g.iloc[0]
        same = runs[(runs["method"] == "dense") & (runs["dataset"] == first["dataset"]) & (runs["model"] == first["model"])
                    & (runs["n_weights"] == first["n_weights"])]
        if not same.empty:
            return (np.nanmax(_nodes(same["nodes_kept"]), axis=0),
                    f"of the dense net's (`{sorted(same['experiment'].unique())[0]}`, the same net)")
    return np.nanmax(_nodes(g["nodes_kept"]), axis=0), "of the most any run kept (no dense run)"


def draw(runs: pd.DataFrame, prov: dict):
    """Structured compression: the fraction of each hidden layer's units (convolution
    channels) still connected, against sparsity, every method; mean over seeds, bars from the
    fewest to the most any seed kept; natural selections as stars, dense as a dashed line."""
    exps = experiments(runs)
    layers = {e: _nodes(runs.loc[runs["experiment"] == e, "nodes_kept"]).shape[1] if "nodes_kept" in runs else 0
              for e in exps}
    cols = max([1] + list(layers.values()))
    width = 4.6 * cols + 2.4
    right = 1 - 2.4 / width
    fig, axes = plt.subplots(max(1, len(exps)), cols, figsize=(width, 3.6 * max(1, len(exps)) + 1.2), squeeze=False)
    for r, exp in enumerate(exps):
        g = runs[runs["experiment"] == exp]
        if layers[exp] == 0:
            say(axes[r, 0], f"{exp}: no nodes_kept in the frozen table; {REFREEZE}")
            for ax in axes[r, 1:]:
                ax.set_visible(False)
            continue
        widths, whose = layer_widths(g, runs)
        nodes = _nodes(g["nodes_kept"])
        frac = pd.DataFrame(nodes / widths, index=g.index)
        ticks = sorted(set(g["target_sparsity"].dropna().round(4)))
        for k in range(cols):
            ax = axes[r, k]
            if k >= layers[exp]:
                ax.set_visible(False)
                continue
            xs = []
            for method in method_order(g["method"].unique()):
                m = g[g["method"] == method]
                colour = method_colour(method)
                t = m[m["selection"] == "target"]
                if not t.empty:
                    agg = pd.DataFrame({"target": t["target_sparsity"], "x": t["sparsity"], "y": frac.loc[t.index, k]})
                    agg = agg.groupby("target").agg(x=("x", "mean"), y=("y", "mean"), lo=("y", "min"), hi=("y", "max"))
                    ax.errorbar(agg["x"], agg["y"], yerr=[agg["y"] - agg["lo"], agg["hi"] - agg["y"]], marker="o", ms=4,
                                color=colour, capsize=2, lw=1.3, label=method)
                    xs += agg["x"].tolist()
                nat = m[m["selection"] == "natural"]
                if nat.empty:
                    continue
                x, y = float(nat["sparsity"].mean()), float(frac.loc[nat.index, k].mean())
                if method == "dense" or x == 0:
                    ax.axhline(y, color=colour, ls="--", lw=1, label=f"{method}" if t.empty else None)
                elif x < X_FLOOR:
                    ax.plot([X_FLOOR], [y], marker="<", ms=9, color=colour, mec="k", ls="none",
                            label=f"{method} natural ({100 * x:.1f}% sparse)")
                    xs.append(X_FLOOR)
                else:
                    ax.plot([x], [y], marker="*", ms=12, color=colour, mec="k", ls="none", label=f"{method} natural")
                    xs.append(x)
            logit_x(ax, xs + [X_FLOOR], ticks)
            ax.set_ylim(-0.03, 1.05)
            ax.set_ylabel("fraction of units kept")
            ax.set_title(fill(f"{exp}: hidden layer {k + 1} ({int(widths[k])} units {whose})", 60)
                         + f"\n{fill(panel_tag(prov, exp), 60)}", fontsize=7.5)
            ax.grid(alpha=0.3)
    if not exps:
        say(axes[0, 0], "no runs in the frozen table")
    empty = no_path_summary(runs)
    figure_legend(fig, right)
    finish(fig, prov, "structured compression: units kept per layer against sparsity",
           ["A unit (convolution channel) is kept when it has a nonzero incoming weight or bias and a nonzero "
            "outgoing weight. Points: mean over seeds at the sparsity reached; bars: fewest to most any seed kept; "
            "stars: each method's natural selection; dashed: dense.",
            "A point at 0 in some layer is a net with no path from input to output (its prediction is a constant); "
            "such targets: " + ("; ".join(empty) if empty else "none") + "."], experiments=exps, right=right)
    return fig


if __name__ == "__main__":
    runs, prov, _ = load()
    save_figure(draw(runs, prov), "nodes_kept")
