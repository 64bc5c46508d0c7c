"""Figures (matplotlib, seaborn's palette): test metric vs sparsity per experiment, one line
per method with a Student-t 95% CI band of the mean over seeds; fixed method -> colour mapping
across every figure."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatter, NullFormatter  # noqa: E402

from slabbench.aggregate import check_runs, metric_values, nan_metric_names  # noqa: E402
from slabbench.stats import CI_NAME, describe  # noqa: E402

#: the fixed method order and colours (methods not listed get the remaining palette colours)
KNOWN_METHODS = ["dense", "magnitude", "spike_slab", "sparse_vd", "l0"]
_PALETTE = sns.color_palette("colorblind", 10)
METHOD_COLOURS = {"dense": "0.3", "magnitude": _PALETTE[0], "spike_slab": _PALETTE[3],
                  "sparse_vd": _PALETTE[2], "l0": _PALETTE[4]}  # l0 not orange: too near spike_slab's vermilion
_FREE = [_PALETTE[i] for i in (9, 6, 5, 8, 1)]  # colours no known method uses (orange last: near vermilion)


def _family(method: str) -> str | None:
    """The known method a name extends (``spike_slab_k4`` -> ``spike_slab``), or ``None``."""
    fits = [k for k in KNOWN_METHODS if method.startswith(k + "_")]
    return max(fits, key=len) if fits else None


def method_order(methods) -> list[str]:
    """Known methods in their fixed order, each followed by the names that extend it (its
    variants, e.g. ``spike_slab_k4``, sorted), then every other method sorted by name."""
    methods = list(dict.fromkeys(methods))
    out = []
    for k in KNOWN_METHODS:
        out += [k] if k in methods else []
        out += sorted(m for m in methods if m not in KNOWN_METHODS and _family(m) == k)
    return out + sorted(m for m in methods if m not in out)


#: how dark a variant's shade of its base method's colour is (fraction of the colour kept)
_SHADES = (0.55, 0.8, 0.35)


def _shade(colour, k: int):
    rgb = matplotlib.colors.to_rgb(colour)
    return tuple(c * _SHADES[k % len(_SHADES)] for c in rgb)


def method_colour(method: str, present=None):
    """Fixed colour of a known method.  A variant of a known method (``spike_slab_k4``) gets a
    darker shade of its base's colour (drawn dashed, see :func:`method_linestyle`); any other
    method a colour no known method uses.  Both are chosen by name (the same in every figure);
    among the methods ``present`` in one figure, a name whose choice an earlier one (in
    :func:`method_order`) already took gets the next free one."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    family = _family(method)
    n = len(_SHADES) if family else len(_FREE)
    pick = (lambda k: _shade(METHOD_COLOURS[family], k)) if family else (lambda k: _FREE[k])
    k = sum(map(ord, method)) % n
    if present is not None:
        taken = set()
        for m in method_order(present):
            if m in METHOD_COLOURS or _family(m) != family:
                continue
            j = sum(map(ord, m)) % n
            while j in taken and len(taken) < n:
                j = (j + 1) % n
            if m == method:
                return pick(j)
            taken.add(j)
    return pick(k)


def method_linestyle(method: str):
    """Solid for a method, dashed for a variant of a known method (``spike_slab_k4``), so it
    reads apart from its base even in grey."""
    return (0, (5, 2)) if _family(method) else "-"


def metric_for(task: str) -> tuple[str, str]:
    return ("test_error", "test error (%)") if task == "classification" else ("test_rmse", "test RMSE")


#: the range of each metric (intervals are cut to it: a Student-t band of an error near 100%
#: would otherwise promise errors above 100%, one of an RMSE near 0 negative RMSEs)
METRIC_RANGE = {"test_error": (0.0, 100.0), "test_accuracy": (0.0, 1.0), "ece": (0.0, 1.0), "ece_bma": (0.0, 1.0)}
#: metrics that are never negative (RMSE, NLL with the fixed-variance or categorical likelihoods here)
NONNEGATIVE = ("test_rmse", "test_rmse_bma", "test_nll", "test_nll_bma")
RANGE_NOTE = ("intervals cut at the metric's range (error 0-100%, RMSE, NLL and ECE >= 0): the Student-t interval "
              "is symmetric, the metric is not")


def metric_range(metric: str) -> tuple[float, float]:
    """(low, high) of ``metric``'s values ((-inf, inf) for one without a known range)."""
    if metric in METRIC_RANGE:
        return METRIC_RANGE[metric]
    return (0.0, math.inf) if metric in NONNEGATIVE or metric.startswith(("test_rmse", "test_nll")) else (-math.inf, math.inf)


def no_path(g: pd.DataFrame) -> pd.Series:
    """Per row: True for a net with no path from input to output (a hidden layer with no unit
    kept in ``nodes_kept``, an empty physical network in ``physical_empty`` — which follows the
    paths from the inputs, so it also catches units that are fed by their bias alone — or no
    weight left): its prediction is a constant whatever the input."""
    out = pd.Series(False, index=g.index)
    if "nodes_kept" in g:  # "300-100" strings; one hidden layer reads back from a CSV as a number
        out |= g["nodes_kept"].map(lambda s: (any(p.strip() == "0" for p in s.split("-")) if isinstance(s, str)
                                              else s == s and s is not None and float(s) == 0))
    if "physical_empty" in g:
        out |= g["physical_empty"].map(lambda v: str(v).lower() in ("true", "1", "1.0"))
    if "nonzero_weights" in g:
        out |= g["nonzero_weights"].astype(float).eq(0)
    return out


def target_points(targets: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One point per method and sparsity target (never pooled across targets, even where two
    targets reach the same sparsity): ``reached`` (mean sparsity of its runs), the metric's
    ``mean``, ``ci_low``, ``ci_high`` (Student-t 95%, cut at the metric's range, see
    :func:`metric_range`), ``n`` (finite runs), ``diverged`` (runs whose metric is NaN) and
    ``no_path`` (runs whose net has no path from input to output, :func:`no_path`)."""
    rows = []
    lo, hi = metric_range(metric)
    empty = no_path(targets)
    for (method, target), g in targets.groupby(["method", "target_sparsity"], sort=True):
        d = describe(metric_values(g, metric).tolist())
        rows.append(dict(method=method, target_sparsity=target, reached=float(g["sparsity"].mean()), mean=d["mean"],
                         ci_low=max(d["ci_low"], lo), ci_high=min(d["ci_high"], hi), n=d["n"], diverged=d["n_nan"],
                         no_path=int(empty[g.index].sum())))
    return pd.DataFrame(rows, columns=["method", "target_sparsity", "reached", "mean", "ci_low", "ci_high", "n", "diverged",
                                       "no_path"])


def _with_error(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``test_error`` = 100 (1 - accuracy); a diverged accuracy stays diverged."""
    runs = runs.copy()
    runs["test_error"] = 100 * (1 - runs["test_accuracy"].astype(float))
    if "nan_metrics" in runs:  # read from a CSV, a column without a name is all NaN (float)
        names = nan_metric_names(runs)
        runs["nan_metrics"] = names.where(~names.str.split(";").apply(lambda n: "test_accuracy" in n), names + ";test_error")
    return runs


#: sparsities marked on a logit axis that has fewer than three targets to mark
REFERENCE_TICKS = (0.5, 0.8, 0.95, 0.99, 0.999)


#: mantissas of labelled log-axis ticks, finest first: the first set that gives at most 8 ticks
LOG_TICK_SETS = ((1, 1.2, 1.5, 2, 3, 4, 5, 6, 8), (1, 1.5, 2, 3, 5), (1, 2, 5), (1,))


def log_ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    """Labelled ticks of a log axis over [lo, hi]: the finest of ``LOG_TICK_SETS`` that gives at
    most ``most`` ticks inside, so that a panel spanning under a decade (errors of 1.2-12%, or
    8-27%) still reads its values (matplotlib's default labels only 10, 20 there)."""
    if not (0 < lo < hi):
        return []
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    for mantissas in LOG_TICK_SETS:
        ticks = [float(f"{m * 10.0 ** k:.6g}") for k in decades for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) <= most:
            return ticks
    return ticks


def sparsity_ticks(ticks, xs) -> list[float]:
    """The ticks of a logit sparsity axis: ``ticks`` (the targets), and where there are fewer
    than three, the :data:`REFERENCE_TICKS` inside the points' range ``xs`` that do not crowd
    them (0.8 apart in logit), so that a point away from the targets can be read off."""
    ticks = sorted(float(t) for t in ticks)
    xs = [float(x) for x in xs]
    if len(ticks) >= 3 or not xs:
        return ticks
    logit = lambda v: math.log(v / (1 - v))  # noqa: E731
    return sorted(ticks + [t for t in REFERENCE_TICKS if min(xs) <= t <= max(xs)
                           and all(abs(logit(t) - logit(u)) > 0.8 for u in ticks)])


def plot_experiment(runs: pd.DataFrame, title: str | None = None, ax=None, x_floor: float | None = None,
                    log_y: bool = False, ylim_from_means: bool = False, legend: str | None = "inside"):
    """Test metric vs sparsity reached (logit axis; ticks at the targets), a line per method
    through its sparsity targets (one point per target, at the mean sparsity its runs reached,
    with a Student-t 95% CI band); natural selections as points with 95% CI bars at their
    achieved sparsity; dense as a horizontal band; for regression the constant predictor
    (training mean) as a dotted reference line.  Diverged runs are not drawn and are counted
    in the legend.  Draws on ``ax`` when given (a panel of a larger figure), else on a new
    figure; returns the figure.
    ``x_floor``: a natural selection sparser than nothing but below this is drawn at the
    floor as a left-pointing triangle labelled with its sparsity (keeps the axis on the
    targets); ``log_y``: log-scaled metric axis.
    Intervals are cut at the metric's range (:func:`metric_range`); a target whose runs
    include a net with no path from input to output (:func:`no_path`) is drawn as a cross.
    ``ylim_from_means``: the metric axis spans the drawn means (with a margin), so one wide
    band cannot squash the other curves (bands may run past the panel's edge);
    ``legend``: "inside" (best place), "outside" (right of the panel) or None."""
    check_runs(runs)
    task = runs["task"].iloc[0]
    metric, label = metric_for(task)
    runs = _with_error(runs) if task == "classification" else runs.copy()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    targets = runs[runs["selection"] == "target"]
    # each point at the sparsity its runs reached (mean over seeds), not at the target: a method
    # may prune more (L0 bakes its closed gates into the exported net, e.g. 53% at target 0.5)
    points = target_points(targets, metric)
    lo_range, hi_range = metric_range(metric)
    means: list[float] = []
    order = method_order(runs["method"].unique())
    colours = {m: method_colour(m, order) for m in order}  # one choice per method for the whole figure
    for method in [m for m in order if m in set(points["method"])]:
        p = points[points["method"] == method].sort_values("target_sparsity")
        diverged = int(p["diverged"].sum())
        note = f" ({diverged} diverged runs not drawn)" if diverged else ""
        ax.plot(p["reached"], p["mean"], marker="o", color=colours[method], ls=method_linestyle(method),
                label=f"{method}{note}", markevery=[i for i, e in enumerate(p["no_path"]) if not e])
        ax.fill_between(p["reached"], p["ci_low"], p["ci_high"], color=colours[method], alpha=0.2, lw=0)
        empty = p[p["no_path"] > 0]
        if not empty.empty:
            ax.plot(empty["reached"], empty["mean"], marker="X", ms=9, mfc="white", mec=colours[method], mew=1.6,
                    ls="none", zorder=4)
        means += p["mean"].tolist()
    if (points["no_path"] > 0).any():
        ax.plot([], [], marker="X", ms=8, mfc="white", mec="k", ls="none", label="no path from input to output")
    natural = runs[runs["selection"] == "natural"]
    for method, g in natural.groupby("method", sort=False):
        y, x = describe(metric_values(g, metric).tolist()), describe(g["sparsity"].tolist())
        note = f", {y['n_nan']} diverged" if y["n_nan"] else ""
        y["ci_low"], y["ci_high"] = max(y["ci_low"], lo_range), min(y["ci_high"], hi_range)
        means.append(y["mean"])
        if method == "dense" or x["mean"] == 0:
            ax.axhline(y["mean"], color=colours[method], ls="--", lw=1, label=f"{method}{note}")
            ax.axhspan(y["ci_low"], y["ci_high"], color=colours[method], alpha=0.12, lw=0)
        elif x_floor is not None and x["mean"] < x_floor:
            ax.plot([x_floor], [y["mean"]], marker="<", ms=10, color=colours[method], mec="k", ls="none",
                    label=f"{method} (natural, {100 * x['mean']:.1f}% sparse{note})")
        else:
            yerr = [[y["mean"] - y["ci_low"]], [y["ci_high"] - y["mean"]]] if y["n"] > 1 else None
            xerr = [[x["mean"] - x["ci_low"]], [x["ci_high"] - x["mean"]]] if x["n"] > 1 else None
            ax.errorbar([x["mean"]], [y["mean"]], yerr=yerr, xerr=xerr, fmt="*", ms=11,
                        color=colours[method], mec="k",
                        label=f"{method} (natural, {100 * x['mean']:.1f}% sparse{note})")  # often between the ticks
    if task == "regression" and "test_rmse_constant" in runs and runs["test_rmse_constant"].notna().any():
        ref = runs.dropna(subset=["test_rmse_constant"]).drop_duplicates("seed")["test_rmse_constant"].mean()
        ax.axhline(ref, color="k", ls=":", lw=1, label=f"constant predictor (training mean), {ref:.2f}")
        means.append(ref)
    targets = targets.assign(reached=targets.groupby(["method", "target_sparsity"])["sparsity"].transform("mean"))
    shown = natural.groupby("method")["sparsity"].transform("mean")
    keep = (natural["sparsity"] > 0) & ((shown >= x_floor) if x_floor is not None else True)
    xs = pd.concat([targets["reached"], natural.loc[keep, "sparsity"]]).dropna()
    if x_floor is not None:
        xs = pd.concat([xs, pd.Series([x_floor])])
    if not xs.empty and xs.min() > 0 and xs.max() < 1:
        ax.set_xscale("logit")  # stretches the region near 1 (extreme sparsity)
        ticks = sparsity_ticks(sorted(set(targets["target_sparsity"].dropna().round(4))) or sorted(xs.round(3).unique()), xs)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if log_y and task == "classification":  # errors span 1% to 90%; RMSEs stay linear
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        label += ", log scale"
    shown = [m for m in means if m == m and abs(m) != math.inf]
    if ylim_from_means and shown:
        lo, hi = min(shown), max(shown)
        if ax.get_yscale() == "log" and lo > 0:
            ax.set_ylim(lo / 1.25, hi * 1.25)
        else:
            pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 1.0
            ax.set_ylim(max(lo - pad, lo_range), min(hi + pad, hi_range))
    if ax.get_yscale() == "log" and len(ticks := log_ticks(*ax.get_ylim())) >= 2:
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sparsity (fraction of weights pruned; logit scale)")
    ax.set_ylabel(label)
    if title is None:
        experiment, dataset, model = (runs[k].iloc[0] for k in ("experiment", "dataset", "model"))
        title = f"{experiment}: {model}" if experiment == dataset else f"{experiment}: {dataset}, {model}"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    alone = len(fig.axes) == 1  # a panel of a larger figure says this in its caption
    if legend is not None:
        where = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0) if legend == "outside" else {}
        ax.legend(fontsize=8, frameon=True, framealpha=0.85, edgecolor="none", title_fontsize=8,  # readable over the data
                  title=f"bands, bars: {CI_NAME} over {runs['seed'].nunique()} seeds" if alone else None, **where)
    if alone:
        fig.tight_layout()
    return fig


def save(fig, png: str, pdf: str | None = None) -> None:
    """Save ``fig`` atomically as PNG (and PDF)."""
    from slabbench.io import atomic_path

    for path, fmt in ((png, "png"), (pdf, "pdf")):
        if path:
            with atomic_path(path) as tmp:
                # no creation date in the PDF: the same figure gives the same bytes
                fig.savefig(tmp, format=fmt, dpi=150, **({"metadata": {"CreationDate": None}} if fmt == "pdf" else {}))
    plt.close(fig)


def plot_pips(artefacts: list[dict], feature_shape=None, true_support=None, title: str = ""):
    """Spike-and-slab PIPs of one experiment, over seeds: input-feature PIPs (a bar per feature
    with the true features marked, or a map for images) and a histogram of weight PIPs."""
    import numpy as np
    import torch

    inputs = torch.stack([a["pip_input"].float() for a in artefacts]).numpy()  # (seeds, features)
    weights = np.concatenate([torch.cat([v.flatten() for v in a["pip_weight"].values()]).float().numpy() for a in artefacts])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    mean = inputs.mean(0)
    if feature_shape is not None and int(np.prod(feature_shape)) == mean.size:
        im = ax1.imshow(mean.reshape(feature_shape), cmap="viridis", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax1, fraction=0.046, label="input PIP (mean over seeds)")
        ax1.set_xticks([])
        ax1.set_yticks([])
        ax1.set_title("input-pixel PIPs")
    else:
        idx = np.arange(mean.size)
        width = 0.8 if mean.size <= 50 else 1.0  # many features: touching bars stay visible
        bars_title = "input-feature PIPs (bars: mean, dots: seeds)"
        if true_support is None:  # real data: which features matter is not known, none is called noise
            ax1.bar(idx, mean, color="0.6", width=width)
            bars_title = "input-feature PIPs (bars: mean, dots: seeds; true features unknown)"
        else:
            true = np.zeros(mean.size, dtype=bool)
            true[list(true_support)] = True
            for group, colour, label in ((~true, "0.6", "noise features"), (true, method_colour("spike_slab"), "true features")):
                if group.any():  # an empty group would still get a (wrong) legend entry
                    ax1.bar(idx[group], mean[group], color=colour, width=width, label=label)
            # below the axes: bars reach PIP 1 anywhere along them
            ax1.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        for s in range(inputs.shape[0]):
            ax1.scatter(idx, inputs[s], s=4, color="k", alpha=0.3, lw=0)
        ax1.axhline(0.5, color="k", ls=":", lw=1)
        ax1.set_xlabel("input feature")
        ax1.set_ylabel("input PIP")
        ax1.set_ylim(-0.02, 1.02)
        ax1.set_title(bars_title)
    ax2.hist(weights, bins=np.linspace(0, 1, 41), color=method_colour("spike_slab"), log=True)
    ax2.set_xlabel("weight PIP")
    ax2.set_ylabel("weights (log scale)")
    ax2.set_title("weight PIPs, all seeds")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
