"""paper/figures/input_pips.{png,pdf}: input-pixel PIP maps (mean over seeds) beside the mean training
image, per image experiment; from paper/data/ only."""

import sys
from pathlib import Path

from slabbench.paper import load_artefacts, load_frozen
from slabbench.paper_figures import input_pips
from slabbench.plotting import save

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
save(input_pips(runs, prov, load_artefacts(HERE / "data")), HERE / "figures" / "input_pips.png", HERE / "figures" / "input_pips.pdf")
