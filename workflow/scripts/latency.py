"""Snakemake adapter: the saved physical networks of every run -> latency.csv (timed serially, one thread)."""

from slabbench.cli import latency_job, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
latency_job(list(snakemake.input.stacks), snakemake.output[0])  # noqa: F821
