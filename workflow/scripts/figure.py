"""Snakemake adapter: runs.csv -> one experiment's test metric vs sparsity figure."""

from slabbench.cli import figure_job, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
figure_job(snakemake.input[0], snakemake.wildcards.experiment, snakemake.output.png, snakemake.output.pdf)  # noqa: F821
