"""paper/figures/error_vs_sparsity.{png,pdf}: test error (RMSE) vs sparsity for every data set
and method, Student-t 95% CI bands of the mean over seeds, logit sparsity axis; from paper/data/."""

import sys
from pathlib import Path

from slabbench.paper import error_vs_sparsity, load_frozen
from slabbench.plotting import save

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent  # the paper/ folder
runs, prov = load_frozen(HERE / "data")
save(error_vs_sparsity(runs, prov), HERE / "figures" / "error_vs_sparsity.png", HERE / "figures" / "error_vs_sparsity.pdf")
