"""Snakemake adapter: every run's metrics.jsonl -> runs.csv and summary.csv."""

from slabbench.cli import aggregate_job, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
aggregate_job(list(snakemake.input), snakemake.output.runs, snakemake.output.summary)  # noqa: F821
