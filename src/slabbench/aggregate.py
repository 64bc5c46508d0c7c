"""All run records -> one tidy table (one row per run x selection/target).

The aggregator reads the spec from inside each record and never parses paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from slabbench.io import atomic_path, read_jsonl
from slabbench.stats import describe

KEYS = ["experiment", "dataset", "model", "method", "seed", "task", "selection", "target_sparsity"]
COLUMNS = KEYS + [
    "sparsity", "sparsity_all", "compression", "n_weights", "nonzero_weights", "n_biases", "nonzero_biases",
    "test_accuracy", "test_rmse", "test_nll", "ece", "val_accuracy", "val_rmse", "val_nll",
    "test_accuracy_bma", "test_rmse_bma", "test_nll_bma",
    "flops_kept", "nodes_kept", "features_kept", "fnr", "fpr", "train_seconds", "epochs", "finetune_epochs",
    "device", "device_name", "git_commit", "git_dirty", "slabbench_version", "torch_version", "python_version",
    "method_params",
]
METRICS = ["sparsity", "sparsity_all", "compression", "test_accuracy", "test_rmse", "test_nll", "ece",
           "test_accuracy_bma", "test_rmse_bma", "flops_kept", "features_kept", "fnr", "fpr", "train_seconds"]


def flatten(rec: dict) -> dict:
    """One record -> one row of ``COLUMNS`` (lists joined with '-', provenance spread out)."""
    prov = rec.get("provenance", {})
    row = {k: rec.get(k) for k in COLUMNS}
    row["nodes_kept"] = "-".join(str(n) for n in rec.get("nodes_kept", []))
    row["epochs"] = rec.get("spec", {}).get("epochs")
    row.update(device_name=prov.get("device_name"), git_commit=prov.get("git_commit"), git_dirty=prov.get("git_dirty"),
               slabbench_version=prov.get("slabbench"), torch_version=prov.get("torch"), python_version=prov.get("python"),
               method_params=json.dumps(rec.get("spec", {}).get("method_params", {}), sort_keys=True))
    return row


def runs_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The tidy table of every record in the metrics.jsonl files ``paths``."""
    return records_table(rec for p in paths for rec in read_jsonl(p))


def records_table(records: Iterable[dict]) -> pd.DataFrame:
    """Run records -> the tidy table (one row per record, sorted)."""
    df = pd.DataFrame([flatten(rec) for rec in records], columns=COLUMNS)
    return df.sort_values(["experiment", "method", "selection", "target_sparsity", "seed"], na_position="first", kind="stable").reset_index(drop=True)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """mean, sd and bootstrap 95% CI over seeds of every metric, per experiment x method x target."""
    group = ["experiment", "dataset", "model", "method", "task", "selection", "target_sparsity"]
    out = []
    for key, g in runs.groupby(group, dropna=False, sort=True):
        row = dict(zip(group, key))
        row["seeds"] = int(g["seed"].nunique())
        for m in METRICS:
            if m in g and g[m].notna().any():
                for stat, v in describe(g[m].tolist()).items():
                    if stat != "n":
                        row[f"{m}_{stat}"] = v
        out.append(row)
    return pd.DataFrame(out)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
