"""paper/figures/nodes_kept.{png,pdf}: structured compression: units kept per hidden layer against
sparsity, every method; from paper/data/ only."""

import sys
from pathlib import Path

from slabbench.paper import load_frozen
from slabbench.paper_figures import nodes_kept
from slabbench.plotting import save

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
save(nodes_kept(runs, prov), HERE / "figures" / "nodes_kept.png", HERE / "figures" / "nodes_kept.pdf")
