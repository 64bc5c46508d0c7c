"""All run records -> one tidy table (one row per run x selection/target), and its summary.

The aggregator reads the spec from inside each record and never parses paths.

Nothing is dropped or pooled in silence:

- a metric that was NaN (a diverged run) is named in the row's ``nan_metrics`` column, so it
  stays apart from a metric that was never measured (both are empty cells in a CSV); ±inf
  (the compression of a net with no weight left) is kept as ``inf``;
- every summary statistic carries the number of runs it is over (``{metric}_n``) and how many
  were NaN / infinite (``{metric}_n_nan``, ``{metric}_n_inf``);
- a run (experiment, method, seed, selection, target) that appears twice is refused
  (:class:`PoolingError`), and so are runs of one experiment and method made with different
  settings where a table or figure would show them under one label (:func:`check_runs`);
  the summary keeps such settings apart in its key columns.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from slabbench.io import atomic_path, read_jsonl
from slabbench.stats import describe

#: measured apart (rule ``latency``, :func:`slabbench.cli.latency_job`), merged in by run
LATENCY = ["latency_ms_b1", "latency_ms_b256", "latency_ms_b1_dense", "latency_ms_b256_dense", "speedup_b1", "speedup_b256"]
KEYS = ["experiment", "dataset", "model", "method", "seed", "task", "selection", "target_sparsity"]
COLUMNS = KEYS + [
    "sparsity", "sparsity_all", "compression", "n_weights", "nonzero_weights", "n_biases", "nonzero_biases",
    "test_accuracy", "test_rmse", "test_nll", "ece", "val_accuracy", "val_rmse", "val_nll", "val_ece",
    "train_accuracy", "train_rmse", "train_nll", "train_ece",
    "test_accuracy_bma", "test_rmse_bma", "test_nll_bma", "ece_bma", "test_rmse_constant",
    "test_accuracy_sampled", "val_accuracy_sampled", "test_rmse_sampled", "val_rmse_sampled",
    "flops_kept", "nodes_kept", "features_kept", "fnr", "fpr", "features_kept_bai", "fnr_bai", "fpr_bai", "train_seconds", "finetune_seconds", "epochs", "finetune_epochs",
    "model_bytes_dense", "model_bytes_pruned", "model_bytes_sparse", "model_bytes_sparse_fp16",
    "test_accuracy_fp16", "test_rmse_fp16", "physical_widths",
    "physical_empty", "physical_weights",
    "nan_metrics", "setting", "variant_of", "restarts", "restart_chosen", "stack_runs",
    "device", "device_name", "git_commit", "git_dirty", "slabbench_version", "torch_version", "python_version",
    "method_params",
]
METRICS = ["sparsity", "sparsity_all", "compression", "test_accuracy", "test_rmse", "test_nll", "ece", "val_ece",
           "train_accuracy", "train_rmse",
           "test_accuracy_bma", "test_rmse_bma", "test_nll_bma", "ece_bma", "test_rmse_constant",
           "test_accuracy_sampled", "test_rmse_sampled", "flops_kept", "features_kept", "fnr", "fpr",
           "features_kept_bai", "fnr_bai", "fpr_bai", "train_seconds",
           "model_bytes_dense", "model_bytes_pruned", "model_bytes_sparse", "model_bytes_sparse_fp16",
           "test_accuracy_fp16", "test_rmse_fp16"] + LATENCY
#: one run's row is identified by these; a second row with the same values is refused
RUN_KEY = ["experiment", "method", "seed", "selection", "target_sparsity"]
#: what distinguishes settings of one method in one experiment (summary keys; tables refuse mixing)
SETTING_KEYS = ["epochs", "finetune_epochs", "method_params", "setting"]


class PoolingError(ValueError):
    """Rows that must not be averaged together: a duplicated run, or runs of one experiment
    and method made with different settings."""


def spec_setting(spec: dict) -> str:
    """A short fingerprint of a run spec without its seed: runs with the same fingerprint
    differ only in their seed (12 hex digits of the SHA-256 of the spec's canonical JSON)."""
    rest = {k: v for k, v in spec.items() if k != "seed"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flatten(rec: dict) -> dict:
    """One record -> one row of ``COLUMNS`` (lists joined with '-', provenance spread out,
    non-finite metrics restored from the record's ``nonfinite`` map)."""
    prov = rec.get("provenance", {})
    row = {k: rec.get(k) for k in COLUMNS}
    nonfinite = rec.get("nonfinite") or {}
    for key, what in nonfinite.items():
        if key in row:
            row[key] = float(what)  # "nan", "inf", "-inf"
    row["nan_metrics"] = ";".join(sorted(k for k, v in nonfinite.items() if v == "nan"))
    row["nodes_kept"] = "-".join(str(n) for n in rec.get("nodes_kept", []))
    if "physical_widths" in rec:
        row["physical_widths"] = "-".join(str(n) for n in rec["physical_widths"])
    spec = rec.get("spec", {})
    row["epochs"] = spec.get("epochs")
    row["variant_of"] = spec.get("variant_of")  # the base method of a variant (None: the method itself)
    row["restarts"] = rec.get("restarts", spec.get("restarts", 1))
    row["setting"] = spec_setting(spec) if spec else None
    row.update(device_name=prov.get("device_name"), git_commit=prov.get("git_commit"), git_dirty=prov.get("git_dirty"),
               slabbench_version=prov.get("slabbench"), torch_version=prov.get("torch"), python_version=prov.get("python"),
               method_params=json.dumps(spec.get("method_params", {}), sort_keys=True))
    return row


def merge_latency(runs: pd.DataFrame, latency: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the ``LATENCY`` columns of ``latency`` (one row per run, keyed by
    ``RUN_KEY``; an empty network's cells empty) merged in.  A run without a latency row is
    an error naming it (a stale latency table)."""
    if runs.empty:
        return runs.assign(**{c: pd.Series(dtype=float) for c in LATENCY})
    key = "_run"
    def label(df):
        return pd.Series([_label(k) for k in df[RUN_KEY].itertuples(index=False, name=None)], index=df.index)
    lat = latency.assign(**{key: label(latency)}).drop_duplicates(key).set_index(key)
    ids = label(runs)
    missing = sorted(set(ids) - set(lat.index))
    if missing:
        raise PoolingError(f"{len(missing)} run(s) have no row in the latency table: {', '.join(missing[:5])}; "
                           "rerun the latency rule")
    out = runs.copy()
    for c in LATENCY:
        out[c] = lat[c].reindex(ids).to_numpy(dtype=float) if c in lat else float("nan")
    return out


def runs_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The tidy table of every record in the metrics.jsonl files ``paths``."""
    return records_table(rec for p in paths for rec in read_jsonl(p))


def records_table(records: Iterable[dict]) -> pd.DataFrame:
    """Run records -> the tidy table (one row per record, sorted); a duplicated run is refused."""
    df = pd.DataFrame([flatten(rec) for rec in records], columns=COLUMNS)
    check_duplicates(df)
    return df.sort_values(["experiment", "method", "selection", "target_sparsity", "seed"], na_position="first", kind="stable").reset_index(drop=True)


def _label(key) -> str:
    return "/".join("natural" if isinstance(v, float) and math.isnan(v) else str(v) for v in key)


def check_duplicates(runs: pd.DataFrame) -> None:
    """Refuse a run (experiment, method, seed, selection, target) that appears more than once."""
    if runs.empty:
        return
    dup = runs[runs.duplicated(RUN_KEY, keep=False)]
    if not dup.empty:
        keys = sorted({_label(k) for k in dup[RUN_KEY].itertuples(index=False, name=None)})
        raise PoolingError(f"{len(keys)} run(s) appear more than once (experiment/method/seed/selection/target): "
                           f"{', '.join(keys[:5])}; a seed counted twice would weigh double in every mean")


def check_runs(runs: pd.DataFrame) -> None:
    """Refuse what a table or figure row would pool in silence: duplicated runs, one
    experiment on different data sets or models, and one experiment × method (× selection ×
    target) made with different method options, epochs, fine-tuning epochs or other spec values."""
    check_duplicates(runs)
    problems = []
    for exp, g in runs.groupby("experiment", sort=True):
        for col in ("dataset", "model", "task"):
            values = sorted(g[col].dropna().astype(str).unique())
            if len(values) > 1:
                problems.append(f"experiment {exp!r} has rows of several {col}s: {', '.join(values)}")
        for method, gm in g.groupby("method", sort=True):
            for col in ("epochs", "method_params", "setting"):
                if col in gm:
                    values = sorted(gm[col].dropna().astype(str).unique())
                    if len(values) > 1:
                        problems.append(f"{exp}/{method}: runs with different {col}: {', '.join(values)}")
            if "finetune_epochs" in gm:
                for (sel, t), gt in gm.groupby(["selection", "target_sparsity"], dropna=False):
                    values = sorted(gt["finetune_epochs"].dropna().astype(int).unique())
                    if len(values) > 1:
                        problems.append(f"{exp}/{method}/{_label((sel, t))}: runs with different finetune_epochs: "
                                        f"{', '.join(map(str, values))}")
    if problems:
        raise PoolingError("refusing to pool runs made with different settings under one label (give each "
                           "setting its own experiment name):\n  " + "\n  ".join(problems))


def nan_metric_names(g: pd.DataFrame) -> pd.Series:
    """The ``nan_metrics`` column as strings ("" where none; a CSV column without any name
    reads back as all-NaN floats)."""
    if "nan_metrics" not in g:
        return pd.Series("", index=g.index, dtype=object)
    return g["nan_metrics"].map(lambda v: v if isinstance(v, str) else "")


def metric_values(g: pd.DataFrame, metric: str) -> pd.Series:
    """The values of ``metric`` over the rows of ``g`` that measured it: finite values, ±inf,
    and NaN for a run named in ``nan_metrics`` (diverged); rows that never measured the
    metric (empty, not named) are left out."""
    x = g[metric].astype(float)
    diverged = nan_metric_names(g).str.split(";").apply(lambda names: metric in names).astype(bool)
    return x[x.notna() | diverged]


#: NaN metrics that do not make a run diverged: the float16 form's test metric is NaN where a kept
#: weight overflows float16 (|w| > 65504) in a network that trained well
NOT_DIVERGENCE = ("test_accuracy_fp16", "test_rmse_fp16")


def diverged_runs(g: pd.DataFrame) -> int:
    """Rows of ``g`` with at least one NaN metric, :data:`NOT_DIVERGENCE` apart."""
    names = nan_metric_names(g).str.split(";").apply(lambda n: [m for m in n if m and m not in NOT_DIVERGENCE])
    return int((names.str.len() > 0).sum())


def compression_of_means(g: pd.DataFrame) -> float:
    """Weights / nonzero weights of the mean run: 1 / (1 - mean sparsity), the compression the
    mean sparsity beside it implies (the mean of per-run ratios is larger, and infinite when
    one run kept no weight).  inf when every run pruned every weight; NaN with no rows."""
    s = g["sparsity"].astype(float).dropna()
    if s.empty:
        return math.nan
    kept = 1.0 - float(s.mean())
    return 1.0 / kept if kept > 0 else math.inf


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per experiment × method × selection × target × setting (epochs, fine-tuning epochs,
    method options, spec fingerprint): ``seeds``, ``diverged`` (runs with a NaN metric), and
    for every metric its ``_n``, ``_n_nan``, ``_n_inf``, ``_mean``, ``_sd`` and Student-t 95%
    CI (``_ci_low``, ``_ci_high``) over the finite values; ``compression_of_means``."""
    check_duplicates(runs)
    group = ["experiment", "dataset", "model", "method", "task", "selection", "target_sparsity"]
    group += [k for k in SETTING_KEYS if k in runs]
    out = []
    for key, g in runs.groupby(group, dropna=False, sort=True):
        row = dict(zip(group, key))
        row["seeds"] = int(g["seed"].nunique())
        row["diverged"] = diverged_runs(g)
        for m in METRICS:
            if m not in g:
                continue
            values = metric_values(g, m)
            if values.empty:
                continue
            for stat, v in describe(values.tolist()).items():
                row[f"{m}_{stat}"] = v
        row["compression_of_means"] = compression_of_means(g)
        out.append(row)
    return pd.DataFrame(out)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
