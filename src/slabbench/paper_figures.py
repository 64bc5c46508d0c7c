"""The paper's figures beyond the central one, drawn from the frozen data in ``paper/data/``
(``runs.csv``, ``provenance.json`` and the per-run artefacts of
:func:`slabbench.paper.freeze_artefacts`), never from a training run:

    input_pips(...)        input-pixel PIP maps (mean over seeds) beside the mean image
    simulation_pips(...)   per-feature PIPs of every replicate, true features marked, and how
                           often each true feature is selected
    nodes_kept(...)        structured compression: units kept per layer against sparsity
    calibration(...)       ECE and NLL against sparsity, point network and BMA
    train_time(...)        training time per run, every method and experiment

What the frozen data lacks (a table frozen before the freeze kept an artefact, a metric its
records did not carry) is said in the panel that would show it, with how to get it; the
source line under every figure names the paper-grid experiments the table lacks (CIFAR-10).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from slabbench.aggregate import metric_values
from slabbench.paper import REFREEZE, X_FLOOR, source_line
from slabbench.plotting import method_colour, method_order, plt, target_points
from slabbench.stats import CI_NAME, describe

#: the method whose input PIPs the figures show first (others with PIPs follow)
PIP_METHOD = "spike_slab"


# --------------------------------------------------------------------------- shared pieces

def _fill(text: str, width: int) -> str:
    """Wrap at spaces only (names such as cifar10-vgg stay whole)."""
    return textwrap.fill(text, width, break_on_hyphens=False, break_long_words=False)


def _title_prefix(prov: dict) -> str:
    return "" if prov.get("label", "").startswith("full") else f"{prov['label']}: "


def _finish(fig, prov: dict, title: str, notes: list[str] = ()) -> None:
    """Suptitle (with the REDUCED label), notes and the source line at the bottom."""
    fig.suptitle(_title_prefix(prov) + title, fontsize=12)
    width = int(fig.get_size_inches()[0] * 18)  # characters of 6.5 pt text across the figure
    lines = [_fill(n, width) for n in notes] + [_fill("Source: " + source_line(prov), width)]
    text = "\n".join(lines)
    height = fig.get_size_inches()[1]
    bottom = min(0.45, (0.16 * text.count("\n") + 0.3) / height)
    fig.text(0.01, 0.005, text, ha="left", va="bottom", fontsize=6.5)
    fig.tight_layout(rect=(0, bottom, 1, 0.965))


def _say(ax, text: str, width: int = 60) -> None:
    """Replace a panel's content by a message (what is missing and how to get it)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.text(0.5, 0.5, _fill(text, width), ha="center", va="center", fontsize=8, transform=ax.transAxes,
            color="0.25", wrap=True)


def _legend(ax, loc: str) -> None:
    """A legend in the fixed method order (entries of one method together)."""
    handles, labels = ax.get_legend_handles_labels()
    rank = {m: i for i, m in enumerate(method_order([lb.split(" ")[0] for lb in labels]))}
    pairs = sorted(zip(handles, labels), key=lambda hl: (rank[hl[1].split(" ")[0]], " natural" in hl[1], " BMA" in hl[1]))
    if pairs:
        ax.legend(*zip(*pairs), fontsize=6.5, frameon=True, framealpha=0.8, edgecolor="none", loc=loc)


def _scale(ax, which: str, values) -> str:
    """Log scale (ticks at 1, 2, 5 × 10^k, plain numbers) where ``values`` span more than a factor
    of 3, else linear; returns the label suffix (", log scale" or "")."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=float)
    if len(v) == 0 or v.max() / v.min() <= 3:
        return ""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())
    return ", log scale"


def _grid(n: int, columns: int, size=(5.0, 3.8), extra_h: float = 0.9):
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows + extra_h), squeeze=False)
    return fig, axes


def _logit_x(ax, xs, ticks) -> None:
    """Logit-scaled sparsity axis with ticks at the targets (as the central figure)."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if xs and min(xs) > 0 and max(xs) < 1:
        ax.set_xscale("logit")
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks) or sorted(set(np.round(xs, 3)))))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sparsity (fraction of weights pruned; logit scale)")


def _experiments(runs: pd.DataFrame, task: str | None = None) -> list[str]:
    g = runs if task is None else runs[runs["task"] == task]
    return sorted(g["experiment"].unique())


# --------------------------------------------------------------------------- input-pixel PIP maps

def _pip_stack(arts: dict, exp: str) -> dict[str, np.ndarray]:
    """method -> (seeds, features) input PIPs of ``exp`` in the frozen arrays."""
    out: dict[str, list[np.ndarray]] = {}
    prefix = f"input_pip/{exp}/"
    keys = [k for k in (arts.get("arrays") or {}) if k.startswith(prefix)]
    for key in sorted(keys, key=lambda k: (k.split("/")[2], int(k.rsplit("=", 1)[1]))):
        method = key[len(prefix):].split("/")[0]
        out.setdefault(method, []).append(np.asarray(arts["arrays"][key], dtype=float))
    ordered = sorted(out, key=lambda m: (m != PIP_METHOD, m))
    return {m: np.stack(out[m]) for m in ordered}


def _missing_artefacts_text(arts: dict, what: str) -> str:
    files = ", ".join(f"paper/data/{f}" for f in arts.get("missing", []))
    return (f"{what} not in the frozen data ({files} missing: the table was frozen before the freeze kept them); "
            f"to draw this panel, {REFREEZE}")


def input_pip_rows(runs: pd.DataFrame, arts: dict) -> list[dict]:
    """One row per image experiment (and method with input PIPs): ``experiment``, ``method``,
    ``image`` (h, w mean training input or None), ``pips`` ((seeds, h, w) or None),
    ``message`` (what is missing, or None)."""
    meta, arrays = arts.get("meta"), arts.get("arrays")
    if meta is None or arrays is None:
        exps = [e for e in _experiments(runs, "classification")]
        return [dict(experiment=e, method=PIP_METHOD, image=None, pips=None,
                     message=_missing_artefacts_text(arts, "Input PIPs and the mean image are")) for e in exps]
    rows = []
    for exp in sorted(meta):
        facts = meta[exp]
        shape = facts.get("feature_shape")
        if not shape or len(shape) != 2:
            continue  # not image data
        size = int(np.prod(shape))
        image = arrays.get(f"mean_image/{exp}")
        image = None if image is None else np.asarray(image, dtype=float).reshape(shape)
        stacks = _pip_stack(arts, exp)
        if not stacks:
            has = sorted(runs.loc[runs["experiment"] == exp, "method"].unique())
            rows.append(dict(experiment=exp, method=PIP_METHOD, image=image, pips=None,
                             message=f"no run with input PIPs in the frozen data (methods present: {', '.join(has)}; "
                                     f"{PIP_METHOD} writes them)"))
            continue
        for method, pips in stacks.items():
            if pips.shape[1] != size:
                rows.append(dict(experiment=exp, method=method, image=image, pips=None,
                                 message=f"{method}'s input PIPs here are per input channel ({pips.shape[1]} values), "
                                         f"not per pixel ({size}): a convolutional first layer"))
            else:
                rows.append(dict(experiment=exp, method=method, image=image, pips=pips.reshape(len(pips), *shape),
                                 message=None))
    return rows


def input_pips(runs: pd.DataFrame, prov: dict, arts: dict):
    """Input-pixel PIP maps: per image experiment, the mean training image (with the contour
    where the mean PIP crosses 0.5) beside the mean input PIP over seeds (the probability that
    a pixel feeds at least one included first-layer weight) — the feature-importance claim."""
    rows = input_pip_rows(runs, arts)
    n = max(1, len(rows))
    if all(r["pips"] is None and r["image"] is None for r in rows):  # nothing to draw: one line per experiment
        fig, axes = plt.subplots(n, 1, figsize=(8.6, 1.3 * n + 1.6), squeeze=False)
        for ax, row in zip(axes[:, 0], rows):
            _say(ax, f"{row['experiment']} ({row['method']}): {row['message']}", 110)
        if not rows:
            _say(axes[0, 0], "no image experiment in the frozen data")
        _finish(fig, prov, "input-pixel inclusion probabilities (feature importance)")
        return fig
    fig, axes = plt.subplots(n, 2, figsize=(8.6, 3.7 * n + 1.0), squeeze=False)
    for (ax_img, ax_pip), row in zip(axes, rows):
        exp, method = row["experiment"], row["method"]
        if row["image"] is not None:
            ax_img.imshow(row["image"], cmap="gray")
            ax_img.set_title(f"{exp}: mean training image", fontsize=9)
            ax_img.set_xticks([])
            ax_img.set_yticks([])
        else:
            _say(ax_img, f"{exp}: mean image not in the frozen data (data files missing at freeze time)", 45)
        if row["pips"] is None:
            _say(ax_pip, f"{exp} ({method}): {row['message']}", 45)
            continue
        mean = row["pips"].mean(0)
        im = ax_pip.imshow(mean, cmap="viridis", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax_pip, fraction=0.046, pad=0.04, label="input PIP")
        if row["image"] is not None and mean.min() < 0.5 < mean.max():
            ax_img.contour(mean, levels=[0.5], colors=[method_colour(PIP_METHOD)], linewidths=1.0)
            ax_img.set_title(f"{exp}: mean training image\n(contour: mean PIP = 0.5)", fontsize=9)
        kept = int((mean > 0.5).sum())
        ax_pip.set_title(f"{method}: mean input PIP over {len(row['pips'])} seeds\n{kept} of {mean.size} pixels > 0.5",
                         fontsize=9)
        ax_pip.set_xticks([])
        ax_pip.set_yticks([])
    _finish(fig, prov, "input-pixel inclusion probabilities (feature importance)",
            ["Input PIP: the posterior probability that a pixel feeds at least one included first-layer weight "
             "(1 - prod(1 - phi) over its weights), of each run's natural fit; mean over seeds."])
    return fig


# --------------------------------------------------------------------------- simulation PIPs

def truth_experiments(runs: pd.DataFrame, arts: dict) -> list[str]:
    """Experiments whose true features are known (from the frozen facts, else FNR in the table)."""
    meta = arts.get("meta")
    if meta is not None:
        return sorted(e for e, f in meta.items() if f.get("true_support") is not None)
    return sorted(runs.loc[runs["fnr"].notna(), "experiment"].unique()) if "fnr" in runs else []


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


def simulation_pips(runs: pd.DataFrame, prov: dict, arts: dict):
    """Per experiment with known true features: (left) every replicate's input PIP of every
    feature (dots), their mean (black ticks), true features in colour; (right) how often each
    true feature is selected by each method's natural selection over the replicates."""
    exps = truth_experiments(runs, arts)
    n = max(1, len(exps))
    fig, axes = plt.subplots(n, 2, figsize=(14, 3.9 * n + 1.0), squeeze=False, gridspec_kw={"width_ratios": [2.2, 1]})
    if not exps:
        _say(axes[0, 0], "no experiment with known true features in the frozen data")
        axes[0, 1].set_visible(False)
    meta = arts.get("meta") or {}
    for (ax, ax_found), exp in zip(axes, exps):
        facts = meta.get(exp, {})
        support = facts.get("true_support")
        stacks = _pip_stack(arts, exp) if arts.get("arrays") is not None else {}
        pips = stacks.get(PIP_METHOD)
        if pips is None or support is None:
            what = f"Per-feature input PIPs of {exp} are"
            _say(ax, _missing_artefacts_text(arts, what) if arts.get("arrays") is None or arts.get("meta") is None
                 else f"{exp}: no {PIP_METHOD} run with input PIPs in the frozen data", 70)
        else:
            p = pips.shape[1]
            idx = np.arange(1, p + 1)
            true = np.zeros(p, dtype=bool)
            true[list(support)] = True
            rng = np.random.default_rng(0)  # jitter only: the same figure every time
            for group, colour, label in ((~true, "0.55", f"noise features ({int((~true).sum())})"),
                                         (true, method_colour(PIP_METHOD), f"true features ({int(true.sum())})")):
                if not group.any():
                    continue
                xs = np.repeat(idx[group][None, :], len(pips), 0) + rng.uniform(-0.25, 0.25, (len(pips), int(group.sum())))
                ax.scatter(xs.ravel(), pips[:, group].ravel(), s=7 if group is true else 4, color=colour, alpha=0.5,
                           lw=0, label=label)
            ax.scatter(idx, pips.mean(0), marker="_", s=60 if p <= 50 else 25, color="k", lw=1.2,
                       label=f"mean over {len(pips)} replicates")
            for j in support:
                ax.annotate(f"x{j + 1}", (j + 1, 1.02), ha="center", va="bottom", fontsize=7,
                            color=method_colour(PIP_METHOD))
            ax.axhline(0.5, color="k", ls=":", lw=0.8)
            ax.set_xlim(0.2, p + 0.8)
            ax.set_ylim(-0.03, 1.1)
            ax.set_xlabel(f"input feature (1..{p})")
            ax.set_ylabel("input PIP")
            noise_max = pips[:, ~true].max() if (~true).any() else float("nan")
            ax.set_title(f"{exp}: {PIP_METHOD} input PIPs, {len(pips)} replicates (largest noise PIP {noise_max:.2f})",
                         fontsize=9)
            ax.legend(fontsize=7, frameon=False, loc="center right")
        _draw_found(ax_found, runs, arts, exp, support, pips)
    _finish(fig, prov, "feature selection where the truth is known: input PIPs and true features found",
            ["Input PIP: the probability that a feature feeds at least one included first-layer weight (natural fit). "
             "Found: the feature is in the method's natural selection (an input with a kept first-layer weight into a "
             "unit connected to the outputs, Bai et al.'s rule); methods without a selection of their own are absent."])
    return fig


def _draw_found(ax, runs: pd.DataFrame, arts: dict, exp: str, support, pips) -> None:
    features = arts.get("features")
    n_features = ((arts.get("meta") or {}).get(exp) or {}).get("n_features")
    rates = (found_rates(features, exp, list(support), n_features) if features is not None and support is not None
             else pd.DataFrame())
    if rates.empty and pips is not None and support is not None:  # the selection by PIP > 0.5 alone
        rates = pd.DataFrame([{"runs": len(pips), **{f"x{j + 1}": float((pips[:, j] > 0.5).mean()) for j in support}}],
                             index=pd.Index([f"{PIP_METHOD} (PIP > 0.5)"], name="method"))
    if not rates.empty:
        cols = [c for c in rates.columns if c != "runs"]
        width = 0.8 / len(rates)
        for i, (method, row) in enumerate(rates.iterrows()):
            base = method.split(" ")[0]
            xs = np.arange(len(cols)) + (i - (len(rates) - 1) / 2) * width
            ax.bar(xs, row[cols].astype(float), width=width, color=method_colour(base), label=f"{method} ({int(row['runs'])} runs)")
        ax.set_xticks(np.arange(len(cols)), [c if c != "noise" else "noise\n(mean share)" for c in cols])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of replicates selecting it")
        ax.set_title(f"{exp}: how often each true feature is found", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="lower left")
        ax.grid(axis="y", alpha=0.3)
        return
    # nothing per feature: what the table has is the false-negative rate of each selection
    g = runs[(runs["experiment"] == exp) & (runs["selection"] == "natural") & runs["fnr"].notna()] if "fnr" in runs else runs.iloc[:0]
    if g.empty:
        _say(ax, f"{exp}: no natural selection with a false-negative rate in the frozen data", 45)
        return
    methods = method_order(g["method"].unique())
    for i, method in enumerate(methods):
        found = 1 - g.loc[g["method"] == method, "fnr"].astype(float).to_numpy()
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(found))
        ax.scatter(np.full(len(found), i) + jitter, found, color=method_colour(method), s=14, alpha=0.7, lw=0)
        ax.plot([i - 0.3, i + 0.3], [found.mean()] * 2, color="k", lw=1.2)
    ax.set_xticks(range(len(methods)), methods, fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("fraction of true features found (1 - FNR)")
    ax.set_title(f"{exp}: true features found per replicate", fontsize=9)
    ax.text(0.5, 0.02, _fill("Which feature was missed is not in the frozen data (paper/data/features.csv); "
                                     + REFREEZE, 55), transform=ax.transAxes, ha="center", va="bottom", fontsize=6.5,
            color="0.25")


# --------------------------------------------------------------------------- structured compression

def _nodes(values: pd.Series) -> np.ndarray:
    """'300-100' strings -> (rows, layers) float array (NaN where a row has fewer layers)."""
    lists = [[int(v) for v in str(s).split("-")] if isinstance(s, str) and s else [] for s in values]
    width = max((len(v) for v in lists), default=0)
    out = np.full((len(lists), width), np.nan)
    for i, v in enumerate(lists):
        out[i, :len(v)] = v
    return out


def layer_widths(g: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Units per hidden layer of one experiment's net: the dense network's (every unit kept),
    else the most any run kept (then said so)."""
    dense = g[(g["method"] == "dense")]
    if not dense.empty:
        return np.nanmax(_nodes(dense["nodes_kept"]), axis=0), "of the dense net's"
    return np.nanmax(_nodes(g["nodes_kept"]), axis=0), "of the most any run kept (no dense run)"


def nodes_kept(runs: pd.DataFrame, prov: dict):
    """Structured compression: the fraction of each hidden layer's units (convolution
    channels) still connected, against sparsity, every method; mean over seeds, bars from the
    fewest to the most any seed kept; natural selections as stars, dense as a dashed line."""
    exps = _experiments(runs)
    layers = {e: _nodes(runs.loc[runs["experiment"] == e, "nodes_kept"]).shape[1] if "nodes_kept" in runs else 0
              for e in exps}
    cols = max([1] + list(layers.values()))
    fig, axes = plt.subplots(max(1, len(exps)), cols, figsize=(4.6 * cols, 3.4 * max(1, len(exps)) + 1.0), squeeze=False)
    for r, exp in enumerate(exps):
        g = runs[runs["experiment"] == exp]
        if layers[exp] == 0:
            _say(axes[r, 0], f"{exp}: no nodes_kept in the frozen table; {REFREEZE}")
            for ax in axes[r, 1:]:
                ax.set_visible(False)
            continue
        widths, whose = layer_widths(g)
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
            _logit_x(ax, xs + [X_FLOOR], ticks)
            ax.set_ylim(-0.03, 1.05)
            ax.set_ylabel("fraction of units kept")
            ax.set_title(f"{exp}: hidden layer {k + 1} ({int(widths[k])} units {whose})", fontsize=9)
            ax.grid(alpha=0.3)
            if k == 0:
                _legend(ax, loc="lower left")
    if not exps:
        _say(axes[0, 0], "no runs in the frozen table")
    _finish(fig, prov, "structured compression: units kept per layer against sparsity",
            ["A unit (convolution channel) is kept when it has a nonzero incoming weight or bias and a nonzero "
             "outgoing weight. Points: mean over seeds at the sparsity reached; bars: fewest to most any seed kept; "
             "stars: each method's natural selection; dashed: dense."])
    return fig


# --------------------------------------------------------------------------- calibration

CALIBRATION = [("ece", "ECE (15 bins)"), ("test_nll", "test NLL (nats per example)")]


def calibration(runs: pd.DataFrame, prov: dict):
    """Calibration of classifiers against sparsity: ECE (top row) and test NLL (bottom row),
    one column per classification experiment; every method's point network (the exported,
    masked net: lines with Student-t 95% CI bands over seeds, natural selections as stars)
    and spike_slab's BMA (dashed, hollow markers) wherever the records carry it."""
    exps = _experiments(runs, "classification")
    fig, axes = plt.subplots(2, max(1, len(exps)), figsize=(5.0 * max(1, len(exps)), 8.0 + 1.0), squeeze=False)
    notes = []
    for c, exp in enumerate(exps):
        g = runs[runs["experiment"] == exp]
        ticks = sorted(set(g["target_sparsity"].dropna().round(4)))
        for r, (col, label) in enumerate(CALIBRATION):
            ax = axes[r, c]
            if col not in g or g[col].isna().all():
                _say(ax, f"{exp}: {col} not in the frozen table; {REFREEZE}")
                continue
            xs = _draw_metric(ax, g, col, bma=False)
            message = None
            bma = f"{col}_bma"
            if bma not in g:
                message = f"{PIP_METHOD} BMA {col}: not in the frozen table (frozen before records carried {bma}); {REFREEZE}"
            elif g.loc[g["method"] == PIP_METHOD, bma].isna().all():
                message = f"{PIP_METHOD} BMA {col}: not measured in these runs"
            else:
                xs += _draw_metric(ax, g[g["method"] == PIP_METHOD], bma, bma=True)
            _logit_x(ax, xs + [X_FLOOR], ticks)
            shown = [y for ln in ax.get_lines() for y in np.atleast_1d(ln.get_ydata())]
            ax.set_ylabel(label + _scale(ax, "y", shown))
            ax.set_title(f"{exp}: {label.split(' (')[0]}" + (f"\n{_fill(message, 75)}" if message else ""),
                         fontsize=9 if not message else 7.5)
            ax.grid(alpha=0.3)
            if c == 0:
                _legend(ax, loc="best")
    if not exps:
        for ax in axes.flat:
            _say(ax, "no classification experiment in the frozen table (ECE is defined for classifiers)")
    ft = sorted(runs.loc[runs["selection"] == "target", "finetune_epochs"].dropna().unique()) if "finetune_epochs" in runs else []
    if any(f > 0 for f in ft):
        notes.append("The BMA of a matched target is measured only without fine-tuning (a fine-tuned net has no posterior); "
                     "with fine-tuning it appears at the natural selection only.")
    notes.append(f"Lines: point network (the exported, masked posterior mean or trained weights) at each target, "
                 f"bands: {CI_NAME} over seeds; stars: natural selections; dashed, hollow: {PIP_METHOD}'s BMA "
                 f"(MC average of sampled masked networks). Regression experiments: tables/results.")
    _finish(fig, prov, "calibration against sparsity: ECE and NLL, point network and BMA", notes)
    return fig


def _draw_metric(ax, g: pd.DataFrame, col: str, bma: bool) -> list[float]:
    """Lines (targets) and stars (natural) of ``col`` per method; returns the x positions."""
    xs = []
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
            xs += p["reached"].tolist()
        nat = m[(m["selection"] == "natural") & m[col].notna()]
        if nat.empty:
            continue
        y = describe(metric_values(nat, col).tolist())
        x = float(nat["sparsity"].mean())
        if method == "dense" or x == 0:
            what = "" if method == "dense" else " natural (0% sparse)"
            ax.axhline(y["mean"], color=colour, ls="--" if not bma else ":", lw=1, label=f"{method}{tag}{what}")
            continue
        shown = max(x, X_FLOOR)
        ax.plot([shown], [y["mean"]], marker="*" if x >= X_FLOOR else "<", ms=12 if x >= X_FLOOR else 9, color=colour,
                mec="k", ls="none", mfc="white" if bma else colour, label=f"{method}{tag} natural ({100 * x:.1f}% sparse)")
        xs.append(shown)
    return xs


# --------------------------------------------------------------------------- cost

def run_seconds(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (experiment, method, seed): ``seconds`` = the sum of the distinct
    ``train_seconds`` of its records (one model per run, or one per target for methods that
    train per target), ``device``."""
    rows = []
    for (exp, method, seed), g in runs.groupby(["experiment", "method", "seed"], sort=True):
        secs = g["train_seconds"].dropna().astype(float).unique()
        rows.append(dict(experiment=exp, method=method, seed=int(seed), seconds=float(secs.sum()) if len(secs) else math.nan,
                         models=len(secs), device=", ".join(sorted(g["device_name"].dropna().astype(str).unique()))
                         if "device_name" in g else ""))
    return pd.DataFrame(rows, columns=["experiment", "method", "seed", "seconds", "models", "device"])


def train_time(runs: pd.DataFrame, prov: dict, columns: int = 3):
    """The price of each method: training wall time per run (log scale), one panel per
    experiment, a bar per method at the mean over seeds with every seed as a dot, labelled
    with the mean and its ratio to dense."""
    if "train_seconds" not in runs:
        fig, axes = _grid(1, 1)
        _say(axes[0, 0], f"train_seconds not in the frozen table; {REFREEZE}")
        _finish(fig, prov, "training time per run")
        return fig
    per_run = run_seconds(runs)
    exps = sorted(per_run["experiment"].unique())
    fig, axes = _grid(len(exps), columns, size=(5.2, 0.55 * max(1, per_run["method"].nunique()) + 1.6))
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
        ax.set_title(f"{exp}: {g['seed'].nunique()} seeds; {device}", fontsize=9)
        ax.set_xlabel("training time per run (s, log scale)")
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(exps):]:
        ax.set_visible(False)
    if not exps:
        _say(axes[0, 0], "no runs in the frozen table")
    _finish(fig, prov, "the price of each method: training time per run",
            ["Wall time of training only (no evaluation, no fine-tuning); runs trained stacked in one job share its "
             "wall time equally; a method that trains once per target (gradual magnitude pruning) sums its trainings. "
             "Bars: mean over seeds; dots: seeds. Jobs that shared a device run slower than alone: see the provenance note."])
    return fig
