"""paper/tables/feature_selection.{md,tex}: FNR, FPR, RMSE and sparsity where the truth is known,
each experiment headed with its provenance; from paper/data/ only."""

from __future__ import annotations

import pandas as pd

from _common import load, save_table
from slabbench.paper import source_tex, tag, with_source_md
from slabbench.tables import render_feature_selection


def render(runs: pd.DataFrame, prov: dict, fmt: str) -> str:
    return render_feature_selection(runs, fmt, note=lambda exp: f" [{tag(prov, exp)}]")


if __name__ == "__main__":
    runs, prov, _ = load()
    save_table("feature_selection", with_source_md(render(runs, prov, "markdown"), prov),
               render(runs, prov, "latex") + source_tex(prov))
