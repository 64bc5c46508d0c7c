# `snakemake paper`: redraw every paper figure and table from the frozen run table
# paper/data/ (runs.csv, provenance.json and the per-run artefacts; no training).  The rule has
# no output files, so it always runs.
# One script per figure / table in paper/, named after its output.

import sys

# seconds of plotting on the frozen table: never sent to a cluster
localrules:
    paper,


PAPER_SCRIPTS = [
    "error_vs_sparsity", "published_comparison", "natural_sparsity", "results", "feature_selection",
    "input_pips", "simulation_pips", "nodes_kept", "calibration", "train_time",
]


rule paper:
    input:
        data="paper/data/runs.csv",
        provenance="paper/data/provenance.json",
        scripts=[from_basedir(f"paper/{script}.py") for script in PAPER_SCRIPTS],
    params:
        python=sys.executable,
    log:
        "results/logs/paper.log",
    conda:
        "../../environment.yml"
    shell:
        "for s in {input.scripts:q}; do {params.python:q} $s paper || exit 1; done > {log:q} 2>&1"
