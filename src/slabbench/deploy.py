"""Deployable compression: test error (or RMSE) against measured latency and stored bytes of
the physical networks (:mod:`slabbench.physical`), per experiment and method."""

from __future__ import annotations

import math

import pandas as pd

from slabbench.aggregate import check_runs
from slabbench.plotting import _with_error, method_colour, method_order, metric_for

#: (column, axis label) of the figure's panels
PANELS = [("latency_ms_b1", "latency, batch 1 (ms, 1 thread)"), ("latency_ms_b256", "latency, batch 256 (ms, 1 thread)"),
          ("model_bytes_pruned", "physical network (bytes, dense storage)"),
          ("model_bytes_sparse", "physical network (bytes, sparse form)")]
#: (column, header, decimals) of the table besides the metric
TABLE = [("sparsity", "sparsity", 3), ("model_bytes_dense", "bytes dense", 0), ("model_bytes_pruned", "bytes pruned", 0),
         ("model_bytes_sparse", "bytes sparse", 0), ("model_bytes_sparse_fp16", "bytes fp16", 0),
         ("latency_ms_b1", "ms b1", 4), ("latency_ms_b256", "ms b256", 3),
         ("speedup_b1", "× b1", 2), ("speedup_b256", "× b256", 2)]
#: the test metric of the float16-rounded weights, per task (runs made before it have none: "–")
FP16 = {"classification": "test_accuracy_fp16", "regression": "test_rmse_fp16"}


def points(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment × method × selection × target: means over seeds of the metric
    (``metric``: test error % or test RMSE) and of every deployment column, the most common
    ``physical_widths``, ``empty`` (runs with an empty physical network) and ``seeds``."""
    check_runs(runs)
    rows = []
    for exp, g in runs.groupby("experiment", sort=True):
        task = g["task"].iloc[0]
        metric, _ = metric_for(task)
        g = _with_error(g) if task == "classification" else g
        for (method, sel, target), h in g.groupby(["method", "selection", "target_sparsity"], dropna=False, sort=False):
            row = dict(experiment=exp, task=task, method=method, selection=sel,
                       target_sparsity=None if pd.isna(target) else float(target), seeds=int(h["seed"].nunique()),
                       metric=float(h[metric].astype(float).mean()), metric_fp16=_fp16_metric(h, task),
                       empty=int(h["physical_empty"].astype(bool).sum()) if "physical_empty" in h else 0,
                       physical_widths=str(h["physical_widths"].mode().iloc[0]) if "physical_widths" in h and h["physical_widths"].notna().any() else "")
            for col, _, _ in TABLE:
                row[col] = float(h[col].astype(float).mean()) if col in h else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _fp16_metric(h: pd.DataFrame, task: str) -> float:
    """Mean over seeds of the metric with float16 weights (test error % or RMSE), shown only
    where every seed has it (NaN otherwise: runs recorded before it, or a float16 overflow),
    so that it is over the same seeds as the metric beside it."""
    col = FP16[task]
    if col not in h or not h[col].notna().all():
        return math.nan
    v = h[col].astype(float)
    return float((100 * (1 - v) if task == "classification" else v).mean())


def render(runs: pd.DataFrame) -> str:
    """Markdown: per experiment, a row per method and selection (means over seeds)."""
    from tabulate import tabulate

    pts = points(runs)
    out = ["# Deployable compression: physical networks, their bytes and measured latency\n",
           "Means over seeds. bytes: serialized sizes (torch.save). ms: CPU latency of the physical network, one "
           "thread, fastest of its timed blocks; ×: dense network of the same architecture / physical, timed in the same "
           "process. fp16: the sparse form with float16 values, and the test metric with the weights so rounded. "
           "widths: output units per layer of the physical network (most common over seeds).\n"]
    for exp, g in pts.groupby("experiment", sort=True):
        task = g["task"].iloc[0]
        _, label = metric_for(task)
        order = {m: i for i, m in enumerate(method_order(g["method"].unique()))}
        g = g.assign(_o=g["method"].map(order), _t=g["target_sparsity"].fillna(-1.0)).sort_values(["_o", "_t"])
        rows = []
        for _, r in g.iterrows():
            sel = "natural" if r["selection"] == "natural" else f"{r['target_sparsity']:g}"
            fmt = "{:.3f}" if task == "regression" else "{:.2f}"
            cells = [r["method"], sel, fmt.format(r["metric"]), "–" if pd.isna(r["metric_fp16"]) else fmt.format(r["metric_fp16"])]
            for col, _, d in TABLE:
                v = r[col]
                cells.append("–" if pd.isna(v) else (f"{v:,.0f}" if d == 0 else f"{v:.{d}f}"))
            cells += [r["physical_widths"], f"{r['empty']}/{r['seeds']}" if r["empty"] else ""]
            rows.append(cells)
        headers = ["method", "target", label, f"{label}, fp16 weights"] + [h for _, h, _ in TABLE] + ["widths", "empty"]
        out.append(f"## {exp}\n\n" + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n")
    return "\n".join(out)


def plot(runs: pd.DataFrame):
    """A row of panels per experiment: the metric against each of ``PANELS`` (log x), a point
    per method and selection (mean over seeds; natural selections as stars), fixed method
    colours (:func:`slabbench.plotting.method_colour`)."""
    import matplotlib.pyplot as plt

    pts = points(runs)
    exps = sorted(pts["experiment"].unique())
    fig, axes = plt.subplots(len(exps), len(PANELS), figsize=(4 * len(PANELS), 3.2 * len(exps)), squeeze=False)
    order = method_order(pts["method"].unique())
    colours = {m: method_colour(m, order) for m in order}
    for row, exp in zip(axes, exps):
        g = pts[pts["experiment"] == exp]
        _, label = metric_for(g["task"].iloc[0])
        for ax, (col, xlabel) in zip(row, PANELS):
            for method in [m for m in order if m in set(g["method"])]:
                h = g[(g["method"] == method) & g[col].notna()]
                t = h[h["selection"] == "target"].sort_values("target_sparsity")
                ax.plot(t[col], t["metric"], marker="o", ms=4, color=colours[method], lw=1, label=method)
                n = h[h["selection"] == "natural"]
                ax.plot(n[col], n["metric"], marker="*", ms=10, ls="none", color=colours[method], mec="k",
                        label=None if len(t) else method)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.set_title(exp, fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7, frameon=False)
    fig.suptitle("test metric against measured latency and bytes (mean over seeds; stars: natural selection)")
    fig.tight_layout()
    return fig
