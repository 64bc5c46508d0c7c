"""paper/tables/feature_selection.{md,tex}: FNR, FPR, RMSE and sparsity where the truth is known,
each experiment headed with its provenance; from paper/data/ only."""

from __future__ import annotations

import pandas as pd

from _common import load, save_table
from slabbench.paper import source_tex, tag, with_source_md
from slabbench.tables import FEATURE_COLUMNS, PM, _document, _rows, _section


def render(runs: pd.DataFrame, prov: dict, fmt: str) -> str:
    sections = []
    for exp, g in runs[runs["fnr"].notna()].groupby("experiment", sort=True):
        headers, rows = _rows(g, FEATURE_COLUMNS, PM[fmt])
        sections.append(_section(f"{exp}: feature selection [{tag(prov, exp)}]", headers, rows, fmt))
    if not sections:
        sections = ["No experiment with a known true support.\n"]
    return _document(sections, "Feature selection (mean ± sd over seeds)", fmt)


if __name__ == "__main__":
    runs, prov, _ = load()
    save_table("feature_selection", with_source_md(render(runs, prov, "markdown"), prov),
               render(runs, prov, "latex") + source_tex(prov))
