"""paper/tables/feature_selection.{md,tex}: FNR, FPR, RMSE and sparsity where the truth is known."""

import sys
from pathlib import Path

from slabbench.io import write_text
from slabbench.paper import load_frozen, source_tex, with_source_md
from slabbench.tables import render_feature_selection

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
write_text(HERE / "tables" / "feature_selection.md", with_source_md(render_feature_selection(runs, "markdown"), prov))
write_text(HERE / "tables" / "feature_selection.tex", render_feature_selection(runs, "latex") + source_tex(prov))
