"""paper/figures/calibration.{png,pdf}: ECE and NLL against sparsity, point network and spike_slab's
BMA, per classification experiment; from paper/data/ only."""

import sys
from pathlib import Path

from slabbench.paper import load_frozen
from slabbench.paper_figures import calibration
from slabbench.plotting import save

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
save(calibration(runs, prov), HERE / "figures" / "calibration.png", HERE / "figures" / "calibration.pdf")
