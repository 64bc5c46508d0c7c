# All run records -> tidy table -> summary, tables and figures.


rule aggregate:
    input:
        expand("{run}/metrics.jsonl", run=RUN_DIRS),
    output:
        runs="results/summary/runs.csv",
        summary="results/summary/summary.csv",
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
    log:
        "results/logs/figure/{experiment}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/figure.py"
