"""Snakemake adapter: runs.csv -> feature-selection table (markdown and LaTeX)."""

from slabbench.cli import feature_table_job, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
feature_table_job(snakemake.input[0], snakemake.output.md, snakemake.output.tex)  # noqa: F821
