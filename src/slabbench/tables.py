"""Tables (markdown and LaTeX, via tabulate): mean ± sd over seeds per experiment, method
and sparsity target."""

from __future__ import annotations

import math

import pandas as pd
from tabulate import tabulate

from slabbench.plotting import method_order

#: (column in runs.csv, header, scale, digits); a negative scale turns accuracy into error %
COLUMNS = {
    "classification": [("sparsity", "sparsity %", 100, 2), ("test_accuracy", "test error %", -100, 2),
                       ("test_nll", "NLL (nats)", 1, 3), ("ece", "ECE", 1, 3), ("compression", "compression ×", 1, 1),
                       ("flops_kept", "FLOPs kept %", 100, 2)],
    "regression": [("sparsity", "sparsity %", 100, 2), ("test_rmse", "test RMSE (units of y)", 1, 3), ("test_nll", "NLL (nats)", 1, 3),
                   ("compression", "compression ×", 1, 1), ("features_kept", "features", 1, 1),
                   ("fnr", "FNR", 1, 3), ("fpr", "FPR", 1, 3)],
}
FEATURE_COLUMNS = [("fnr", "FNR", 1, 3), ("fpr", "FPR", 1, 3), ("test_rmse", "test RMSE", 1, 3),
                   ("sparsity", "sparsity %", 100, 2), ("features_kept", "features kept", 1, 1)]
PM = {"markdown": " ± ", "latex": r" $\pm$ "}


def _cell(values: pd.Series, scale: float, digits: int, pm: str) -> str:
    x = values.dropna().astype(float)
    if x.empty:
        return "–"
    x = (1 - x) * -scale if scale < 0 else x * scale
    if len(x) == 1:
        return f"{x.iloc[0]:.{digits}f}"
    sd = x.std(ddof=1)
    return f"{x.mean():.{digits}f}{pm}{sd:.{digits}f}" if math.isfinite(sd) else f"{x.mean():.{digits}f}"


def _rows(runs: pd.DataFrame, columns, pm: str) -> tuple[list[str], list[list[str]]]:
    """One row per method x selection (natural, then each target), one column per metric."""
    cols = [c for c in columns if runs[c[0]].notna().any()]
    headers = ["method", "selection", *[c[1] for c in cols], "seeds"]
    rows = []
    for method in method_order(runs["method"].unique()):
        g = runs[runs["method"] == method]
        for (selection, target), gg in g.groupby(["selection", "target_sparsity"], dropna=False, sort=True):
            label = "natural" if selection == "natural" else f"s = {target:g}"
            rows.append([method, label, *[_cell(gg[c], s, d, pm) for c, _, s, d in cols], str(gg["seed"].nunique())])
    return headers, rows


def _section(title: str, headers, rows, fmt: str) -> str:
    if fmt == "markdown":
        return f"## {title}\n\n" + tabulate(rows, headers=headers, tablefmt="github") + "\n"
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    body = tabulate([[esc(c) for c in r] for r in rows], headers=[esc(h) for h in headers], tablefmt="latex_raw")
    return "\\begin{table}[t]\n\\centering\n\\caption{" + esc(title) + " (mean $\\pm$ sd over seeds)}\n" + body + "\n\\end{table}\n"


def _document(sections: list[str], heading: str, fmt: str) -> str:
    head = f"# {heading}\n\n" if fmt == "markdown" else f"% {heading}\n"
    return head + "\n".join(sections)


def render(runs: pd.DataFrame, fmt: str) -> str:
    """All experiments as one document: ``fmt`` is "markdown" or "latex"."""
    sections = []
    for exp, g in runs.groupby("experiment", sort=True):
        headers, rows = _rows(g, COLUMNS[g["task"].iloc[0]], PM[fmt])
        sections.append(_section(f"{exp}: {g['dataset'].iloc[0]}, {g['model'].iloc[0]}", headers, rows, fmt))
    return _document(sections, "slabbench results (mean ± sd over seeds)", fmt)


def render_feature_selection(runs: pd.DataFrame, fmt: str) -> str:
    """Feature selection (FNR over the true features, FPR over the noise features, RMSE,
    sparsity) of every experiment whose true support is known."""
    sections = []
    for exp, g in runs[runs["fnr"].notna()].groupby("experiment", sort=True):
        headers, rows = _rows(g, FEATURE_COLUMNS, PM[fmt])
        sections.append(_section(f"{exp}: feature selection", headers, rows, fmt))
    if not sections:
        sections = ["No experiment with a known true support.\n"]
    return _document(sections, "Feature selection (mean ± sd over seeds)", fmt)
