"""The paper's figures and tables, drawn from a frozen run table (``paper/data/runs.csv``)
and its provenance (``paper/data/provenance.json``), never from a training run.

    freeze(...)                 results/summary/runs.csv (or the run folders) -> paper/data/,
                                with the small per-run artefacts the figures need (freeze_artefacts)
    load_artefacts(...)         those artefacts back (input PIPs, mean images, selected features)
    error_vs_sparsity(...)      the central figure: test error vs sparsity, one panel per data set
    published_comparison(...)   our numbers beside the published ones (docs/published.md)
    natural_sparsity(...)       the Bayesian methods' own selections beside dense

Every output carries a source line built from the provenance, so a reduced run is labelled
as such wherever its numbers appear.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from slabbench.aggregate import check_runs, compression_of_means, metric_values, records_table, spec_setting, write_csv
from slabbench.config import load_yaml, run_dir, run_specs, validate
from slabbench.io import atomic_path, read_jsonl, write_text
from slabbench.plotting import method_order, plot_experiment, plt
from slabbench.provenance import git_commit
from slabbench.stats import CI_NAME, describe

log = logging.getLogger(__name__)

#: published numbers of docs/published.md: (dataset, model, method, selection, error %, kept, source).
#: ``selection`` says which of our records is compared: the method's natural selection, or the
#: matched target nearest to the published fraction of weights kept.
PUBLISHED = [
    ("mnist", "mlp", "dense", "natural", 1.64, 1.0, "100%", "Han et al. 2015"),
    ("mnist", "mlp", "magnitude", "target", 1.59, 0.08, "8% (12×)", "Han et al. 2015"),
    ("mnist", "mlp", "sparse_vd", "natural", 1.92, 0.015, "1.5% (68×)", "Molchanov et al. 2017"),
    ("mnist", "mlp", "l0", "natural", 1.6, None, "266-88-33 neurons", "Louizos et al. 2018"),
    ("mnist", "lenet5", "dense", "natural", 0.80, 1.0, "100%", "Han et al. 2015"),
    ("mnist", "lenet5", "magnitude", "target", 0.77, 0.08, "8% (12×)", "Han et al. 2015"),
    ("mnist", "lenet5", "sparse_vd", "natural", 0.75, 0.0036, "0.36% (280×)", "Molchanov et al. 2017"),
    ("mnist", "lenet5", "l0", "natural", 0.9, None, "20-25-45-462 neurons", "Louizos et al. 2018"),
]
#: how our protocol differs from the papers' wherever the provenance does not say otherwise
PROTOCOL_NOTES = [
    "We report the final epoch and select nothing on the test set; the L0 and some sparse VD scripts "
    "report the best test error over epochs.",
    "Adam at a constant learning rate for every method (the papers: Adam with decay, or SGD for Han et al.).",
    "5,000 training images are held out for validation, so we train on 55,000 images, not 60,000.",
    "Sparsity counts weights only (biases apart); the papers differ (some count all parameters).",
    "Magnitude pruning is compared at our target nearest to Han et al.'s 8% of weights kept.",
    "L0 with `gates: weight` (per-weight gates; the paper: per input neuron) reports weights kept, not neurons.",
]


#: the per-run artefacts that paper/data/ keeps beside runs.csv and provenance.json
ARTEFACT_FILES = ("artefacts.json", "pips.npz", "features.csv")
#: why an experiment of the paper grid is absent from a frozen table, by data set (else "not run")
MISSING_REASONS = {
    "cifar10": "not run: needs the CIFAR-10 files (resources/cifar-10-batches-py/), which no machine that ran "
               "the grid could get",
}
#: how to fill what a frozen table lacks (named wherever a figure says something is missing)
REFREEZE = "rerun the grid and freeze it: paper/run_grid.sh config/paper.yaml"


class PaperError(ValueError):
    """The frozen table or its provenance is missing or malformed."""


# --------------------------------------------------------------------------- freezing

def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def freeze(config_path: str | Path, out_dir: str | Path, *, runs_csv: str | Path | None = None,
           results_root: str | Path = ".", full_grid: str | Path | None = None, note: str = "") -> dict:
    """Copy a run table into ``out_dir/runs.csv`` and write ``out_dir/provenance.json``.

    With ``runs_csv`` the table is taken as is; otherwise it is built from whichever run
    folders of ``config_path``'s grid exist under ``results_root`` (a grid cut short).  The
    provenance records the commit(s) the runs were made at, the devices, the config file and
    its SHA-256, how many of the configured runs are present, and whether this is the full
    paper grid (``config_path`` is ``full_grid`` and nothing is missing) or a reduced run.
    """
    config_path, out_dir = Path(config_path), Path(out_dir)
    specs = run_specs(validate(load_yaml(config_path)))
    runs = pd.read_csv(runs_csv) if runs_csv else records_table(_matching_records(specs, Path(results_root)))
    if runs.empty:
        raise PaperError(f"no runs to freeze: {runs_csv or 'no metrics.jsonl of ' + str(config_path) + ' under ' + str(results_root)}")
    present = set(zip(runs["experiment"], runs["method"], runs["seed"].astype(int)))
    extra = present - {(s["experiment"], s["method"], int(s["seed"])) for s in specs}
    if extra:
        shown = ", ".join(f"{e}/{m}/seed={sd}" for e, m, sd in sorted(extra)[:5])
        raise PaperError(f"{len(extra)} run(s) in the table are not in {config_path}'s grid (e.g. {shown}); "
                         "freeze with the config the runs were made with")
    mismatched = spec_mismatches(runs, specs)
    if mismatched:
        raise PaperError(f"{len(mismatched)} run(s) in the table were not made with {config_path}'s spec: "
                         + "; ".join(mismatched[:5]) + "; freeze with the config the runs were made with")
    check_runs(runs)
    missing = [f"{s['experiment']}/{s['method']}/seed={s['seed']}" for s in specs
               if (s["experiment"], s["method"], int(s["seed"])) not in present]
    is_full = full_grid is not None and config_path.resolve() == Path(full_grid).resolve() and not missing
    commits = sorted(runs["git_commit"].dropna().astype(str).unique())
    prov = {
        "label": "full paper grid" if is_full else "REDUCED run (not the paper grid)",
        "config": config_path.as_posix(),
        "config_sha256": _sha256(config_path),
        "run_commits": commits,
        "run_commit_dirty": bool(runs["git_dirty"].fillna(False).astype(bool).any()),
        "frozen_at_commit": git_commit()[0],
        "frozen_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "devices": sorted(runs["device_name"].dropna().astype(str).unique()),
        "torch": sorted(runs["torch_version"].dropna().astype(str).unique()),
        "runs_configured": len(specs),
        "runs_present": len(present),
        "runs_missing": missing,
        "rows": int(len(runs)),
        "note": note,
        "paper_grid_missing": paper_grid_gaps(runs, full_grid) if full_grid is not None else None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    prov["artefacts"] = freeze_artefacts(specs, runs, Path(results_root), out_dir)
    write_csv(runs, out_dir / "runs.csv")
    write_text(out_dir / "provenance.json", json.dumps(prov, indent=2) + "\n")
    return prov


def paper_grid_gaps(runs: pd.DataFrame, full_grid: str | Path) -> dict[str, str]:
    """The experiments of the paper grid ``full_grid`` without a row in ``runs``, each with
    the reason (:data:`MISSING_REASONS` by data set, else "not run")."""
    grid = load_yaml(full_grid).get("experiments", {})
    present = set(runs["experiment"].astype(str))
    return {exp: MISSING_REASONS.get(block.get("dataset"), "not run") for exp, block in grid.items() if exp not in present}


def _dataset_facts(spec: dict) -> tuple[dict, "np.ndarray | None"]:
    """What the figures need to know of ``spec``'s data set (feature shape, true support,
    number of features) and its mean training input as an image (``None`` where the
    features are no image or the files are missing: then ``facts['mean_image']`` says why)."""
    import numpy as np

    from slabbench.api import make_params
    from slabbench.data import DatasetFilesMissing
    from slabbench.registry import dataset_class

    cls = dataset_class(spec["dataset"])
    given = dict(spec.get("dataset_params") or {})
    if "download" in {f.name for f in dataclasses.fields(cls.Params)}:
        given["download"] = False  # facts come from the files at hand; a freeze never downloads
    dataset = cls(make_params(cls.Params, given, f"dataset {spec['dataset']!r}"), int(spec["seed"]))
    try:
        dataset.prepare()
        dspec = dataset.spec()
    except DatasetFilesMissing as err:
        log.warning("no data-set facts for %s: %s", spec["experiment"], err)
        return {"dataset": spec["dataset"], "feature_shape": None, "true_support": None, "n_features": None,
                "mean_image": f"data files missing at freeze time ({type(err).__name__})"}, None
    shape = list(dspec.feature_shape) if dspec.feature_shape else None
    facts = {"dataset": spec["dataset"], "feature_shape": shape,
             "true_support": list(dspec.true_support) if dspec.true_support is not None else None,
             "n_features": int(dspec.n_features), "mean_image": None}
    if shape is None or len(shape) != 2 or int(np.prod(shape)) != dspec.n_features:
        facts["mean_image"] = "the inputs are not one image"
        return facts, None
    x = dataset.load("train")[0]
    facts["mean_image"] = f"mean of the {len(x)} training inputs (as the network sees them), seed {spec['seed']}"
    return facts, x.float().reshape(len(x), -1).mean(0).reshape(shape).cpu().numpy().astype(np.float32)


def freeze_artefacts(specs: list[dict], runs: pd.DataFrame, root: Path, out_dir: Path) -> dict:
    """Keep the small per-run artefacts the paper figures need, for the runs in ``runs``:

    - ``pips.npz``: ``input_pip/{experiment}/{method}/seed={seed}`` (float32, one PIP per input
      feature, from the run's ``artefacts.pt``, the natural fit) and ``mean_image/{experiment}``
      (the mean training input as an image, where the inputs are one);
    - ``features.csv``: for experiments with a known true support, the input features each
      natural selection keeps (``selected``: 0-based indices, space-separated);
    - ``artefacts.json``: per experiment the data set's feature shape, true support and number
      of features, what the mean image is, and which runs gave input PIPs.

    Nodes kept per layer, training time and calibration metrics are columns of ``runs.csv``.
    Returns the provenance entry: each file's SHA-256 and what is in it.
    """
    import numpy as np
    import torch

    present = set(zip(runs["experiment"], runs["method"], runs["seed"].astype(int)))
    by_exp: dict[str, list[dict]] = {}
    for spec in specs:
        if (spec["experiment"], spec["method"], int(spec["seed"])) in present:
            by_exp.setdefault(spec["experiment"], []).append(spec)
    meta: dict[str, dict] = {}
    arrays: dict[str, np.ndarray] = {}
    selected_rows = []
    for exp, exp_specs in sorted(by_exp.items()):
        facts, image = _dataset_facts(min(exp_specs, key=lambda s: int(s["seed"])))
        if image is not None:
            arrays[f"mean_image/{exp}"] = image
        facts["input_pips"], facts["selected_features"] = {}, {}
        for spec in sorted(exp_specs, key=lambda s: (s["method"], int(s["seed"]))):
            folder = root / run_dir(spec)
            records = read_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").exists() else []
            if not records or records[0].get("spec") != json.loads(json.dumps(spec)):
                continue  # the table came from elsewhere (runs.csv without its folders): nothing to keep
            method, seed = spec["method"], int(spec["seed"])
            if (folder / "artefacts.pt").exists():
                art = torch.load(folder / "artefacts.pt", weights_only=True)
                if "pip_input" in art:
                    arrays[f"input_pip/{exp}/{method}/seed={seed}"] = art["pip_input"].float().flatten().numpy()
                    facts["input_pips"].setdefault(method, []).append(seed)
            if facts["true_support"] is not None:
                for rec in records:
                    if rec.get("selection") == "natural" and "selected_features" in rec:
                        selected_rows.append({"experiment": exp, "method": method, "seed": seed,
                                              "selected": " ".join(str(i) for i in rec["selected_features"])})
                        facts["selected_features"].setdefault(method, []).append(seed)
        meta[exp] = facts
    write_text(out_dir / "artefacts.json", json.dumps(meta, indent=1) + "\n")
    _write_npz(out_dir / "pips.npz", arrays)
    write_csv(pd.DataFrame(selected_rows, columns=["experiment", "method", "seed", "selected"]), out_dir / "features.csv")
    n_pips = sum(len(s) for f in meta.values() for s in f["input_pips"].values())
    return {"files": {name: _sha256(out_dir / name) for name in ARTEFACT_FILES},
            "input_pip_runs": n_pips, "selection_runs": len(selected_rows),
            "what": "input PIPs of every run that has them (artefacts.pt 'pip_input', the natural fit), the mean training "
                    "image of image data sets, the natural selections' input features where the truth is known"}


def _write_npz(path: Path, arrays: dict) -> None:
    """``np.savez_compressed`` with fixed member dates, written atomically: the same arrays
    give the same bytes (a re-freeze of the same runs changes nothing in git)."""
    import numpy as np

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def load_artefacts(data_dir: str | Path) -> dict:
    """The per-run artefacts of :func:`freeze_artefacts` from ``data_dir``: ``meta`` (per
    experiment facts, dict), ``arrays`` (name -> numpy array) and ``features`` (DataFrame with
    ``selected`` as lists of ints); each is ``None`` where its file is missing (a table frozen
    before the freeze kept them), and ``missing`` names those files."""
    import numpy as np

    data_dir = Path(data_dir)
    out: dict = {"meta": None, "arrays": None, "features": None,
                 "missing": [n for n in ARTEFACT_FILES if not (data_dir / n).exists()]}
    if (data_dir / "artefacts.json").exists():
        out["meta"] = json.loads((data_dir / "artefacts.json").read_text())
    if (data_dir / "pips.npz").exists():
        with np.load(data_dir / "pips.npz", allow_pickle=False) as z:
            out["arrays"] = {k: z[k] for k in z.files}
    if (data_dir / "features.csv").exists():
        f = pd.read_csv(data_dir / "features.csv", dtype={"selected": str}, keep_default_na=False)
        f["selected"] = [[int(i) for i in s.split()] for s in f["selected"]]
        out["features"] = f
    return out


def spec_mismatches(runs: pd.DataFrame, specs: list[dict]) -> list[str]:
    """Rows of ``runs`` whose recorded settings differ from their configured spec: data set,
    model, epochs, method options, fine-tuning epochs (0 for a natural selection), a target not
    among the spec's sparsities, and the spec fingerprint (``setting``) where the table has it.
    Returns one line per differing run and field, e.g. "mnist/l0/seed=0: epochs 10 != 200"."""
    by_key = {(s["experiment"], s["method"], int(s["seed"])): s for s in specs}
    out: list[str] = []
    for row in runs.itertuples(index=False):
        spec = by_key.get((row.experiment, row.method, int(row.seed)))
        if spec is None:
            continue
        expected = {"dataset": spec["dataset"], "model": spec["model"], "epochs": int(spec["epochs"]),
                    "method_params": json.dumps(spec.get("method_params", {}), sort_keys=True),
                    "finetune_epochs": 0 if row.selection == "natural" else int(spec.get("finetune_epochs", 0))}
        setting = getattr(row, "setting", None)
        if isinstance(setting, str):
            expected["setting"] = spec_setting(json.loads(json.dumps(spec)))
        for field, want in expected.items():
            have = getattr(row, field, None)
            if have is None or (isinstance(have, float) and math.isnan(have)):
                continue  # an older table without the column
            if isinstance(want, int):
                have = int(have)
            if have != want:
                out.append(f"{row.experiment}/{row.method}/seed={row.seed}: {field} {have} != {want}")
        if row.selection == "target" and not any(abs(float(row.target_sparsity) - float(t)) < 1e-9 for t in spec["sparsities"]):
            out.append(f"{row.experiment}/{row.method}/seed={row.seed}: target {row.target_sparsity} not in {spec['sparsities']}")
    return sorted(set(out))


def _matching_records(specs: list[dict], root: Path) -> list[dict]:
    """The records of ``specs`` whose metrics.jsonl exists and was made with exactly that spec
    (a run folder left by another configuration with the same experiment name is not taken)."""
    out = []
    for spec in specs:
        path = root / run_dir(spec) / "metrics.jsonl"
        if not path.exists():
            continue
        records = read_jsonl(path)
        if records and records[0].get("spec") == json.loads(json.dumps(spec)):
            out.extend(records)
        else:
            log.warning("skipping %s: made with another spec than %s", path, spec["experiment"])
    return out


def load_frozen(data_dir: str | Path, references: bool = True) -> tuple[pd.DataFrame, dict]:
    """The frozen run table and its provenance; with ``references``, regression rows made
    before records carried ``test_rmse_constant`` get it from :func:`with_references`."""
    data_dir = Path(data_dir)
    csv, prov = data_dir / "runs.csv", data_dir / "provenance.json"
    for p in (csv, prov):
        if not p.exists():
            raise PaperError(f"{p} is missing; freeze a run table first: python paper/freeze.py --config CONFIG")
    runs, prov = pd.read_csv(csv), json.loads(prov.read_text())
    if "paper_grid_missing" not in prov:  # frozen before the provenance said so
        from slabbench._plugins import repo_root

        grid = (repo_root() or Path.cwd()) / "config" / "paper.yaml"
        prov["paper_grid_missing"] = paper_grid_gaps(runs, grid) if grid.is_file() else None
    return (with_references(runs, prov) if references else runs), prov


def with_references(runs: pd.DataFrame, prov: dict) -> pd.DataFrame:
    """``runs`` with the constant predictor's test RMSE (the training mean's) filled in for
    regression rows that lack it, computed from the data sets of the frozen config's specs —
    data only, no training.  Left empty (with a warning) when the config file is not there or
    is not the one the table was frozen with (its SHA-256 differs)."""
    from slabbench._plugins import repo_root
    from slabbench.cli import reference_metrics

    runs = runs.copy()
    if "test_rmse_constant" not in runs:
        runs["test_rmse_constant"] = math.nan
    todo = runs[(runs["task"] == "regression") & runs["test_rmse_constant"].isna()]
    if todo.empty:
        return runs
    cfg = Path(prov.get("config", ""))
    if not cfg.is_absolute():
        cfg = (repo_root() or Path.cwd()) / cfg
    if not cfg.is_file() or _sha256(cfg) != prov.get("config_sha256"):
        log.warning("no constant-predictor reference: %s is missing or not the frozen config", cfg)
        return runs
    specs = {(s["experiment"], s["method"], int(s["seed"])): s for s in run_specs(validate(load_yaml(cfg)))}
    done: dict[tuple, float] = {}
    for (exp, method, seed), _ in todo.groupby(["experiment", "method", "seed"]):
        spec = specs.get((exp, method, int(seed)))
        if spec is None:
            continue
        key = (exp, json.dumps(spec["dataset_params"], sort_keys=True), int(seed))  # the same data for every method
        if key not in done:
            done[key] = reference_metrics(spec, "regression")["test_rmse_constant"]
        rows = (runs["experiment"] == exp) & (runs["method"] == method) & (runs["seed"] == seed)
        runs.loc[rows, "test_rmse_constant"] = done[key]
    return runs


def source_line(prov: dict) -> str:
    """One line naming what the numbers come from (shown under every figure and table)."""
    commits = ", ".join(c[:10] for c in prov.get("run_commits", [])) or "unknown"
    devices = ", ".join(prov.get("devices", [])) or "unknown device"
    missing = len(prov.get("runs_missing", []))
    extra = f"; {missing} configured runs missing" if missing else ""
    return (f"{prov['label']}: {prov['runs_present']} of {prov['runs_configured']} runs of {prov['config']} "
            f"(sha256 {prov['config_sha256'][:12]}){extra}; commit {commits}; {devices}; frozen {prov['frozen_at']}"
            + gaps_text(prov))


def gaps_text(prov: dict) -> str:
    """"; not in this table: ..." naming the paper grid's experiments the table lacks and why
    ("" when it lacks none or the provenance cannot tell)."""
    by_reason: dict[str, list[str]] = {}
    for exp, reason in (prov.get("paper_grid_missing") or {}).items():
        by_reason.setdefault(reason, []).append(exp)
    if not by_reason:
        return ""
    parts = [f"{', '.join(exps)} ({reason})" for reason, exps in sorted(by_reason.items(), key=lambda kv: kv[0] == "not run")]
    return "; paper-grid experiments not in this table: " + "; ".join(parts)


def with_source_md(body: str, prov: dict) -> str:
    """A markdown document with the source line above it (seen first) and below it."""
    return f"> {source_line(prov)}\n\n{body}\nSource: {source_line(prov)}.\n"


def source_tex(prov: dict) -> str:
    """The source line as a typeset LaTeX paragraph (not a comment: it must show)."""
    text = source_line(prov)
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    return f"\n\\noindent\\emph{{Source: {text}.}}\n"


# --------------------------------------------------------------------------- figures

def _net_name(dataset: str, model: str) -> str:
    """The architecture's usual name (an MLP on 28x28 images is LeNet-300-100 in this suite)."""
    if model == "mlp" and dataset in ("mnist", "fashion_mnist", "mnist5k"):
        return "LeNet-300-100"
    return {"mlp": "MLP", "lenet5": "LeNet-5-Caffe", "vgg": "VGG-like"}.get(model, model)


def _joined(g: pd.DataFrame, col: str) -> str:
    """The distinct integer values of ``col`` joined by "/" ("" when there are none)."""
    values = sorted(g[col].dropna().unique()) if col in g else []
    return "/".join(str(int(v)) for v in values)


def _experiment_title(g: pd.DataFrame) -> str:
    epochs = _joined(g, "epochs")
    ep = f", {epochs} epochs" if epochs else ""
    return f"{g['dataset'].iloc[0]}, {_net_name(g['dataset'].iloc[0], g['model'].iloc[0])}{ep}"


#: natural selections below this sparsity are drawn at it (marked "<"), so the logit axis
#: stays on the targets (0.5 ... 0.995) instead of stretching to e.g. 0.006
X_FLOOR = 0.3


def error_vs_sparsity(runs: pd.DataFrame, prov: dict, columns: int = 3):
    """The central figure: test error (classification) or RMSE (regression) against sparsity,
    one panel per experiment, every method, Student-t 95% CI bands of the mean over seeds,
    logit-scaled sparsity axis (stretched near 1), natural selections as stars, dense as a
    band, the constant predictor as a dotted line (regression)."""
    experiments = sorted(runs["experiment"].unique())
    cols = min(columns, len(experiments))
    rows = math.ceil(len(experiments) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows + 0.5), squeeze=False)
    for ax, exp in zip(axes.flat, experiments):
        g = runs[runs["experiment"] == exp]
        plot_experiment(g, title=_experiment_title(g), ax=ax, x_floor=X_FLOOR, log_y=True)
    for ax in list(axes.flat)[len(experiments):]:
        ax.set_visible(False)
    label = "" if prov.get("label", "").startswith("full") else f"{prov['label']}: "
    fig.suptitle(f"{label}test error vs sparsity (bands, bars: {CI_NAME} over seeds)", fontsize=12)
    fig.text(0.5, 0.005, source_line(prov), ha="center", va="bottom", fontsize=6.5, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return fig


# --------------------------------------------------------------------------- tables

def _mean_sd(x: pd.Series, scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± sd' over the finite values of ``x`` (NaN there: diverged runs, counted)."""
    d = describe((x.astype(float) * scale).tolist())
    if d["n"] == 0:
        return f"diverged ({d['n_nan']} runs)" if d["n_nan"] else "–"
    text = f"{d['mean']:.{digits}f}" if d["n"] == 1 else f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f}"
    return text + (f" ({d['n_nan']} of {d['n'] + d['n_nan']} diverged)" if d["n_nan"] else "")


def _metric(g: pd.DataFrame, col: str) -> pd.Series:
    """``col`` over the runs that measured it (NaN where a run diverged)."""
    return metric_values(g, col) if col in g else pd.Series(dtype=float)


def _error(g: pd.DataFrame, col: str = "test_accuracy") -> pd.Series:
    return 100 * (1 - _metric(g, col))


#: the note on learning rates when some compared run used an official schedule
SCHEDULE_NOTE = ("Adam at a constant learning rate, except where the options below set the official schedules "
                 "(`sparse_vd`'s `lr_schedule`, `l0`'s `ema`, `magnitude`'s retraining at `retrain_lr_factor`); "
                 "Han et al. trained with SGD.")


def _protocol_notes(runs: pd.DataFrame) -> list[str]:
    """:data:`PROTOCOL_NOTES`, with the constant-learning-rate note replaced where a compared run
    used an official schedule or parameter averaging (read from its options)."""
    scheduled = False
    if "method_params" in runs:
        for text in runs["method_params"].dropna().unique():
            try:
                opts = json.loads(text)
            except (TypeError, ValueError):
                continue
            scheduled |= (opts.get("lr_schedule", "constant") != "constant" or bool(opts.get("ema", 0))
                          or opts.get("schedule") == "iterative")
    return [SCHEDULE_NOTE if scheduled and n.startswith("Adam at a constant") else n for n in PROTOCOL_NOTES]


def _run_notes(runs: pd.DataFrame) -> list[str]:
    """What our compared runs did, read from the table: epochs, fine-tuning, method options."""
    g = runs[runs["dataset"].isin({d for d, *_ in PUBLISHED}) & runs["model"].isin({m for _, m, *_ in PUBLISHED})]
    if g.empty:
        return []
    epochs, finetune = _joined(g, "epochs") or "?", _joined(g[g["selection"] == "target"], "finetune_epochs") or "?"
    out = [f"Our runs: {epochs} training epochs and {finetune} "
           "fine-tuning epoch(s) of the matched targets (the papers: 200, and 20 for magnitude's retraining)."]
    if "method_params" in g:
        for method in method_order(g["method"].unique()):
            params = sorted(g.loc[g["method"] == method, "method_params"].dropna().unique())
            if params and params != ["{}"]:
                out.append(f"Our `{method}` options: `{'`, `'.join(params)}`.")
    return out


def published_comparison(runs: pd.DataFrame, prov: dict | None) -> str:
    """Markdown: our test error and weights kept beside the published numbers of docs/published.md,
    for the same data set and architecture, with the protocol differences listed (and the
    source line of ``prov`` when given)."""
    check_runs(runs)
    rows = []
    for dataset, model, method, selection, err, kept_frac, kept, source in PUBLISHED:
        same = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        experiments = sorted(same["experiment"].unique()) or [None]
        for exp in experiments:  # one row per experiment: runs of other settings are never pooled
            g = same[(same["experiment"] == exp) & (same["method"] == method) & (same["selection"] == selection)]
            label = "natural" if selection == "natural" else ""
            if selection == "target" and not g.empty:
                targets = g["target_sparsity"].dropna().unique()
                nearest = min(targets, key=lambda t: abs((1 - t) - kept_frac))
                g = g[g["target_sparsity"] == nearest]
                label = f"target {nearest:g}"
            if g.empty:
                ours = ["not run", "–", "–", "–"]
            else:
                ours = [f"{_mean_sd(_error(g))} ({label}, {g['seed'].nunique()} seeds)",
                        f"{_mean_sd(100 * (1 - g['sparsity']), digits=2)}%", _joined(g, "epochs") or "?", str(g["nodes_kept"].iloc[0])]
            where = f"{dataset} {_net_name(dataset, model)}" + (f" ({exp})" if len(experiments) > 1 else "")
            rows.append([where, method, *ours, f"{err:g}", kept, source])
    published = {(d, m) for d, m, *_ in PUBLISHED}
    for (exp, dataset, model), g in runs[(runs["method"] == "spike_slab") & (runs["selection"] == "natural")].groupby(
            ["experiment", "dataset", "model"]):
        if (dataset, model) not in published:
            continue
        several = runs.loc[(runs["dataset"] == dataset) & (runs["model"] == model), "experiment"].nunique() > 1
        rows.append([f"{dataset} {_net_name(dataset, model)}" + (f" ({exp})" if several else ""), "spike_slab",
                     f"{_mean_sd(_error(g))} (natural, {g['seed'].nunique()} seeds)",
                     f"{_mean_sd(100 * (1 - g['sparsity']))}%", _joined(g, "epochs"), str(g["nodes_kept"].iloc[0]), "–", "–",
                     "no published number to compare with (the paper's tables were not available to us)"])
    headers = ["data, net", "method", "ours: test error %", "ours: weights kept", "ours: epochs", "ours: nodes kept (seed 0)",
               "published error %", "published kept", "source"]
    notes = "\n".join(f"- {n}" for n in _protocol_notes(runs) + _run_notes(runs))
    source = f"\n\nSource: {source_line(prov)}." if prov else ""
    return ("# Our numbers beside the published ones\n\n" + tabulate(rows, headers=headers, tablefmt="github")
            + f"{source}\n\nHow our protocol differs from the papers':\n\n{notes}\n")


def natural_sparsity(runs: pd.DataFrame, prov: dict) -> str:
    """Markdown: each Bayesian method's own (natural) selection beside the dense network, per
    experiment: sparsity, test error / RMSE of the masked posterior mean and of the BMA, and,
    where some run measured it, of the method's unmasked posterior-sampling predictor
    (``*_sampled``: what Bai et al. report)."""
    check_runs(runs)
    sections = []
    for exp in sorted(runs["experiment"].unique()):
        g = runs[(runs["experiment"] == exp) & (runs["selection"] == "natural")]
        if g.empty:
            continue
        task = g["task"].iloc[0]
        # the unmasked posterior-sampling predictor (e.g. Bai et al.'s reported RMSE), where measured
        sampled = "test_accuracy_sampled" if task == "classification" else "test_rmse_sampled"
        sampled = sampled if sampled in g and not _metric(g, sampled).empty else None
        rows = []
        for method in method_order(g["method"].unique()):
            m = g[g["method"] == method]
            if task == "classification":
                perf = [_mean_sd(_error(m)), _mean_sd(_error(m, "test_accuracy_bma"))]
                perf += [_mean_sd(_error(m, sampled))] if sampled else []
            else:
                perf = [_mean_sd(_metric(m, "test_rmse"), digits=3), _mean_sd(_metric(m, "test_rmse_bma"), digits=3)]
                perf += [_mean_sd(_metric(m, sampled), digits=3)] if sampled else []
            extra = [_mean_sd(_metric(m, "fnr"), digits=3), _mean_sd(_metric(m, "fpr"), digits=3)]
            c = compression_of_means(m)
            rows.append([method, f"{_mean_sd(100 * m['sparsity'])}", *perf, "∞" if c == math.inf else f"{c:.1f}", *extra,
                         str(m["seed"].nunique())])
        if task == "regression" and "test_rmse_constant" in g and g["test_rmse_constant"].notna().any():
            ref = g.dropna(subset=["test_rmse_constant"]).drop_duplicates("seed")
            rows.append(["constant (training mean)", "–", _mean_sd(ref["test_rmse_constant"], digits=3), "–",
                         *(["–"] if sampled else []), "–", "–", "–", str(ref["seed"].nunique())])
        what = "test error %" if task == "classification" else "test RMSE"
        headers = ["method", "sparsity %", what, f"{what} (BMA)", *([f"{what} (sampled nets, unmasked)"] if sampled else []),
                   "compression × (of means)", "FNR", "FPR", "seeds"]
        sections.append(f"## {exp}: {_experiment_title(g)}\n\n" + tabulate(rows, headers=headers, tablefmt="github") + "\n")
    return ("# Natural sparsity: each method's own selection (mean ± sd over seeds)\n\n" + "\n".join(sections)
            + f"\nSource: {source_line(prov)}.\n")
