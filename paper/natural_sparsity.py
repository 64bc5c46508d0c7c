"""paper/tables/natural_sparsity.md: each Bayesian method's own selection beside dense."""

import sys
from pathlib import Path

from slabbench.io import write_text
from slabbench.paper import load_frozen, natural_sparsity

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
write_text(HERE / "tables" / "natural_sparsity.md", natural_sparsity(runs, prov))
