"""paper/tables/feature_selection.{md,tex}: FNR, FPR, RMSE and sparsity where the truth is known."""

import sys
from pathlib import Path

from slabbench.io import write_text
from slabbench.paper import load_frozen, source_line, source_tex
from slabbench.tables import render_feature_selection

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
write_text(HERE / "tables" / "feature_selection.md", f"> {source_line(prov)}\n\n" + render_feature_selection(runs, "markdown") + f"\nSource: {source_line(prov)}.\n")
write_text(HERE / "tables" / "feature_selection.tex", render_feature_selection(runs, "latex") + source_tex(prov))
