"""Snakemake adapter: every run's metrics.jsonl (and the measured latencies) -> runs.csv and summary.csv."""

from slabbench.cli import aggregate_job, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
aggregate_job(list(snakemake.input.stacks), snakemake.output.runs, snakemake.output.summary,  # noqa: F821
              latency_csv=snakemake.input.latency)  # noqa: F821
