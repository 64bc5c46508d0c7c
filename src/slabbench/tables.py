"""Tables (markdown and LaTeX, via tabulate): mean ± sd over seeds per experiment, method
and sparsity target.

A cell is the mean ± sd over the runs that measured the metric; where that is fewer than the
row's seeds it says how many (``n = 2``) and how many diverged (NaN), so nothing is averaged
away in silence.  Compression is the ratio of the means (1 / (1 − mean sparsity)), which
matches the sparsity beside it.  Regression sections end with the constant predictor (the
training mean) as a reference row.  A method's unmasked posterior-sampling predictor
(``test_rmse_sampled``, e.g. Bai et al.'s reported test RMSE) gets a column in experiments
where some run measured it; it exists only for the natural selection.  Rows made with different settings under one label are
refused (:func:`slabbench.aggregate.check_runs`).
"""

from __future__ import annotations

import math

import pandas as pd
from tabulate import tabulate

from slabbench.aggregate import check_runs, compression_of_means, metric_values
from slabbench.plotting import method_order
from slabbench.stats import describe

#: (column in runs.csv, header, scale, digits); a negative scale turns accuracy into error %
COLUMNS = {
    "classification": [("sparsity", "sparsity %", 100, 2), ("test_accuracy", "test error %", -100, 2),
                       ("test_nll", "NLL (nats)", 1, 3), ("ece", "ECE", 1, 3), ("compression", "compression × (of means)", 1, 1),
                       ("flops_kept", "FLOPs kept %", 100, 2)],
    "regression": [("sparsity", "sparsity %", 100, 2), ("test_rmse", "test RMSE (units of y)", 1, 3),
                   ("test_rmse_sampled", "test RMSE, sampled nets unmasked", 1, 3), ("test_nll", "NLL (nats)", 1, 3),
                   ("compression", "compression × (of means)", 1, 1), ("features_kept", "features", 1, 1),
                   ("fnr", "FNR", 1, 3), ("fpr", "FPR", 1, 3)],
}
FEATURE_COLUMNS = [("fnr", "FNR", 1, 3), ("fpr", "FPR", 1, 3), ("fnr_bai", "FNR, Bai's rule", 1, 3), ("fpr_bai", "FPR, Bai's rule", 1, 3),
                   ("train_rmse", "train RMSE", 1, 3), ("test_rmse", "test RMSE", 1, 3),
                   ("test_rmse_sampled", "test RMSE, sampled nets unmasked", 1, 3),
                   ("sparsity", "sparsity %", 100, 2), ("features_kept", "features kept", 1, 1)]
PM = {"markdown": " ± ", "latex": r" $\pm$ "}


def _number(v: float, digits: int) -> str:
    return "∞" if v == math.inf else f"{v:.{digits}f}"


def _cell(g: pd.DataFrame, col: str, scale: float, digits: int, pm: str) -> str:
    """'mean ± sd' of ``col`` over the rows of ``g`` that measured it, with its count when
    fewer than the rows and the diverged (NaN) runs named; '–' when none measured it."""
    if col == "compression":
        c = compression_of_means(g)
        return "–" if math.isnan(c) else _number(c, digits)
    values = metric_values(g, col)
    if values.empty:
        return "–"
    d = describe(((1 - values) * -scale if scale < 0 else values * scale).tolist())
    rows = len(g)
    if d["n"] == 0 and d["n_nan"]:
        return f"diverged ({d['n_nan']} of {rows})"
    if d["n"] == 0:
        text = "∞"
    elif d["n"] == 1:
        text = _number(d["mean"], digits)
    else:
        text = f"{d['mean']:.{digits}f}{pm}{d['sd']:.{digits}f}"
    notes = []
    if 0 < d["n"] < rows:
        notes.append(f"n = {d['n']}")
    if d["n_nan"]:
        notes.append(f"{d['n_nan']} of {rows} diverged")
    if d["n_inf"] and d["n"]:
        notes.append(f"{d['n_inf']} infinite")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _rows(runs: pd.DataFrame, columns, pm: str) -> tuple[list[str], list[list[str]]]:
    """One row per method x selection (natural, then each target), one column per metric;
    regression sections end with the constant predictor's test RMSE."""
    check_runs(runs)
    cols = [c for c in columns if c[0] in runs and (runs[c[0]].notna().any() or len(metric_values(runs, c[0])))]
    headers = ["method", "selection", *[c[1] for c in cols], "seeds"]
    rows = []
    for method in method_order(runs["method"].unique()):
        g = runs[runs["method"] == method]
        for (selection, target), gg in g.groupby(["selection", "target_sparsity"], dropna=False, sort=True):
            label = "natural" if selection == "natural" else f"s = {target:g}"
            rows.append([method, label, *[_cell(gg, c, s, d, pm) for c, _, s, d in cols], str(gg["seed"].nunique())])
    if "test_rmse_constant" in runs and runs["test_rmse_constant"].notna().any():
        # one value per seed (data set replicate), whichever method's row it is read from
        ref = runs.dropna(subset=["test_rmse_constant"]).drop_duplicates("seed")
        cells = [_cell(ref, "test_rmse_constant", s, d, pm) if c == "test_rmse" else "–" for c, _, s, d in cols]
        rows.append(["constant (training mean)", "reference", *cells, str(ref["seed"].nunique())])
    return headers, rows


def _section(title: str, headers, rows, fmt: str) -> str:
    if fmt == "markdown":
        return f"## {title}\n\n" + tabulate(rows, headers=headers, tablefmt="github") + "\n"
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("∞", r"$\infty$")  # noqa: E731
    body = tabulate([[esc(c) for c in r] for r in rows], headers=[esc(h) for h in headers], tablefmt="latex_raw")
    return ("\\begin{table}[t]\n\\centering\n\\caption{" + esc(title) + " (mean $\\pm$ sd over the seeds that measured "
            "each metric; compression: ratio of the means)}\n" + body + "\n\\end{table}\n")


def _document(sections: list[str], heading: str, fmt: str) -> str:
    head = f"# {heading}\n\n" if fmt == "markdown" else f"% {heading}\n"
    return head + "\n".join(sections)


def render(runs: pd.DataFrame, fmt: str, note=None) -> str:
    """All experiments as one document: ``fmt`` is "markdown" or "latex"; ``note``: experiment
    -> text appended to its section's title (e.g. where its runs come from)."""
    sections = []
    for exp, g in runs.groupby("experiment", sort=True):
        headers, rows = _rows(g, COLUMNS[g["task"].iloc[0]], PM[fmt])
        title = f"{exp}: {g['dataset'].iloc[0]}, {g['model'].iloc[0]}" + (note(exp) if note else "")
        sections.append(_section(title, headers, rows, fmt))
    return _document(sections, "slabbench results (mean ± sd over seeds; compression: ratio of the means)", fmt)


def render_feature_selection(runs: pd.DataFrame, fmt: str, note=None) -> str:
    """Feature selection (FNR over the true features, FPR over the noise features, RMSE,
    sparsity) of every experiment whose true support is known; ``note`` as in :func:`render`."""
    sections = []
    for exp, g in runs[runs["fnr"].notna()].groupby("experiment", sort=True):
        headers, rows = _rows(g, FEATURE_COLUMNS, PM[fmt])
        sections.append(_section(f"{exp}: feature selection" + (note(exp) if note else ""), headers, rows, fmt))
    if not sections:
        sections = ["No experiment with a known true support.\n"]
    return _document(sections, "Feature selection (mean ± sd over seeds)", fmt)
