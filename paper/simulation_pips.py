"""paper/figures/simulation_pips.{png,pdf}: per-feature input PIPs of every replicate, true features
marked, and how often each true feature is found; from paper/data/ only."""

import sys
from pathlib import Path

from slabbench.paper import load_artefacts, load_frozen
from slabbench.paper_figures import simulation_pips
from slabbench.plotting import save

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
save(simulation_pips(runs, prov, load_artefacts(HERE / "data")), HERE / "figures" / "simulation_pips.png", HERE / "figures" / "simulation_pips.pdf")
