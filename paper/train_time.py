"""paper/figures/train_time.{png,pdf}: the price of each method: training time per run, every method
and experiment; from paper/data/ only."""

import sys
from pathlib import Path

from slabbench.paper import load_frozen
from slabbench.paper_figures import train_time
from slabbench.plotting import save

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
save(train_time(runs, prov), HERE / "figures" / "train_time.png", HERE / "figures" / "train_time.pdf")
