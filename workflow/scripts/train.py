"""Snakemake adapter: train one run (experiment, method, seed) and write its records."""

from slabbench.cli import setup_logging, train_job

setup_logging(snakemake.log[0])  # noqa: F821
train_job(snakemake.params.spec, snakemake.output.metrics, snakemake.output.artefacts,  # noqa: F821
          threads=snakemake.threads)  # noqa: F821
