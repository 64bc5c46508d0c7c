# All run records -> tidy table -> summary, tables and figures.


# CPU inference latency of every saved physical network, after all training: it asks for the
# run's --cores, every core of a local run, so no other job shares the machine while it times
# (one thread). Without --cores (profiles/slurm) it asks for one CPU, and so does the Snakemake
# that runs it inside a cluster allocation, which sees the node's cores and would ask srun for more
# CPUs than the allocation holds; docs/cluster.md says how to give it a node of its own.
rule latency:
    input:
        stacks=STACK_FILES,
    output:
        "results/summary/latency.csv",
    threads: (workflow.resource_settings.cores or 1) if workflow.is_main_process else 1
    resources:
        mem_mb=2000,
        runtime=15,
    benchmark:
        "results/benchmarks/latency.tsv"
    log:
        "results/logs/latency.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/latency.py"


rule aggregate:
    input:
        stacks=STACK_FILES,
        latency="results/summary/latency.csv",
    output:
        runs="results/summary/runs.csv",
        summary="results/summary/summary.csv",
    resources:
        mem_mb=2000,
        runtime=15,
    log:
        "results/logs/aggregate.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/aggregate.py"


rule tables:
    input:
        "results/summary/runs.csv",
    output:
        md=report("results/tables/summary.md", category="Tables", caption="../report/tables.rst"),
        tex="results/tables/summary.tex",
    resources:
        mem_mb=2000,
        runtime=15,
    log:
        "results/logs/tables.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/tables.py"


rule figure:
    input:
        "results/summary/runs.csv",
    output:
        png=report("results/figures/{experiment}.png", category="Figures", caption="../report/figure.rst",
                   subcategory="{experiment}"),
        pdf="results/figures/{experiment}.pdf",
    resources:
        mem_mb=2000,
        runtime=15,
    log:
        "results/logs/figure/{experiment}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/figure.py"


rule feature_table:
    input:
        "results/summary/runs.csv",
    output:
        md=report("results/tables/feature_selection.md", category="Tables", caption="../report/feature_selection.rst"),
        tex="results/tables/feature_selection.tex",
    resources:
        mem_mb=2000,
        runtime=15,
    log:
        "results/logs/feature_table.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/feature_table.py"


rule pips:
    input:
        lambda wc: stacks_of(wc.experiment, "spike_slab"),
    output:
        png=report("results/figures/pips/{experiment}.png", category="Inclusion probabilities",
                   caption="../report/pips.rst", subcategory="{experiment}"),
        pdf="results/figures/pips/{experiment}.pdf",
    params:
        spec=lambda wc: JOBS[(wc.experiment, "spike_slab", "0")][0],
    resources:
        mem_mb=2000,
        runtime=15,
    log:
        "results/logs/pips/{experiment}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/pips.py"


rule deploy:
    input:
        "results/summary/runs.csv",
    output:
        md=report("results/tables/deploy.md", category="Tables", caption="../report/deploy.rst"),
        png=report("results/figures/deploy.png", category="Figures", caption="../report/deploy.rst"),
        pdf="results/figures/deploy.pdf",
    resources:
        mem_mb=2000,
        runtime=15,
    log:
        "results/logs/deploy.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/deploy.py"
