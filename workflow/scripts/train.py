"""Snakemake adapter: train the runs of one stack (experiment, method, seeds) and write their records."""

from slabbench.cli import setup_logging, train_stack_job

setup_logging(snakemake.log[0])  # noqa: F821
train_stack_job(snakemake.params.specs, snakemake.output.stack, threads=snakemake.threads)  # noqa: F821
