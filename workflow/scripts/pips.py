"""Snakemake adapter: spike-and-slab artefacts of every seed -> one experiment's PIP figure."""

from slabbench.cli import pips_job, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
pips_job(list(snakemake.input), snakemake.params.spec, snakemake.output.png, snakemake.output.pdf)  # noqa: F821
