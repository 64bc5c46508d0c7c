"""Snakemake adapter: runs.csv -> test error (or RMSE) against measured latency and bytes (figure and table)."""

from slabbench.cli import deploy_job, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
deploy_job(snakemake.input[0], snakemake.output.md, snakemake.output.png, snakemake.output.pdf)  # noqa: F821
