"""Freeze a run table into paper/data/ for the paper's figures: runs.csv, provenance.json and the
small per-run artefacts (artefacts.json, pips.npz, features.csv: input PIPs, mean images, the
natural selections' input features where the truth is known).

    python paper/freeze.py --config config/paper.yaml                 # from results/summary/runs.csv
    python paper/freeze.py --config config/paper-gpu.yaml --partial   # from the run folders present

The provenance names the config (and its SHA-256), the commits and devices of the runs, how
many configured runs are present, the paper-grid experiments the table lacks (and why), the
SHA-256 of each artefact file, and labels anything but the complete config/paper.yaml grid as
a REDUCED run.  The artefacts are read from the run folders under --results-root (with or
without --partial).  Then `snakemake paper` redraws every figure and table from it.
"""

import argparse
import sys
from pathlib import Path

from slabbench.paper import PaperError, freeze, source_line

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--config", type=Path, required=True, help="the config the runs were made with")
ap.add_argument("--runs", type=Path, default=ROOT / "results" / "summary" / "runs.csv", help="run table to freeze")
ap.add_argument("--partial", action="store_true", help="build the table from whichever run folders exist")
ap.add_argument("--results-root", type=Path, default=ROOT, help="folder holding results/runs (with --partial)")
ap.add_argument("--out", type=Path, default=ROOT / "paper" / "data")
ap.add_argument("--note", default="", help="free text stored in the provenance")
args = ap.parse_args()
try:
    prov = freeze(args.config, args.out, runs_csv=None if args.partial else args.runs, results_root=args.results_root,
                  full_grid=ROOT / "config" / "paper.yaml", note=args.note)
except PaperError as err:
    sys.exit(f"freeze.py: {err}")
print(source_line(prov))
