"""Snakemake adapter: runs.csv -> markdown and LaTeX tables."""

from slabbench.cli import setup_logging, tables_job

setup_logging(snakemake.log[0])  # noqa: F821
tables_job(snakemake.input[0], snakemake.output.md, snakemake.output.tex)  # noqa: F821
