"""paper/tables/published_comparison.md: our numbers beside the published ones (docs/published.md)."""

import sys
from pathlib import Path

from slabbench.io import write_text
from slabbench.paper import load_frozen, published_comparison

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
write_text(HERE / "tables" / "published_comparison.md", published_comparison(runs, prov))
