# The paper's figures and tables, each drawn by its own script paper/<output>.py from the frozen
# data in paper/data/ (runs.csv, provenance.json and the per-run artefacts; no training).  One job
# per output: editing one script redraws only its output; `snakemake paper` makes every one that
# is missing or whose script, paper/_common.py or frozen data changed (`-F paper`: all).

import sys

#: figures: paper/figures/{name}.{png,pdf}; tables: paper/tables/{name}.md (and .tex where listed)
PAPER_FIGURES = ["error_vs_sparsity", "input_pips", "simulation_pips", "nodes_kept", "calibration", "train_time"]
PAPER_TABLES_TEX = ["results", "feature_selection"]
PAPER_TABLES_MD = ["natural_sparsity", "published_comparison"]
# PAPER_DATA, PAPER_ARTEFACTS and paper_inputs (an output's script, helpers and frozen data): common.smk

# seconds of plotting on the frozen table: never sent to a cluster
localrules:
    paper,
    paper_figure,
    paper_table_tex,
    paper_table_md,
    paper_readme,


rule paper:
    input:
        expand("paper/figures/{name}.{ext}", name=PAPER_FIGURES, ext=("png", "pdf")),
        expand("paper/tables/{name}.{ext}", name=PAPER_TABLES_TEX, ext=("md", "tex")),
        expand("paper/tables/{name}.md", name=PAPER_TABLES_MD),
        "paper/README.md",


rule paper_figure:
    input:
        unpack(paper_inputs),
    output:
        png="paper/figures/{name}.png",
        pdf="paper/figures/{name}.pdf",
    wildcard_constraints:
        name="|".join(PAPER_FIGURES),
    params:
        python=sys.executable,
    log:
        "results/logs/paper/{name}.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.python:q} {input.script:q} paper > {log:q} 2>&1"


rule paper_table_tex:
    input:
        unpack(paper_inputs),
    output:
        md="paper/tables/{name}.md",
        tex="paper/tables/{name}.tex",
    wildcard_constraints:
        name="|".join(PAPER_TABLES_TEX),
    params:
        python=sys.executable,
    log:
        "results/logs/paper/{name}.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.python:q} {input.script:q} paper > {log:q} 2>&1"


rule paper_table_md:
    input:
        unpack(paper_inputs),
    output:
        md="paper/tables/{name}.md",
    wildcard_constraints:
        name="|".join(PAPER_TABLES_MD),
    params:
        python=sys.executable,
    log:
        "results/logs/paper/{name}.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.python:q} {input.script:q} paper > {log:q} 2>&1"


rule paper_readme:
    input:
        script=from_basedir("paper/claims.py"),
        template=from_basedir("paper/README.template.md"),
        common=from_basedir("paper/_common.py"),
        data=PAPER_DATA,
    output:
        "paper/README.md",
    params:
        python=sys.executable,
    log:
        "results/logs/paper/README.log",
    conda:
        "../../environment.yml"
    shell:
        "{params.python:q} {input.script:q} paper {input.template:q} > {log:q} 2>&1"
