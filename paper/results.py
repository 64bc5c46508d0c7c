"""paper/tables/results.{md,tex}: every experiment, method and target, mean ± sd over seeds, each
experiment's section headed with its provenance (protocol, or REDUCED and what is reduced);
from paper/data/ only."""

from __future__ import annotations

import pandas as pd

from _common import load, save_table
from slabbench.paper import source_tex, tag, with_source_md
from slabbench.tables import COLUMNS, PM, _document, _rows, _section


def render(runs: pd.DataFrame, prov: dict, fmt: str) -> str:
    sections = []
    for exp, g in runs.groupby("experiment", sort=True):
        headers, rows = _rows(g, COLUMNS[g["task"].iloc[0]], PM[fmt])
        sections.append(_section(f"{exp}: {g['dataset'].iloc[0]}, {g['model'].iloc[0]} [{tag(prov, exp)}]", headers, rows, fmt))
    return _document(sections, "slabbench results (mean ± sd over seeds; compression: ratio of the means)", fmt)


if __name__ == "__main__":
    runs, prov, _ = load()
    save_table("results", with_source_md(render(runs, prov, "markdown"), prov), render(runs, prov, "latex") + source_tex(prov))
