"""Freeze a run table into paper/data/ (runs.csv + provenance.json) for the paper's figures.

    python paper/freeze.py --config config/paper.yaml                 # from results/summary/runs.csv
    python paper/freeze.py --config config/paper-gpu.yaml --partial   # from the run folders present

The provenance names the config (and its SHA-256), the commits and devices of the runs, how
many configured runs are present, and labels anything but the complete config/paper.yaml grid
as a REDUCED run.  Then `snakemake paper` redraws every figure and table from it.
"""

import argparse
from pathlib import Path

from slabbench.paper import freeze, source_line

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--config", type=Path, required=True, help="the config the runs were made with")
ap.add_argument("--runs", type=Path, default=ROOT / "results" / "summary" / "runs.csv", help="run table to freeze")
ap.add_argument("--partial", action="store_true", help="build the table from whichever run folders exist")
ap.add_argument("--results-root", type=Path, default=ROOT, help="folder holding results/runs (with --partial)")
ap.add_argument("--out", type=Path, default=ROOT / "paper" / "data")
ap.add_argument("--note", default="", help="free text stored in the provenance")
args = ap.parse_args()
prov = freeze(args.config, args.out, runs_csv=None if args.partial else args.runs, results_root=args.results_root,
              full_grid=ROOT / "config" / "paper.yaml", note=args.note)
print(source_line(prov))
