"""paper/tables/results.{md,tex}: every experiment, method and target, mean ± sd over seeds, each
experiment's section headed with its provenance (protocol, or REDUCED and what is reduced);
from paper/data/ only."""

from __future__ import annotations

import pandas as pd

from _common import load, save_table
from slabbench.paper import source_tex, tag, with_source_md
from slabbench.tables import render as render_table


def render(runs: pd.DataFrame, prov: dict, fmt: str) -> str:
    return render_table(runs, fmt, note=lambda exp: f" [{tag(prov, exp)}]")


if __name__ == "__main__":
    runs, prov, _ = load()
    save_table("results", with_source_md(render(runs, prov, "markdown"), prov), render(runs, prov, "latex") + source_tex(prov))
