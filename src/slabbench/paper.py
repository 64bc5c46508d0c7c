"""Freezing runs for the paper: run folders (or a run table) -> ``paper/data/``, with a
provenance kept per experiment, and loading them back.  The figures and tables themselves are
drawn by the scripts in ``paper/`` (one per output, shared pieces in ``paper/_common.py``).

    freeze(...)                 the runs of some experiments -> paper/data/ (runs.csv, provenance.json
                                and the per-run artefacts of freeze_artefacts), replacing only those
                                experiments: experiments frozen from other runs stay as they are
    load_frozen(...)            the frozen table and its provenance (an old single-run provenance is
                                migrated to the per-experiment form on load)
    load_artefacts(...)         the artefacts back (input PIPs, conv1 kernel PIPs, mean images, selections)
    source_line(...), tag(...)  what the numbers of a figure, panel or table row come from

Each experiment's provenance says ``protocol`` when its runs are every run of
config/paper.yaml's block for it, made with exactly that block's options, and ``REDUCED``
otherwise, with what is reduced (epochs, fine-tuning epochs, seeds, methods, options).
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

from slabbench.aggregate import COLUMNS, check_runs, records_table, spec_setting, write_csv
from slabbench.config import load_yaml, run_dir, run_specs, validate
from slabbench.io import atomic_path, read_jsonl, write_text
from slabbench.provenance import git_commit

log = logging.getLogger(__name__)

#: the per-run artefacts that paper/data/ keeps beside runs.csv and provenance.json
ARTEFACT_FILES = ("artefacts.json", "pips.npz", "features.csv")
#: the paper grid: what "protocol" means, experiment by experiment
PAPER_GRID = "config/paper.yaml"
#: the papers' own protocols for the published comparison (its experiments are named apart from
#: the paper grid's): what "protocol" means for an experiment the paper grid does not have
PUBLISHED_GRID = "config/published.yaml"
#: why an experiment of the paper grid is absent from a frozen table, by data set (else "not run")
MISSING_REASONS = {
    "cifar10": "not run: needs the CIFAR-10 files (resources/cifar-10-batches-py/), which no machine that ran "
               "the grid could get",
}
#: how to fill what a frozen table lacks (named wherever a figure says something is missing)
REFREEZE = ("rerun the grid and freeze it: python paper/freeze.py --config config/paper.yaml --partial "
            "--experiments EXPERIMENT...")
#: the provenance format written by :func:`freeze` (1: one dict for the whole table, migrated on load)
FORMAT = 2
#: spec keys compared with the paper grid's block (what makes a run the protocol's), in this order
COMPARED = ("epochs", "finetune_epochs", "batch_size", "lr", "finetune_lr_factor", "noise_sd", "dataset",
            "dataset_params", "model", "model_params", "sparsities", "restarts", "restarts_keep",
            "restarts_screen_epochs", "flush_denormal")
#: spec keys that never make a run reduced (where it ran, which run it is)
NOT_COMPARED = {"experiment", "method", "seed", "device", "graphs", "compile", "noise_rng", "variant_of", "method_params"}


class PaperError(ValueError):
    """The frozen table or its provenance is missing or malformed."""


# --------------------------------------------------------------------------- provenance

def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def specs_sha256(specs: list[dict]) -> str:
    """SHA-256 of an experiment's resolved run specs (canonical JSON, sorted by method and
    seed): what the runs were configured as, whatever else the config file holds."""
    key = sorted(specs, key=lambda s: (s["method"], int(s["seed"])))
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _root() -> Path:
    from slabbench._plugins import repo_root

    return repo_root() or Path.cwd()


def _rel(path: Path) -> str:
    """``path`` as the provenance names it: relative to the repository where it lies inside."""
    path = Path(path)
    try:
        return path.resolve().relative_to(_root().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return f"{v:g}" if isinstance(v, float) else str(v)


def protocol_differences(used: list[dict], protocol: list[dict], present: set[tuple[str, int]]) -> list[str]:
    """What makes an experiment's frozen runs less than the paper grid's block for it.

    ``used``: the specs of the experiment in the config the runs were made with; ``protocol``:
    its specs in the paper grid (empty: not an experiment of the paper grid); ``present``: the
    (method, seed) pairs with runs in the table.  One line per difference, e.g. "epochs 10
    (protocol 200)", "5 of 30 seeds (0-4)", "methods not run: spike_slab_k5"; [] when the
    runs are the protocol's, complete."""
    if not protocol:
        return [f"not an experiment of {PAPER_GRID} or {PUBLISHED_GRID}"]
    out = []
    proto_seeds = sorted({int(s["seed"]) for s in protocol})
    seeds = sorted({seed for _, seed in present})
    if seeds != proto_seeds:
        out.append(f"{len(seeds)} of {len(proto_seeds)} seeds ({_ranges(seeds)})" if set(seeds) <= set(proto_seeds)
                   else f"seeds {_ranges(seeds)} (protocol {_ranges(proto_seeds)})")
    proto_methods, methods = {s["method"] for s in protocol}, {m for m, _ in present}
    by_method = {s["method"]: s for s in sorted(used, key=lambda s: int(s["seed"]))}
    proto_by = {s["method"]: s for s in sorted(protocol, key=lambda s: int(s["seed"]))}
    common = sorted(methods & proto_methods & set(by_method))
    keys = [k for k in COMPARED] + sorted({k for m in common for k in (*by_method[m], *proto_by[m])}
                                          - set(COMPARED) - NOT_COMPARED)
    for key in keys:
        pairs = {(_fmt(by_method[m].get(key)), _fmt(proto_by[m].get(key))) for m in common
                 if by_method[m].get(key) != proto_by[m].get(key)}
        for have, want in sorted(pairs):
            out.append(f"{key} {have} (protocol {want})")
    if proto_methods - methods:
        out.append("methods not run: " + ", ".join(sorted(proto_methods - methods)))
    if methods - proto_methods:
        out.append("methods outside the protocol: " + ", ".join(sorted(methods - proto_methods)))
    for m in common:
        have, want = by_method[m].get("method_params", {}), proto_by[m].get("method_params", {})
        for k in sorted(set(have) | set(want)):
            if have.get(k) != want.get(k):
                out.append(f"{m} {k} {_fmt(have.get(k, 'default'))} (protocol {_fmt(want.get(k, 'default'))})")
    missing = len({(s["method"], int(s["seed"])) for s in protocol if s["method"] in methods} - present)
    if missing and seeds == proto_seeds:
        out.append(f"{missing} of the protocol's runs of these methods missing")
    return out


def _ranges(seeds: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, start = [], None
    for i, s in enumerate(seeds):
        if start is None:
            start = s
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ", ".join(parts)


def _paper_specs(grid: str | Path | None) -> dict[str, list[dict]]:
    """The paper grid's specs by experiment ({} when the file is not there)."""
    path = Path(grid) if grid is not None else _root() / PAPER_GRID
    if not path.is_file():
        return {}
    out: dict[str, list[dict]] = {}
    for s in run_specs(validate(load_yaml(path))):
        out.setdefault(s["experiment"], []).append(s)
    return out


def protocol_of(exp: str, paper: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """Where experiment ``exp``'s protocol is written and its specs there: the paper grid's
    block (``paper``: its specs by experiment) or, for an experiment it lacks, the block of
    config/published.yaml of that name (the papers' own protocols); (PAPER_GRID, []) when
    neither has it."""
    if exp in paper:
        return PAPER_GRID, paper[exp]
    published = _paper_specs(_root() / PUBLISHED_GRID).get(exp, [])
    return (PUBLISHED_GRID, published) if published else (PAPER_GRID, [])


def experiment_provenance(exp: str, runs: pd.DataFrame, specs: list[dict], config_path: Path,
                          protocol: list[dict], note: str, frozen_at: str, frozen_at_commit: str,
                          protocol_config: str = PAPER_GRID) -> dict:
    """The provenance of one experiment's frozen runs (``runs``: its rows; ``specs``: its
    configured runs in ``config_path``; ``protocol``: its runs in ``protocol_config``, the paper
    grid or, for the published comparison's experiments, config/published.yaml)."""
    present = {(m, int(s)) for m, s in zip(runs["method"], runs["seed"])}
    reduced = protocol_differences(specs, protocol, present)
    configured = {(s["method"], int(s["seed"])) for s in specs}
    return {
        "label": "REDUCED" if reduced else "protocol",
        "reduced": reduced,
        "config": _rel(config_path),
        "config_sha256": _sha256(config_path),
        "specs_sha256": specs_sha256(specs),
        "protocol_config": protocol_config,
        "protocol_runs": len(protocol),
        "run_commits": sorted(runs["git_commit"].dropna().astype(str).unique()),
        "run_commit_dirty": bool(runs["git_dirty"].fillna(False).astype(bool).any()) if "git_dirty" in runs else False,
        "devices": sorted(runs["device_name"].dropna().astype(str).unique()) if "device_name" in runs else [],
        "torch": sorted(runs["torch_version"].dropna().astype(str).unique()) if "torch_version" in runs else [],
        "runs_configured": len(configured),
        "runs_present": len(present),
        "runs_missing": [f"{exp}/{m}/seed={s}" for m, s in sorted(configured - present)],
        "rows": int(len(runs)),
        "frozen_at": frozen_at,
        "frozen_at_commit": frozen_at_commit,
        "note": note,
    }


def migrate_provenance(prov: dict, runs: pd.DataFrame, grid: str | Path | None = None) -> dict:
    """A provenance in the per-experiment form (:data:`FORMAT` 2).  An old one (one dict for
    the whole table) becomes one entry per experiment of ``runs``, each with the old config,
    commits, devices and note, and what is reduced read from the old config beside the paper
    grid (when the old config file is still the one frozen, by its SHA-256; else said unknown)."""
    if "experiments" in prov:
        return prov
    cfg = _root() / prov.get("config", "")
    specs: dict[str, list[dict]] = {}
    if cfg.is_file() and _sha256(cfg) == prov.get("config_sha256"):
        for s in run_specs(validate(load_yaml(cfg))):
            specs.setdefault(s["experiment"], []).append(s)
    paper = _paper_specs(grid)
    out = {}
    for exp, g in runs.groupby("experiment", sort=True):
        entry = experiment_provenance(exp, g, specs.get(exp, []), cfg if cfg.is_file() else Path(prov["config"]),
                                      paper.get(exp, []), prov.get("note", ""), prov.get("frozen_at", ""),
                                      prov.get("frozen_at_commit", "")) if exp in specs else None
        if entry is None:  # the old config is gone or changed: keep what the old provenance said
            present = {(m, int(s)) for m, s in zip(g["method"], g["seed"])}
            entry = {"label": "REDUCED", "reduced": ["unknown: frozen as a reduced run before provenance was kept per "
                                                     "experiment, and its config is no longer the one frozen"],
                     "config": prov.get("config"), "config_sha256": prov.get("config_sha256"), "specs_sha256": None,
                     "protocol_config": PAPER_GRID, "protocol_runs": len(paper.get(exp, [])),
                     "run_commits": sorted(g["git_commit"].dropna().astype(str).unique()),
                     "run_commit_dirty": prov.get("run_commit_dirty", False),
                     "devices": sorted(g["device_name"].dropna().astype(str).unique()),
                     "torch": sorted(g["torch_version"].dropna().astype(str).unique()),
                     "runs_configured": None, "runs_present": len(present),
                     "runs_missing": [m for m in prov.get("runs_missing", []) if m.startswith(exp + "/")],
                     "rows": int(len(g)), "frozen_at": prov.get("frozen_at", ""),
                     "frozen_at_commit": prov.get("frozen_at_commit", ""), "note": prov.get("note", "")}
        out[exp] = entry
    new = {"format": FORMAT, "experiments": out, "paper_grid_missing": None, "artefacts": prov.get("artefacts")}
    new["paper_grid_missing"] = paper_grid_gaps(runs, grid if grid is not None else _root() / PAPER_GRID)
    return new


def paper_grid_gaps(runs: pd.DataFrame, full_grid: str | Path) -> dict[str, str] | None:
    """The experiments of the paper grid ``full_grid`` without a row in ``runs``, each with
    the reason (:data:`MISSING_REASONS` by data set, else "not run"); None without the file."""
    if not Path(full_grid).is_file():
        return None
    grid = load_yaml(full_grid).get("experiments", {})
    present = set(runs["experiment"].astype(str))
    return {exp: MISSING_REASONS.get(block.get("dataset"), "not run") for exp, block in grid.items() if exp not in present}


# --------------------------------------------------------------------------- freezing

def freeze(config_path: str | Path, out_dir: str | Path, *, experiments: list[str] | None = None,
           runs_csv: str | Path | None = None, results_root: str | Path = ".", full_grid: str | Path | None = None,
           note: str = "") -> dict:
    """Freeze the runs of ``experiments`` (default: every experiment of ``config_path`` with a
    run present) into ``out_dir``, replacing only those experiments' rows, artefacts and
    provenance; whatever else ``out_dir`` holds (experiments frozen from other runs, another
    machine) is kept.  An old-format provenance there is migrated first.

    With ``runs_csv`` the rows are taken from that table; otherwise from whichever run folders
    of the config's grid exist under ``results_root`` (a grid cut short).  The artefacts are
    read from the run folders under ``results_root``.  ``full_grid``: the paper grid that
    "protocol" is measured against (default config/paper.yaml of the repository).
    Returns the whole provenance written."""
    config_path, out_dir = Path(config_path), Path(out_dir)
    grid = Path(full_grid) if full_grid is not None else _root() / PAPER_GRID
    all_specs = run_specs(validate(load_yaml(config_path)))
    configured = sorted({s["experiment"] for s in all_specs})
    if experiments:
        unknown = sorted(set(experiments) - set(configured))
        if unknown:
            raise PaperError(f"unknown experiment(s) {', '.join(unknown)} in {config_path}; have {', '.join(configured)}")
    wanted = set(experiments or configured)
    specs = [s for s in all_specs if s["experiment"] in wanted]
    if runs_csv:
        runs = pd.read_csv(runs_csv)
        if experiments:
            runs = runs[runs["experiment"].isin(wanted)].reset_index(drop=True)
    else:
        runs = records_table(_matching_records(specs, Path(results_root)))
    if runs.empty:
        raise PaperError(f"no runs to freeze: {runs_csv or 'no metrics.jsonl of ' + str(config_path) + ' under ' + str(results_root)}"
                         + (f" for {', '.join(sorted(wanted))}" if experiments else ""))
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
    frozen = sorted(set(runs["experiment"]))
    empty = sorted(set(experiments or []) - set(frozen))
    if empty:
        raise PaperError(f"no runs of {', '.join(empty)} to freeze (under {results_root})")
    if full_grid is None and not grid.is_file():
        grid = config_path
    paper = _paper_specs(grid)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = git_commit()[0]
    by_exp = {e: [s for s in specs if s["experiment"] == e] for e in frozen}

    old_runs, old_prov = _load_existing(out_dir, grid)
    keep = old_runs[~old_runs["experiment"].isin(frozen)] if old_runs is not None else runs.iloc[:0]
    merged = _concat(keep, runs)
    check_runs(merged)
    entries = dict((old_prov or {}).get("experiments", {}))
    for e in frozen:
        proto_config, proto = protocol_of(e, paper)
        entries[e] = experiment_provenance(e, runs[runs["experiment"] == e], by_exp[e], config_path, proto,
                                           note, when, commit, protocol_config=proto_config)
    entries = {e: entries[e] for e in sorted(entries) if e in set(merged["experiment"])}
    out_dir.mkdir(parents=True, exist_ok=True)
    artefacts = freeze_artefacts(specs, runs, Path(results_root), out_dir, replace=frozen)
    for e in frozen:
        entries[e]["artefacts"] = artefacts["by_experiment"].get(e, {})
    prov = {"format": FORMAT, "experiments": entries, "paper_grid_missing": paper_grid_gaps(merged, grid),
            "artefacts": {k: v for k, v in artefacts.items() if k != "by_experiment"}}
    write_csv(merged, out_dir / "runs.csv")
    write_text(out_dir / "provenance.json", json.dumps(prov, indent=2) + "\n")
    return prov


def refresh_provenance(out_dir: str | Path, experiments: list[str], full_grid: str | Path | None = None) -> dict:
    """Re-read what is reduced in frozen ``experiments`` of ``out_dir`` against the paper grid as
    it is now (``full_grid``, default config/paper.yaml), without their runs: an edit of the
    paper grid's block (a new option) changes what the runs lack, not the runs.  The specs the
    runs were made with come from the experiment's recorded config, which must still be the file
    frozen (its SHA-256), else the experiment is refrozen from its runs.  Everything else in the
    entry stays; ``refreshed_at`` / ``refreshed_at_commit`` say when.  Returns the provenance written."""
    out_dir = Path(out_dir)
    grid = Path(full_grid) if full_grid is not None else _root() / PAPER_GRID
    runs, prov = load_frozen(out_dir, references=False)
    known = prov.get("experiments", {})
    unknown = sorted(set(experiments) - set(known))
    if unknown:
        raise PaperError(f"no frozen experiment {', '.join(unknown)} in {out_dir}; have {', '.join(sorted(known))}")
    paper = _paper_specs(grid)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = git_commit()[0]
    for exp in experiments:
        entry = known[exp]
        cfg = Path(entry["config"]) if Path(entry["config"]).is_absolute() else _root() / entry["config"]
        if not cfg.is_file() or _sha256(cfg) != entry.get("config_sha256"):
            raise PaperError(f"{exp}: its config {entry['config']} is not the file frozen (SHA-256 "
                             f"{entry.get('config_sha256')}): refreeze {exp} from its runs instead")
        specs = [s for s in run_specs(validate(load_yaml(cfg))) if s["experiment"] == exp]
        proto_config, proto = protocol_of(exp, paper)
        fresh = experiment_provenance(exp, runs[runs["experiment"] == exp], specs, cfg, proto, entry.get("note", ""),
                                      entry.get("frozen_at", ""), entry.get("frozen_at_commit", ""),
                                      protocol_config=proto_config)
        keep = {k: v for k, v in entry.items() if k not in fresh}  # artefacts, an earlier refresh's stamp
        known[exp] = {**fresh, **keep, "refreshed_at": when, "refreshed_at_commit": commit}
    prov["experiments"] = known
    prov["paper_grid_missing"] = paper_grid_gaps(runs, grid)
    write_text(out_dir / "provenance.json", json.dumps(prov, indent=2) + "\n")
    return prov


def _concat(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of both, columns in the run table's order (then any other), sorted as the table."""
    if old.empty:
        out = new.copy()
    else:
        cols = [c for c in COLUMNS if c in old or c in new] + [c for c in [*old, *new] if c not in COLUMNS]
        out = pd.concat([old.reindex(columns=list(dict.fromkeys(cols))), new.reindex(columns=list(dict.fromkeys(cols)))],
                        ignore_index=True)
    return out.sort_values(["experiment", "method", "selection", "target_sparsity", "seed"], na_position="first",
                           kind="stable").reset_index(drop=True)


def _load_existing(out_dir: Path, grid: Path) -> tuple[pd.DataFrame | None, dict | None]:
    """What ``out_dir`` holds already (its provenance migrated), or (None, None)."""
    csv, prov = out_dir / "runs.csv", out_dir / "provenance.json"
    if not (csv.exists() and prov.exists()):
        return None, None
    runs = pd.read_csv(csv)
    return runs, migrate_provenance(json.loads(prov.read_text()), runs, grid)


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


def freeze_artefacts(specs: list[dict], runs: pd.DataFrame, root: Path, out_dir: Path,
                     replace: list[str] | None = None) -> dict:
    """Keep the small per-run artefacts the paper figures need, for the runs in ``runs``,
    merged into those ``out_dir`` holds (the entries of the experiments ``replace``, default
    those of ``runs``, are dropped first; every other experiment's are kept):

    - ``pips.npz``: ``input_pip/{experiment}/{method}/seed={seed}`` (float32, one PIP per input
      feature, from the run's ``artefacts.pt``, the natural fit), ``kernel_pip/...`` (the PIPs of
      a convolutional first layer's kernels, (out, in, h, w): LeNet-5's conv1) and
      ``mean_image/{experiment}`` (the mean training input as an image, where the inputs are one);
    - ``features.csv``: for experiments with a known true support, the input features each
      natural selection keeps (``selected``: 0-based indices, space-separated);
    - ``artefacts.json``: per experiment the data set's feature shape, true support and number
      of features, what the mean image is, and which runs gave input / kernel PIPs.

    Nodes kept per layer, training time and calibration metrics are columns of ``runs.csv``.
    Returns the provenance entry: each file's SHA-256, what is in it, and per experiment
    (``by_experiment``) how many runs gave PIPs and selections."""
    import numpy as np
    import torch

    replace = set(replace if replace is not None else runs["experiment"].unique())
    old = load_artefacts(out_dir)
    meta = {e: f for e, f in (old["meta"] or {}).items() if e not in replace}
    arrays = {k: v for k, v in (old["arrays"] or {}).items() if k.split("/")[1] not in replace}
    selected_rows = [] if old["features"] is None else [
        {"experiment": r.experiment, "method": r.method, "seed": int(r.seed), "selected": " ".join(map(str, r.selected))}
        for r in old["features"].itertuples(index=False) if r.experiment not in replace]
    present = set(zip(runs["experiment"], runs["method"], runs["seed"].astype(int)))
    by_exp: dict[str, list[dict]] = {}
    for spec in specs:
        if (spec["experiment"], spec["method"], int(spec["seed"])) in present:
            by_exp.setdefault(spec["experiment"], []).append(spec)
    counts: dict[str, dict] = {}
    for exp, exp_specs in sorted(by_exp.items()):
        facts, image = _dataset_facts(min(exp_specs, key=lambda s: int(s["seed"])))
        if image is not None:
            arrays[f"mean_image/{exp}"] = image
        facts["input_pips"], facts["kernel_pips"], facts["selected_features"] = {}, {}, {}
        n_sel = 0
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
                first = next(iter((art.get("pip_weight") or {}).values()), None)
                if first is not None and first.dim() == 4:  # a convolutional first layer: its kernels' PIPs
                    arrays[f"kernel_pip/{exp}/{method}/seed={seed}"] = first.float().numpy()
                    facts["kernel_pips"].setdefault(method, []).append(seed)
            if facts["true_support"] is not None:
                for rec in records:
                    if rec.get("selection") == "natural" and "selected_features" in rec:
                        selected_rows.append({"experiment": exp, "method": method, "seed": seed,
                                              "selected": " ".join(str(i) for i in rec["selected_features"])})
                        facts["selected_features"].setdefault(method, []).append(seed)
                        n_sel += 1
        meta[exp] = facts
        counts[exp] = {"input_pip_runs": sum(map(len, facts["input_pips"].values())),
                       "kernel_pip_runs": sum(map(len, facts["kernel_pips"].values())), "selection_runs": n_sel}
    meta = {e: meta[e] for e in sorted(meta)}
    write_text(out_dir / "artefacts.json", json.dumps(meta, indent=1) + "\n")
    _write_npz(out_dir / "pips.npz", arrays)
    selected = pd.DataFrame(selected_rows, columns=["experiment", "method", "seed", "selected"])
    write_csv(selected.sort_values(["experiment", "method", "seed"], kind="stable"), out_dir / "features.csv")
    return {"files": {name: _sha256(out_dir / name) for name in ARTEFACT_FILES},
            "input_pip_runs": sum(len(s) for f in meta.values() for s in f.get("input_pips", {}).values()),
            "kernel_pip_runs": sum(len(s) for f in meta.values() for s in f.get("kernel_pips", {}).values()),
            "selection_runs": len(selected_rows),
            "what": "input PIPs of every run that has them (artefacts.pt 'pip_input', the natural fit), the kernel PIPs "
                    "of a convolutional first layer, the mean training image of image data sets, the natural "
                    "selections' input features where the truth is known",
            "by_experiment": counts}


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
    """The frozen run table and its per-experiment provenance (an old single-dict provenance
    migrated, see :func:`migrate_provenance`); with ``references``, regression rows made
    before records carried ``test_rmse_constant`` get it from :func:`with_references`."""
    data_dir = Path(data_dir)
    csv, prov = data_dir / "runs.csv", data_dir / "provenance.json"
    for p in (csv, prov):
        if not p.exists():
            raise PaperError(f"{p} is missing; freeze a run table first: python paper/freeze.py --config CONFIG")
    runs = pd.read_csv(csv)
    prov = migrate_provenance(json.loads(prov.read_text()), runs)
    return (with_references(runs, prov) if references else runs), prov


def _frozen_specs(entry: dict) -> list[dict] | None:
    """The specs of one experiment's entry from its config, when the config still configures
    them as frozen (its specs' SHA-256, or the file's for an entry without it); else None."""
    cfg = Path(entry.get("config") or "")
    cfg = cfg if cfg.is_absolute() else _root() / cfg
    if not cfg.is_file():
        return None
    if entry.get("specs_sha256") is None and _sha256(cfg) != entry.get("config_sha256"):
        return None
    return run_specs(validate(load_yaml(cfg)))


def with_references(runs: pd.DataFrame, prov: dict) -> pd.DataFrame:
    """``runs`` with the constant predictor's test RMSE (the training mean's) filled in for
    regression rows that lack it, computed from the data sets of each experiment's frozen
    config — data only, no training.  Left empty (with a warning) where that config is not
    there or no longer configures the experiment as frozen."""
    from slabbench.cli import reference_metrics

    runs = runs.copy()
    if "test_rmse_constant" not in runs:
        runs["test_rmse_constant"] = math.nan
    todo = runs[(runs["task"] == "regression") & runs["test_rmse_constant"].isna()]
    done: dict[tuple, float] = {}
    for exp, g in todo.groupby("experiment"):
        entry = prov.get("experiments", {}).get(exp, {})
        all_specs = _frozen_specs(entry)
        specs = {(s["method"], int(s["seed"])): s for s in all_specs or [] if s["experiment"] == exp}
        if not specs or (entry.get("specs_sha256") and specs_sha256(list(specs.values())) != entry["specs_sha256"]):
            log.warning("no constant-predictor reference for %s: its config is missing or not the frozen one", exp)
            continue
        for (method, seed), _ in g.groupby(["method", "seed"]):
            spec = specs.get((method, int(seed)))
            if spec is None:
                continue
            key = (spec["dataset"], json.dumps(spec["dataset_params"], sort_keys=True), int(seed))  # same data, every method
            if key not in done:
                done[key] = reference_metrics(spec, "regression")["test_rmse_constant"]
            rows = (runs["experiment"] == exp) & (runs["method"] == method) & (runs["seed"] == seed)
            runs.loc[rows, "test_rmse_constant"] = done[key]
    return runs


# --------------------------------------------------------------------------- saying where numbers come from

def entry(prov: dict, exp: str) -> dict:
    """The provenance of experiment ``exp`` (a PaperError naming the frozen ones if absent)."""
    try:
        return prov["experiments"][exp]
    except KeyError:
        raise PaperError(f"no provenance for experiment {exp!r}; frozen: {', '.join(prov.get('experiments', {}))}") from None


def tag(prov: dict, exp: str, full: bool = False) -> str:
    """"protocol" or "REDUCED: <what is reduced>" for experiment ``exp`` (the first two
    reductions and how many more unless ``full``); "provenance unknown" without an entry."""
    e = prov.get("experiments", {}).get(exp)
    if e is None:
        return "provenance unknown"
    if e["label"] == "protocol":
        return "protocol"
    what = e.get("reduced") or []
    shown = what if full or len(what) <= 2 else what[:2] + [f"{len(what) - 2} more"]
    return "REDUCED: " + "; ".join(shown)


def is_protocol(prov: dict, experiments) -> bool:
    """True when every experiment of ``experiments`` was frozen at the protocol."""
    exps = prov.get("experiments", {})
    return all(exps.get(e, {}).get("label") == "protocol" for e in experiments)


def source_line(prov: dict, experiments=None) -> str:
    """What the numbers of ``experiments`` (default: every frozen one) come from, one clause
    per group of experiments frozen alike: protocol or REDUCED and what is reduced, runs
    present of configured, config and its SHA-256, commits, devices, when frozen; then the
    paper-grid experiments the table lacks (with ``experiments`` None)."""
    exps = prov.get("experiments", {})
    names = sorted(exps) if experiments is None else [e for e in sorted(set(experiments)) if e in exps]
    groups: dict[tuple, list[str]] = {}
    for e in names:
        x = exps[e]
        key = (x["label"], x["config"], (x.get("config_sha256") or "")[:12], tuple(c[:10] for c in x.get("run_commits", [])),
               tuple(x.get("devices", [])), tuple(x.get("reduced") or []), x.get("frozen_at", ""))
        groups.setdefault(key, []).append(e)
    clauses = []
    for (label, config, sha, commits, devices, reduced, when), members in sorted(groups.items(), key=lambda kv: kv[0][0] != "protocol"):
        present = sum(exps[e]["runs_present"] for e in members)
        configured = [exps[e].get("runs_configured") for e in members]
        of = f" of {sum(configured)}" if None not in configured else ""
        missing = sum(len(exps[e].get("runs_missing") or []) for e in members)
        what = f" ({'; '.join(reduced)})" if reduced else ""
        clauses.append(f"{label}{what}: {', '.join(members)}: {present}{of} runs of {config} (sha256 {sha})"
                       + (f", {missing} configured runs missing" if missing else "")
                       + f"; commit {', '.join(commits) or 'unknown'}; {', '.join(devices) or 'unknown device'}; frozen {when}")
    if not clauses:
        clauses = ["no frozen experiment"]
    return " | ".join(clauses) + (gaps_text(prov) if experiments is None else "")


def gaps_text(prov: dict) -> str:
    """"; not in this table: ..." naming the paper grid's experiments the table lacks and why
    ("" when it lacks none or the provenance cannot tell)."""
    by_reason: dict[str, list[str]] = {}
    for exp, reason in (prov.get("paper_grid_missing") or {}).items():
        by_reason.setdefault(reason, []).append(exp)
    if not by_reason:
        return ""
    parts = [f"{', '.join(exps)} ({reason})" for reason, exps in sorted(by_reason.items(), key=lambda kv: kv[0] == "not run")]
    return " | paper-grid experiments not in this table: " + "; ".join(parts)


def with_source_md(body: str, prov: dict) -> str:
    """A markdown document with the source line above it (seen first) and below it."""
    return f"> {source_line(prov)}\n\n{body}\nSource: {source_line(prov)}.\n"


def source_tex(prov: dict) -> str:
    """The source line as a typeset LaTeX paragraph (not a comment: it must show)."""
    text = source_line(prov)
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("|", r"\textbar{}")):
        text = text.replace(a, b)
    return f"\n\\noindent\\emph{{Source: {text}.}}\n"
