"""paper/tables/results.{md,tex}: every experiment, method and target, mean ± sd over seeds."""

import sys
from pathlib import Path

from slabbench.io import write_text
from slabbench.paper import load_frozen, source_tex, with_source_md
from slabbench.tables import render

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
write_text(HERE / "tables" / "results.md", with_source_md(render(runs, "markdown"), prov))
write_text(HERE / "tables" / "results.tex", render(runs, "latex") + source_tex(prov))
