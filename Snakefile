# slabbench: Bayesian model compression benchmark.  `snakemake --cores 8` runs the default grid.
# The grid lives in config/config.yaml (every key commented); rules are generic.

from snakemake.utils import min_version

min_version("9.0")


# The default grid, unless --configfile names another: Snakemake would otherwise merge the two
# (the experiments of both would run).  `--config key=value` still overrides single keys.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/paper.smk"


rule all:
    input:
        "results/summary/runs.csv",
        "results/summary/summary.csv",
        "results/tables/summary.md",
        "results/tables/summary.tex",
        expand("results/figures/{experiment}.png", experiment=EXPERIMENTS),
        expand("results/figures/{experiment}.pdf", experiment=EXPERIMENTS),
        "results/tables/feature_selection.md",
        "results/tables/deploy.md",
        "results/figures/deploy.png",
        expand("results/figures/pips/{experiment}.png", experiment=PIP_EXPERIMENTS),
    default_target: True
