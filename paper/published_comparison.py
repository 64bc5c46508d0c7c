"""paper/tables/published_comparison.md: our numbers beside the published ones (docs/published.md),
each row with its provenance, the protocol differences derived from the runs' own options
(slabbench.published, which benchmarks/published.py prints too); from paper/data/ only."""

from __future__ import annotations

from _common import load, paper_dir
from slabbench.io import write_text
from slabbench.published import published_comparison

if __name__ == "__main__":
    runs, prov, _ = load()
    write_text(paper_dir() / "tables" / "published_comparison.md", published_comparison(runs, prov))
