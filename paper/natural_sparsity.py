"""paper/tables/natural_sparsity.md: each Bayesian method's own (natural) selection beside dense,
per experiment (headed with its provenance); from paper/data/ only."""

from __future__ import annotations

import math

import pandas as pd
from tabulate import tabulate

from _common import experiment_title, load, paper_dir
from slabbench.aggregate import check_runs, compression_of_means
from slabbench.io import write_text
from slabbench.paper import source_line
from slabbench.plotting import method_order
from slabbench.published import error, mean_sd, metric


def render(runs: pd.DataFrame, prov: dict) -> str:
    """Markdown: sparsity, test error / RMSE of the masked posterior mean and of the BMA, and,
    where some run measured it, of the method's unmasked posterior-sampling predictor
    (``*_sampled``: what Bai et al. report), FNR, FPR, per method's natural selection."""
    check_runs(runs)
    sections = []
    for exp in sorted(runs["experiment"].unique()):
        g = runs[(runs["experiment"] == exp) & (runs["selection"] == "natural")]
        if g.empty:
            continue
        task = g["task"].iloc[0]
        sampled = "test_accuracy_sampled" if task == "classification" else "test_rmse_sampled"
        sampled = sampled if sampled in g and not metric(g, sampled).empty else None
        rows = []
        for method in method_order(g["method"].unique()):
            m = g[g["method"] == method]
            if task == "classification":
                perf = [mean_sd(error(m)), mean_sd(error(m, "test_accuracy_bma"))]
                perf += [mean_sd(error(m, sampled))] if sampled else []
            else:
                perf = [mean_sd(metric(m, "test_rmse"), digits=3), mean_sd(metric(m, "test_rmse_bma"), digits=3)]
                perf += [mean_sd(metric(m, sampled), digits=3)] if sampled else []
            extra = [mean_sd(metric(m, "fnr"), digits=3), mean_sd(metric(m, "fpr"), digits=3)]
            c = compression_of_means(m)
            rows.append([method, f"{mean_sd(100 * m['sparsity'])}", *perf, "∞" if c == math.inf else f"{c:.1f}", *extra,
                         str(m["seed"].nunique())])
        if task == "regression" and "test_rmse_constant" in g and g["test_rmse_constant"].notna().any():
            ref = g.dropna(subset=["test_rmse_constant"]).drop_duplicates("seed")
            rows.append(["constant (training mean)", "–", mean_sd(ref["test_rmse_constant"], digits=3), "–",
                         *(["–"] if sampled else []), "–", "–", "–", str(ref["seed"].nunique())])
        what = "test error %" if task == "classification" else "test RMSE"
        headers = ["method", "sparsity %", what, f"{what} (BMA)", *([f"{what} (sampled nets, unmasked)"] if sampled else []),
                   "compression × (of means)", "FNR", "FPR", "seeds"]
        title = experiment_title(g, prov).replace("\n", " ")
        sections.append(f"## {title}\n\n" + tabulate(rows, headers=headers, tablefmt="github") + "\n")
    return ("# Natural sparsity: each method's own selection (mean ± sd over seeds)\n\n" + "\n".join(sections)
            + f"\nSource: {source_line(prov)}.\n")


if __name__ == "__main__":
    runs, prov, _ = load()
    write_text(paper_dir() / "tables" / "natural_sparsity.md", render(runs, prov))
