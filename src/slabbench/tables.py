"""Tables (markdown and LaTeX, via tabulate): mean ± sd over seeds per experiment, method
and sparsity target."""

from __future__ import annotations

import math

import pandas as pd
from tabulate import tabulate

from slabbench.plotting import method_order

#: (column in runs.csv, header, scale, digits) per task
COLUMNS = {
    "classification": [("sparsity", "sparsity %", 100, 2), ("test_accuracy", "test error %", -100, 2),
                       ("test_nll", "NLL", 1, 3), ("ece", "ECE", 1, 3), ("compression", "compression ×", 1, 1),
                       ("flops_kept", "FLOPs kept %", 100, 2)],
    "regression": [("sparsity", "sparsity %", 100, 2), ("test_rmse", "test RMSE", 1, 3), ("test_nll", "NLL", 1, 3),
                   ("compression", "compression ×", 1, 1), ("features_kept", "features", 1, 1),
                   ("fnr", "FNR", 1, 3), ("fpr", "FPR", 1, 3)],
}


def _cell(values: pd.Series, scale: float, digits: int, pm: str) -> str:
    x = values.dropna().astype(float)
    if x.empty:
        return "–"
    if scale < 0:  # error rate from accuracy
        x = (1 - x) * -scale
    else:
        x = x * scale
    if len(x) == 1:
        return f"{x.iloc[0]:.{digits}f}"
    sd = x.std(ddof=1)
    return f"{x.mean():.{digits}f}{pm}{sd:.{digits}f}" if math.isfinite(sd) else f"{x.mean():.{digits}f}"


def experiment_rows(runs: pd.DataFrame, pm: str = " ± ") -> tuple[list[str], list[list[str]]]:
    task = runs["task"].iloc[0]
    cols = [c for c in COLUMNS[task] if runs[c[0]].notna().any()]
    headers = ["method", "selection", *[c[1] for c in cols], "seeds"]
    rows = []
    order = method_order(runs["method"].unique())
    for method in order:
        g = runs[runs["method"] == method]
        for (selection, target), gg in g.groupby(["selection", "target_sparsity"], dropna=False, sort=True):
            label = "natural" if selection == "natural" else f"s = {target:g}"
            rows.append([method, label, *[_cell(gg[c], s, d, pm) for c, _, s, d in cols], str(gg["seed"].nunique())])
    return headers, rows


def render(runs: pd.DataFrame, fmt: str) -> str:
    """All experiments as one document: ``fmt`` is "markdown" or "latex"."""
    parts = []
    for exp, g in runs.groupby("experiment", sort=True):
        title = f"{exp}: {g['dataset'].iloc[0]}, {g['model'].iloc[0]}"
        if fmt == "markdown":
            headers, rows = experiment_rows(g)
            parts.append(f"## {title}\n\n" + tabulate(rows, headers=headers, tablefmt="github") + "\n")
        else:
            headers, rows = experiment_rows(g, pm=r" $\pm$ ")
            body = tabulate(rows, headers=[h.replace("%", r"\%") for h in headers], tablefmt="latex_raw")
            parts.append("\\begin{table}[t]\n\\centering\n\\caption{" + title.replace("_", r"\_") + " (mean $\\pm$ sd over seeds)}\n"
                         + body.replace("_", r"\_") + "\n\\end{table}\n")
    head = "# slabbench results (mean ± sd over seeds)\n\n" if fmt == "markdown" else ""
    return head + "\n".join(parts)
