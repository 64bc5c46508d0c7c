"""paper/figures/simulation_pips.{png,pdf}: feature selection where the truth is known (Bai et
al.'s simulation, Friedman #1), per experiment: every replicate's input PIP of every feature
(jittered strip, true features marked), how often each true feature is in each method's natural
selection, and each method's FNR and FPR per replicate (every replicate a dot).  From
paper/data/ only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from _common import (PIP_METHOD, REFREEZE, fill, finish, load, missing_artefacts_text, panel_tag, pip_stack, plt,
                     save_figure, say)
from slabbench.plotting import method_colour, method_order

TITLE = "feature selection where the truth is known: input PIPs, true features found, FNR and FPR"


def truth_experiments(runs: pd.DataFrame, arts: dict) -> list[str]:
    """Experiments whose true features are known (from the frozen facts, else FNR in the table)."""
    meta = arts.get("meta") or {}
    known = {e for e, f in meta.items() if f.get("true_support") is not None}
    in_table = set(runs.loc[runs["fnr"].notna(), "experiment"]) if "fnr" in runs else set()
    return sorted(known | {e for e in in_table if e not in meta})  # frozen without artefacts: from the table


def found_rates(features: pd.DataFrame, exp: str, true_support: list[int], n_features: int | None = None) -> pd.DataFrame:
    """Per method (rows, natural selections) the fraction of runs whose selection keeps each
    true feature (columns ``x1``...; 1-based names), with ``n_features`` also the mean
    fraction of the noise features kept (``noise``); ``runs``: how many selections."""
    g = features[features["experiment"] == exp]
    rows = []
    for method in method_order(g["method"].unique()):
        sel = g.loc[g["method"] == method, "selected"].tolist()
        row = {"method": method, "runs": len(sel)}
        for j in true_support:
            row[f"x{j + 1}"] = float(np.mean([j in s for s in sel]))
        if n_features is not None and n_features > len(true_support):
            row["noise"] = float(np.mean([len(set(s) - set(true_support)) for s in sel])) / (n_features - len(true_support))
        rows.append(row)
    return pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()


def draw(runs: pd.DataFrame, prov: dict, arts: dict):
    exps = truth_experiments(runs, arts)
    n = max(1, len(exps))
    fig, axes = plt.subplots(n, 3, figsize=(17, 4.1 * n + 1.2), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1.1, 1.2]})
    if not exps:
        say(axes[0, 0], "no experiment with known true features in the frozen data")
        axes[0, 1].set_visible(False)
        axes[0, 2].set_visible(False)
    meta = arts.get("meta") or {}
    for (ax, ax_found, ax_rates), exp in zip(axes, exps):
        support = meta.get(exp, {}).get("true_support")
        stacks = pip_stack(arts, exp) if arts.get("arrays") is not None else {}
        method = next(iter(stacks), PIP_METHOD)
        pips = stacks.get(method)
        if pips is None or support is None:
            what = f"Per-feature input PIPs of {exp} are"
            say(ax, missing_artefacts_text(arts, what) if arts.get("arrays") is None or arts.get("meta") is None
                else f"{what} not in the frozen data (frozen before the freeze kept them); {REFREEZE}" if exp not in meta
                else f"{exp}: no run with input PIPs in the frozen data", 70)
        else:
            _draw_pips(ax, exp, method, pips, support, panel_tag(prov, exp))
        _draw_found(ax_found, runs, arts, exp, support, pips, method)
        _draw_rates(ax_rates, runs, exp)
        for side in (ax_found, ax_rates):
            if side.get_title():
                side.set_title(f"{side.get_title()}\n{fill(panel_tag(prov, exp), 60)}", fontsize=7.5)
    finish(fig, prov, TITLE,
           ["Input PIP: the probability that a feature feeds at least one included first-layer weight (natural fit); "
            "every replicate is a dot, jittered sideways. Found: the feature is in the method's natural selection (an input "
            "with a kept first-layer weight into a unit connected to the outputs; Bai et al.'s rule as written, which also "
            "counts a weight whose unit no longer reaches the outputs, is the table's `_bai` columns). FNR: the share of "
            "true features missed; FPR: the share of noise features kept; a method that keeps every input has FNR 0 and "
            "FPR 1."], experiments=exps)
    return fig


def feature_positions(p: int, support) -> tuple[np.ndarray, float]:
    """Where each of ``p`` features is drawn: the true ones first, ``step`` apart (wide enough to
    read each one's replicates and label), then the noise features in their order, one apart.
    Returns (x of feature j, step)."""
    support = sorted(support)
    step = max(1.0, (p - len(support)) / 15)
    pos = np.empty(p)
    pos[support] = step * (np.arange(len(support)) + 1)
    noise = np.setdiff1d(np.arange(p), support)
    pos[noise] = step * (len(support) + 1.5) + np.arange(len(noise))
    return pos, step


def _draw_pips(ax, exp: str, method: str, pips: np.ndarray, support, where: str) -> None:
    p = pips.shape[1]
    pos, step = feature_positions(p, support)
    true = np.zeros(p, dtype=bool)
    true[list(support)] = True
    rng = np.random.default_rng(0)  # jitter only: the same figure every time
    for group, colour, label, width in ((~true, "0.55", f"noise features ({int((~true).sum())})", 0.3),
                                        (true, method_colour(PIP_METHOD), f"true features ({int(true.sum())})", 0.3 * step)):
        if not group.any():
            continue
        xs = np.repeat(pos[group][None, :], len(pips), 0) + rng.uniform(-width, width, (len(pips), int(group.sum())))
        ax.scatter(xs.ravel(), pips[:, group].ravel(), s=12 if group is true else 4, color=colour, alpha=0.55,
                   lw=0, label=label)
    ax.scatter(pos, pips.mean(0), marker="_", s=np.where(true, 250, 60 if p <= 50 else 25), color="k", lw=1.2,
               label=f"mean over {len(pips)} replicates")
    for j in support:
        found = int((pips[:, j] > 0.5).sum())
        ax.annotate(f"{found}/{len(pips)}", (pos[j], 1.03), ha="center", va="bottom", fontsize=7,
                    color=method_colour(PIP_METHOD))
    ax.axhline(0.5, color="k", ls=":", lw=0.8)
    if (~true).any() and true.any():
        ax.axvline(step * (len(support) + 0.75), color="0.7", lw=0.8)
    ax.set_xlim(pos.min() - step * 0.7, pos.max() + 0.8)
    ax.set_ylim(-0.03, 1.13)
    ax.set_xticks(pos[sorted(support)], [f"x{j + 1}" for j in sorted(support)], fontsize=7)
    ax.set_xlabel(f"input feature: the {int(true.sum())} true ones spread out at the left (above: replicates with "
                  f"PIP > 0.5), then the {int((~true).sum())} noise features in order", fontsize=8)
    ax.set_ylabel("input PIP")
    noise_max = pips[:, ~true].max() if (~true).any() else float("nan")
    ax.set_title(f"{exp}: {method} input PIPs, {len(pips)} replicates (largest noise PIP {noise_max:.2f})\n{where}",
                 fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=3, borderaxespad=0)


def _draw_found(ax, runs: pd.DataFrame, arts: dict, exp: str, support, pips, method: str) -> None:
    features = arts.get("features")
    n_features = ((arts.get("meta") or {}).get(exp) or {}).get("n_features")
    rates = (found_rates(features, exp, list(support), n_features) if features is not None and support is not None
             else pd.DataFrame())
    if rates.empty and pips is not None and support is not None:  # the selection by PIP > 0.5 alone
        rates = pd.DataFrame([{"runs": len(pips), **{f"x{j + 1}": float((pips[:, j] > 0.5).mean()) for j in support}}],
                             index=pd.Index([f"{method} (PIP > 0.5)"], name="method"))
    if not rates.empty:
        cols = [c for c in rates.columns if c != "runs"]
        width = 0.8 / len(rates)
        for i, (name, row) in enumerate(rates.iterrows()):
            base = name.split(" ")[0]
            xs = np.arange(len(cols)) + (i - (len(rates) - 1) / 2) * width
            ax.bar(xs, row[cols].astype(float), width=width, color=method_colour(base), label=f"{name} ({int(row['runs'])} runs)")
        ax.set_xticks(np.arange(len(cols)), [c if c != "noise" else "noise\n(mean share)" for c in cols])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of replicates selecting it")
        ax.set_title(f"{exp}: how often each true feature is found", fontsize=8)
        ax.legend(fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(0.0, -0.14), ncol=2, borderaxespad=0)
        ax.grid(axis="y", alpha=0.3)
        return
    # nothing per feature: what the table has is the false-negative rate of each selection
    g = runs[(runs["experiment"] == exp) & (runs["selection"] == "natural") & runs["fnr"].notna()] if "fnr" in runs else runs.iloc[:0]
    if g.empty:
        say(ax, f"{exp}: no natural selection with a false-negative rate in the frozen data", 45)
        return
    methods = method_order(g["method"].unique())
    for i, m in enumerate(methods):
        found = 1 - g.loc[g["method"] == m, "fnr"].astype(float).to_numpy()
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(found))
        ax.scatter(np.full(len(found), i) + jitter, found, color=method_colour(m), s=14, alpha=0.7, lw=0)
        ax.plot([i - 0.3, i + 0.3], [found.mean()] * 2, color="k", lw=1.2)
    ax.set_xticks(range(len(methods)), methods, fontsize=8, rotation=30, ha="right")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("fraction of true features found (1 - FNR)")
    ax.set_title(f"{exp}: true features found per replicate", fontsize=8)
    ax.text(0.5, 0.02, fill("Which feature was missed is not in the frozen data (paper/data/features.csv); " + REFREEZE, 55),
            transform=ax.transAxes, ha="center", va="bottom", fontsize=6.5, color="0.25")


def rate_points(runs: pd.DataFrame, exp: str) -> pd.DataFrame:
    """Per method and replicate (natural selections): ``fnr`` and ``fpr``."""
    g = runs[(runs["experiment"] == exp) & (runs["selection"] == "natural")]
    cols = [c for c in ("fnr", "fpr") if c in g]
    g = g.dropna(subset=cols, how="all") if cols else g.iloc[:0]
    return g[["method", "seed", *cols]].reset_index(drop=True)


def _draw_rates(ax, runs: pd.DataFrame, exp: str) -> None:
    """FNR (filled dots) and FPR (open dots) per method, every replicate jittered, means as bars."""
    pts = rate_points(runs, exp)
    if pts.empty or not {"fnr", "fpr"} <= set(pts):
        say(ax, f"{exp}: no natural selection with FNR and FPR in the frozen table", 40)
        return
    methods = method_order(pts["method"].unique())
    for i, m in enumerate(methods):
        g = pts[pts["method"] == m]
        rng = np.random.default_rng(i)
        for off, col, filled in ((-0.18, "fnr", True), (0.18, "fpr", False)):
            y = g[col].astype(float).to_numpy()
            x = i + off + rng.uniform(-0.1, 0.1, len(y))
            ax.scatter(x, y, s=14, lw=0.8, alpha=0.75, color=method_colour(m) if filled else "none",
                       edgecolors=method_colour(m), label=("FNR (filled)" if filled else "FPR (open)") if i == 0 else None)
            ax.plot([i + off - 0.12, i + off + 0.12], [np.nanmean(y)] * 2, color="k", lw=1.2)
    ax.set_xticks(range(len(methods)), methods, fontsize=8, rotation=30, ha="right")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("rate per replicate")
    ax.set_title(f"{exp}: FNR (filled, left) and FPR (open, right),\n{pts['seed'].nunique()} replicates, means as bars",
                 fontsize=8)
    ax.grid(axis="y", alpha=0.3)


if __name__ == "__main__":
    runs, prov, arts = load()
    save_figure(draw(runs, prov, arts), "simulation_pips")
