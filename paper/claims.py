"""paper/README.md from paper/README.template.md: every number the README quotes is computed here
from paper/data/, so a claim cannot drift from the data.  The template holds the prose that is
true whatever the data; each ``{{name}}`` in it is replaced by the text :func:`claims` makes.

    python paper/claims.py [PAPER_DIR] [TEMPLATE]     # writes the README of PAPER_DIR (default: paper/)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from _common import load_frozen, no_path, paper_dir, run_seconds, tag
from slabbench.io import write_text
from slabbench.paper import gaps_text, load_artefacts
from slabbench.plotting import method_order
from slabbench.published import PUBLISHED, error, mean_sd, metric, net_name, on_a_path

MODERATE = 0.9  #: the claims split the targets at this one: up to it, and above it


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with every ``{{name}}`` replaced by ``values[name]`` (an unknown name is an error)."""
    def one(m):
        name = m.group(1)
        if name not in values:
            raise KeyError(f"{{{{{name}}}}} in the template has no claim; have {', '.join(sorted(values))}")
        return values[name]
    return re.sub(r"\{\{\s*([a-z_]+)\s*\}\}", one, template)


def _perf(g: pd.DataFrame) -> tuple[str, pd.Series, int]:
    """(what, per-row values, digits) of an experiment's test metric: error % or RMSE."""
    if g["task"].iloc[0] == "classification":
        return "test error %", 100 * (1 - g["test_accuracy"].astype(float)), 2
    return "test RMSE", g["test_rmse"].astype(float), 3


def _span(values, digits: int) -> str:
    v = [x for x in values if x == x]
    if not v:
        return "–"
    lo, hi = min(v), max(v)
    return f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}–{hi:.{digits}f}"


def _means(g: pd.DataFrame, targets) -> pd.DataFrame:
    """target x method mean of the test metric over seeds (target rows only)."""
    _, y, _ = _perf(g)
    t = g.assign(y=y)[(g["selection"] == "target") & g["target_sparsity"].isin(targets)]
    return t.groupby(["target_sparsity", "method"])["y"].mean().unstack()


#: a target's runs count as reaching it within this much sparsity
TARGET_TOLERANCE = 0.005


def _targets_clause(g: pd.DataFrame, targets, label: str) -> str:
    what, _, digits = _perf(g)
    m = _means(g, targets)
    if m.empty:
        return ""
    methods = method_order(m.columns)
    ranges = ", ".join(f"{meth} {_span(m[meth], digits)}" for meth in methods)
    best = m.idxmin(axis=1)
    lowest = (f"lowest mean at every one of them: `{best.iloc[0]}`" if best.nunique() == 1 else
              "lowest mean by target: " + ", ".join(f"{t:g} `{b}`" for t, b in best.items()))
    rows = g[g["selection"] == "target"]
    hollow = []  # a lowest mean made (in part) of nets with no path from input to output: constant predictions
    for t, b in best.items():
        r = rows[(rows["target_sparsity"] == t) & (rows["method"] == b)]
        k = int(no_path(r).sum())
        if k:
            hollow.append(f"{t:g} `{b}` in {k} of {len(r)} runs")
    note = (" Among these lowest means, nets with no path from input to output (constant predictions): "
            + "; ".join(hollow) + "." if hollow else "")
    reached = rows[rows["target_sparsity"].isin(m.index)].groupby(["target_sparsity", "method"])["sparsity"].mean()
    missed = [f"{t:g} `{meth}` at {r:.3g}" for (t, meth), r in reached.items() if abs(r - t) > TARGET_TOLERANCE]
    if missed:  # e.g. l0 whose own gates already prune more than the target: compared at another sparsity
        note += " Targets a method did not hit, its runs compared at their mean sparsity instead: " + "; ".join(missed) + "."
    return f"{label} ({', '.join(f'{t:g}' for t in m.index)}), mean {what} over seeds: {ranges}; {lowest}.{note}"


def generalisation(runs: pd.DataFrame, prov: dict) -> str:
    out = []
    for exp, g in runs.groupby("experiment", sort=True):
        targets = sorted(g["target_sparsity"].dropna().unique())
        what, y, digits = _perf(g)
        dense = g[(g["method"] == "dense") & (g["selection"] == "natural")]
        parts = [_targets_clause(g, [t for t in targets if t <= MODERATE], f"At targets up to {MODERATE:g}"),
                 _targets_clause(g, [t for t in targets if t > MODERATE], f"At targets above {MODERATE:g}")]
        if not dense.empty:
            train = ""
            if "RMSE" in what and "train_rmse" in dense and dense["train_rmse"].notna().any():
                train = f" (its training RMSE {mean_sd(dense['train_rmse'].dropna(), digits=digits)})"
            parts.append(f"Dense: {mean_sd(y[dense.index], digits=digits)}{train}.")
        if "test_rmse_constant" in g and g["test_rmse_constant"].notna().any():
            ref = g.dropna(subset=["test_rmse_constant"]).drop_duplicates("seed")["test_rmse_constant"]
            parts.append(f"The constant predictor (training mean): {mean_sd(ref, digits=3)}.")
        out.append(f"- `{exp}` [{tag(prov, exp)}]: " + " ".join(p for p in parts if p))
    return "\n".join(out)


def no_path_claims(runs: pd.DataFrame) -> str:
    """Per experiment and method, the targets with nets that have no path from input to
    output, how many runs, their units kept, and whether their feature counts still say
    inputs are kept (then their FNR / FPR mean nothing)."""
    t = runs[runs["selection"] == "target"]
    empty = t[no_path(t)]
    if empty.empty:
        return "- none: every pruned net keeps a path from input to output."
    out = []
    for (exp, method), g in empty.groupby(["experiment", "method"], sort=True):
        cells = []
        for target, gt in g.groupby("target_sparsity", sort=True):
            n = len(t[(t["experiment"] == exp) & (t["method"] == method) & (t["target_sparsity"] == target)])
            who = (", ".join(f"seed {int(s)}: `nodes_kept` {k}" for s, k in zip(gt["seed"], gt["nodes_kept"])) if len(gt) <= 2
                   else "`nodes_kept` " + ", ".join(sorted(set(gt["nodes_kept"].astype(str)))))
            cells.append(f"{target:g} ({len(gt)} of {n} runs; {who})")
        feats = g["features_kept"].astype(float) if "features_kept" in g else pd.Series(dtype=float)
        counted = int((feats > 0).sum())
        note = (f"; {counted} of these {len(g)} rows still count input features kept (up to {int(feats.max())}), "
                "so their feature-selection numbers mean nothing" if counted else "")
        out.append(f"- `{exp}`, `{method}` at {'; '.join(cells)}{note}.")
    return "\n".join(out)


def extreme(runs: pd.DataFrame, prov: dict) -> str:
    out = []
    for exp, g in runs.groupby("experiment", sort=True):
        what, y, digits = _perf(g)
        nat = g[(g["selection"] == "natural") & (g["method"] != "dense")]
        sels = []
        for method in method_order(nat["method"].unique()):
            m = nat[nat["method"] == method]
            kept = 100 * (1 - m["sparsity"].astype(float).mean())
            ratio = 1 / max(kept / 100, 1e-12)
            sels.append(f"`{method}` keeps {kept:.2f}% of the weights ({ratio:.{1 if ratio < 10 else 0}f}×) at "
                        f"{what} {mean_sd(y[m.index], digits=digits)}")
        out.append(f"- `{exp}` [{tag(prov, exp)}]: natural selections: " + ("; ".join(sels) or "none") + ".")
    return "\n".join(out)


def features(runs: pd.DataFrame, prov: dict, data_dir: Path) -> str:
    arts = load_artefacts(data_dir)
    feats, meta = arts.get("features"), arts.get("meta") or {}
    out = []
    for exp, g in runs[runs["fnr"].notna()].groupby("experiment", sort=True):
        nat = g[g["selection"] == "natural"]
        lines = []
        for method in method_order(nat["method"].unique()):
            m = nat[nat["method"] == method]
            fnr = metric(m, "fnr").astype(float)
            found_all = int((fnr == 0).sum())
            line = (f"`{method}`: FNR {mean_sd(fnr, digits=3)}, FPR {mean_sd(metric(m, 'fpr'), digits=3)}, every true "
                    f"feature found in {found_all} of {len(fnr)} replicates")
            support = (meta.get(exp) or {}).get("true_support")
            if feats is not None and support is not None:
                sel = feats[(feats["experiment"] == exp) & (feats["method"] == method)]["selected"].tolist()
                if sel:
                    line += " (" + ", ".join(f"x{j + 1} in {sum(j in s for s in sel)}" for j in support) + f" of {len(sel)})"
            if "fpr_bai" in m and m["fpr_bai"].notna().any():  # runs made since the records carry it
                line += (f"; by Bai et al.'s rule as written FNR {mean_sd(metric(m, 'fnr_bai'), digits=3)}, "
                         f"FPR {mean_sd(metric(m, 'fpr_bai'), digits=3)}")
            lines.append(line)
        out.append(f"- `{exp}` [{tag(prov, exp)}]: " + "; ".join(lines) + ".")
    return "\n".join(out) or "- no experiment with known true features in the frozen data."


def _hours(seconds: float) -> str:
    """A wall time in hours from one hour up, in minutes from one minute, else in seconds."""
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def wall_time(runs: pd.DataFrame, prov: dict) -> str:
    """Per experiment: runs, time of training (each run's models' shares of their stacks' wall
    time, :func:`_common.run_seconds`) and of fine-tuning (its targets' shares), the span per run,
    the fastest and slowest method; then the experiments on each kind of device together."""
    out, totals = [], {}
    per_run_all = run_seconds(runs)
    for exp, per_run in per_run_all.groupby("experiment", sort=True):
        g = runs[runs["experiment"] == exp]
        train = per_run["seconds"].sum()
        tuned = per_run["finetune_seconds"].dropna()
        tuned_text = (f" and {_hours(tuned.sum())} of fine-tuning in all" if len(tuned) else
                      " in all (fine-tuning not recorded)" if (g["selection"] == "target").any() else " in all (no fine-tuning)")
        means = per_run.groupby("method")["seconds"].mean().sort_values()
        devices = ", ".join(prov.get("experiments", {}).get(exp, {}).get("devices", [])) or "unknown device"
        kind = "GPU" if set(g["device"].astype(str).str.split(":").str[0]) == {"cuda"} else "CPU"
        totals.setdefault(kind, []).append((exp, train + tuned.sum(), len(tuned) > 0 or not (g["selection"] == "target").any()))
        n = len(per_run)
        out.append(f"- `{exp}` ({devices}): {n} run{'s' * (n != 1)}, {_hours(train)} of training{tuned_text}, "
                   f"{_span(per_run['seconds'], 0)} s of training per run; fastest `{means.index[0]}` "
                   f"({means.iloc[0]:.1f} s per run), slowest `{means.index[-1]}` ({means.iloc[-1]:.1f} s).")
    for kind, items in sorted(totals.items()):
        partial = [e for e, _, complete in items if not complete]
        out.append(f"- Together, the {len(items)} experiment{'s' * (len(items) != 1)} trained on a {kind} "
                   f"({', '.join(f'`{e}`' for e, _, _ in items)}): {_hours(sum(t for _, t, _ in items))} of training and "
                   f"fine-tuning" + (f" (fine-tuning not recorded for {', '.join(f'`{e}`' for e in partial)})" if partial else "")
                   + ", the sum of their jobs' wall times as they ran (jobs side by side finish sooner).")
    return "\n".join(out)


def published(runs: pd.DataFrame, prov: dict) -> str:
    out = []
    for dataset, model, method, selection, err, kept_frac, kept, source in PUBLISHED:
        for exp, same in runs[(runs["dataset"] == dataset) & (runs["model"] == model)].groupby("experiment", sort=True):
            g = same[(same["method"] == method) & (same["selection"] == selection)]
            if g.empty:
                continue
            label = "natural"
            if selection == "target":
                nearest = min(g["target_sparsity"].dropna().unique(), key=lambda t: abs((1 - t) - kept_frac))
                g, label = g[g["target_sparsity"] == nearest], f"target {nearest:g}"
            path = on_a_path(g)
            path = "" if path == "–" else f" ({path} on a path from input to output)"
            out.append(f"`{exp}` `{method}` {mean_sd(error(g))}% at {100 * (1 - g['sparsity'].mean()):.2f}% of the "
                       f"weights{path} ({label}; {source}: {err:g}% at {kept})")
    exps = sorted({e for d, m, *_ in PUBLISHED for e in runs.loc[(runs["dataset"] == d) & (runs["model"] == m), "experiment"]})
    where = ", ".join(f"`{e}` [{tag(prov, e)}]" for e in exps)
    return (f"{where}: " + "; ".join(out) + ".") if out else "No run on a data set and net with published numbers."


def provenance_list(prov: dict) -> str:
    out = []
    for exp, e in prov.get("experiments", {}).items():
        commits = ", ".join(c[:10] for c in e.get("run_commits", []))
        of = f" of {e['runs_configured']}" if e.get("runs_configured") is not None else ""
        out.append(f"- `{exp}`: **{e['label']}**" + (f" ({'; '.join(e['reduced'])})" if e.get("reduced") else "")
                   + f"; {e['runs_present']}{of} runs of `{e['config']}` (sha256 {str(e.get('config_sha256'))[:12]}), "
                   f"{e['rows']} rows; commit {commits}; {', '.join(e.get('devices', []))}; torch "
                   f"{', '.join(e.get('torch', []))}; frozen {e.get('frozen_at', '')}.")
    gaps = gaps_text(prov).replace(" | paper-grid experiments not in this table: ", "")
    return "\n".join(out) + (f"\n\nNot in the frozen data: {gaps}." if gaps else "")


def artefacts_status(prov: dict, data_dir: Path) -> str:
    arts = load_artefacts(data_dir)
    if arts["meta"] is None:
        return ("none of `artefacts.json`, `pips.npz`, `features.csv` is in the frozen data yet, and `provenance.json` "
                "holds no artefact hashes: the experiments were frozen before the freeze kept artefacts. The figures that "
                "need them say so in their panels")
    have = sorted(arts["meta"])
    lacking = sorted(set(prov.get("experiments", {})) - set(have))
    text = f"kept for {', '.join(f'`{e}`' for e in have)} (their SHA-256 in `provenance.json` under `artefacts`)"
    return text + (f"; not for {', '.join(f'`{e}`' for e in lacking)} (frozen before the freeze kept them: the panels "
                   "that need them say so)" if lacking else "")


def claims(runs: pd.DataFrame, prov: dict, data_dir: Path) -> dict[str, str]:
    """Every generated piece of paper/README.md, by the name the template uses."""
    return {"provenance": provenance_list(prov), "artefacts": artefacts_status(prov, data_dir),
            "wall_time": wall_time(runs, prov), "generalisation": generalisation(runs, prov),
            "no_path": no_path_claims(runs), "extreme": extreme(runs, prov), "features": features(runs, prov, data_dir),
            "published": published(runs, prov), "nets": ", ".join(sorted({net_name(d, m) for d, m in
                                                                          zip(runs["dataset"], runs["model"])}))}


if __name__ == "__main__":
    folder = paper_dir()
    template = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent / "README.template.md"
    runs, prov = load_frozen(folder / "data")
    write_text(folder / "README.md", render(template.read_text(), claims(runs, prov, folder / "data")))
