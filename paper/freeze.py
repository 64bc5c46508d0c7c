"""Freeze the runs of some experiments into paper/data/ for the paper's figures: their rows of
runs.csv, their provenance in provenance.json and their small per-run artefacts (artefacts.json,
pips.npz, features.csv: input PIPs, conv1 kernel PIPs, mean images, the natural selections'
input features where the truth is known).  Only the experiments frozen are replaced: every other
experiment in paper/data/ (frozen from other runs, another machine) stays as it is.

    python paper/freeze.py --config config/paper.yaml --partial --results-root DIR \\
        --experiments simulation friedman            # those two, from the run folders under DIR
    python paper/freeze.py --config config/paper.yaml  # every experiment of the config, from results/summary/runs.csv
    python paper/freeze.py --migrate                   # an old provenance.json in the per-experiment form
    python paper/freeze.py --refresh fmnist-lenet300   # what a frozen experiment lacks, read again against
                                                       # config/paper.yaml as it is now (no runs read)

Each experiment's provenance names its config (and SHA-256, and that of its resolved specs), the
commits, devices and torch of its runs, how many of its configured runs are present, and says
`protocol` when its runs are every run of config/paper.yaml's block for it, made with that
block's options, else `REDUCED` with what is reduced (epochs, fine-tuning epochs, seeds, methods,
options).  An old single-dict provenance.json is migrated to this form.  Then `snakemake paper`
redraws every figure and table from paper/data/.
"""

import argparse
import json
import sys
from pathlib import Path

from slabbench.io import write_text
from slabbench.paper import PaperError, freeze, load_frozen, refresh_provenance, source_line

ROOT = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--config", type=Path, help="the config the runs were made with")
ap.add_argument("--migrate", action="store_true",
                help="only rewrite --out's provenance.json in the per-experiment form (no runs are read)")
ap.add_argument("--refresh", nargs="+", metavar="EXPERIMENT",
                help="only re-read what these frozen experiments lack against config/paper.yaml as it is now "
                     "(after an edit of its blocks); their runs are not read, their config must be unchanged")
ap.add_argument("--experiments", nargs="+", metavar="EXPERIMENT",
                help="freeze only these experiments of the config (default: every one with runs present)")
ap.add_argument("--runs", type=Path, default=ROOT / "results" / "summary" / "runs.csv", help="run table to freeze")
ap.add_argument("--partial", action="store_true", help="build the table from whichever run folders exist")
ap.add_argument("--results-root", type=Path, default=ROOT, help="folder holding results/runs (the artefacts; with --partial the runs)")
ap.add_argument("--out", type=Path, default=ROOT / "paper" / "data")
ap.add_argument("--note", default="", help="free text stored in the frozen experiments' provenance")
args = ap.parse_args()
if args.migrate:
    runs, prov = load_frozen(args.out, references=False)
    write_text(args.out / "provenance.json", json.dumps(prov, indent=2) + "\n")
    sys.exit(print(source_line(prov)))
if args.refresh:
    try:
        prov = refresh_provenance(args.out, args.refresh, full_grid=ROOT / "config" / "paper.yaml")
    except PaperError as err:
        sys.exit(f"freeze.py: {err}")
    sys.exit(print(source_line(prov)))
if args.config is None:
    ap.error("--config is required (except with --migrate)")
try:
    prov = freeze(args.config, args.out, experiments=args.experiments, runs_csv=None if args.partial else args.runs,
                  results_root=args.results_root, full_grid=ROOT / "config" / "paper.yaml", note=args.note)
except PaperError as err:
    sys.exit(f"freeze.py: {err}")
print(source_line(prov))
