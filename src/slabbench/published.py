"""Our numbers beside the published ones (docs/published.md): the table that
``benchmarks/published.py`` prints and ``paper/published_comparison.py`` writes, with the
differences of protocol read from the compared runs' own options.

    published_comparison(runs, prov)   markdown: ours beside the papers', protocol notes below
    protocol_notes(runs)               how our protocol differs, derived from the runs' options
"""

from __future__ import annotations

import json

import pandas as pd
from tabulate import tabulate

from slabbench.aggregate import check_runs, metric_values
from slabbench.plotting import method_order
from slabbench.stats import describe

#: published numbers of docs/published.md: (dataset, model, method, selection, error %, kept, source).
#: ``selection`` says which of our records is compared: the method's natural selection, or the
#: matched target nearest to the published fraction of weights kept.
PUBLISHED = [
    ("mnist", "mlp", "dense", "natural", 1.64, 1.0, "100%", "Han et al. 2015"),
    ("mnist", "mlp", "magnitude", "target", 1.59, 0.08, "8% (12×)", "Han et al. 2015"),
    ("mnist", "mlp", "sparse_vd", "natural", 1.92, 0.015, "1.5% (68×)", "Molchanov et al. 2017"),
    ("mnist", "mlp", "l0", "natural", 1.6, None, "266-88-33 neurons",
     "Louizos et al. 2018 as quoted by Evci et al. 2020 (which λ: unchecked)"),
    ("mnist", "lenet5", "dense", "natural", 0.80, 1.0, "100%", "Han et al. 2015"),
    ("mnist", "lenet5", "magnitude", "target", 0.77, 0.08, "8% (12×)", "Han et al. 2015"),
    ("mnist", "lenet5", "sparse_vd", "natural", 0.75, 0.0036, "0.36% (280×)", "Molchanov et al. 2017"),
    ("mnist", "lenet5", "l0", "natural", 0.9, None, "20-25-45-462 neurons", "Louizos et al. 2018 (λ = 0.1/N)"),
]
#: how our protocol differs from the papers' wherever the compared runs' options do not say otherwise
PROTOCOL_NOTES = [
    "We report the final epoch and select nothing on the test set; the L0 script reports the best test "
    "error over its epochs (its validation loader is the test set), sparse VD's scripts the final network, as we do.",
    "Adam at a constant learning rate for every method (the papers: Adam with decay, or SGD for Han et al.).",
    "5,000 training images are held out for validation, so we train on 55,000 images, not 60,000.",
    "Sparsity counts weights only (biases apart); the papers differ (some count all parameters).",
    "Magnitude pruning is compared at our target nearest to Han et al.'s 8% of weights kept.",
]
#: the note on learning rates when some compared run used an official schedule
SCHEDULE_NOTE = ("Adam at a constant learning rate, except where the options below set the official schedules "
                 "(`sparse_vd`'s `lr_schedule`, `l0`'s `ema`, `magnitude`'s retraining at `retrain_lr_factor`); "
                 "Han et al. trained with SGD.")
#: the note on L0's gates, by the compared runs' ``gates`` option (the method's default: input)
L0_GATES_NOTES = {
    "weight": "L0 with `gates: weight` (per-weight gates; the paper: per input neuron) reports weights kept, not neurons.",
    "input": "L0 with `gates: input` (per input neuron / output channel, as the paper); we report the weights those "
             "gates keep, the paper the neurons.",
}
L0_DEFAULT_GATES = "input"


def net_name(dataset: str, model: str) -> str:
    """The architecture's usual name (an MLP on 28x28 images is LeNet-300-100 in this suite)."""
    if model == "mlp" and dataset in ("mnist", "fashion_mnist", "mnist5k"):
        return "LeNet-300-100"
    return {"mlp": "MLP", "lenet5": "LeNet-5-Caffe", "vgg": "VGG-like"}.get(model, model)


def joined(g: pd.DataFrame, col: str) -> str:
    """The distinct integer values of ``col`` joined by "/" ("" when there are none)."""
    values = sorted(g[col].dropna().unique()) if col in g else []
    return "/".join(str(int(v)) for v in values)


def mean_sd(x: pd.Series, scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± sd' over the finite values of ``x`` (NaN there: diverged runs, counted)."""
    d = describe((x.astype(float) * scale).tolist())
    if d["n"] == 0:
        return f"diverged ({d['n_nan']} runs)" if d["n_nan"] else "–"
    text = f"{d['mean']:.{digits}f}" if d["n"] == 1 else f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f}"
    return text + (f" ({d['n_nan']} of {d['n'] + d['n_nan']} diverged)" if d["n_nan"] else "")


def metric(g: pd.DataFrame, col: str) -> pd.Series:
    """``col`` over the runs that measured it (NaN where a run diverged)."""
    return metric_values(g, col) if col in g else pd.Series(dtype=float)


def error(g: pd.DataFrame, col: str = "test_accuracy") -> pd.Series:
    """Test error in % from an accuracy column."""
    return 100 * (1 - metric(g, col))


def _options(runs: pd.DataFrame, method: str | None = None) -> list[dict]:
    """The distinct method options of ``runs`` (of ``method``), parsed."""
    if "method_params" not in runs:
        return []
    g = runs if method is None else runs[runs["method"] == method]
    out = []
    for text in g["method_params"].dropna().unique():
        try:
            out.append(json.loads(text))
        except (TypeError, ValueError):
            continue
    return out


def protocol_notes(runs: pd.DataFrame) -> list[str]:
    """:data:`PROTOCOL_NOTES` for the compared ``runs``: the constant-learning-rate note
    replaced where a run used an official schedule or parameter averaging, and the L0 note
    said of the gates its runs used (``gates``, default input), each read from the runs' options."""
    scheduled = any(o.get("lr_schedule", "constant") != "constant" or bool(o.get("ema", 0)) or o.get("schedule") == "iterative"
                    for o in _options(runs))
    notes = [SCHEDULE_NOTE if scheduled and n.startswith("Adam at a constant") else n for n in PROTOCOL_NOTES]
    l0 = runs[runs["method"] == "l0"] if "method" in runs else runs.iloc[:0]
    where: dict[str, set[str]] = {}  # gates -> the experiments whose l0 runs use them
    for exp, g in (l0.groupby("experiment") if "experiment" in l0 else [("", l0)]):
        for o in _options(g):
            where.setdefault(o.get("gates", L0_DEFAULT_GATES), set()).add(str(exp))
    return notes + [_in(L0_GATES_NOTES.get(gates, f"L0 with `gates: {gates}`."), where[gates] if len(where) > 1 else ())
                    for gates in sorted(where)]


def _of(experiments) -> str:
    """" (`a`, `b`)": the experiments a note or option set is of ("" when none is named)."""
    names = sorted(str(e) for e in experiments if e)
    return f" ({', '.join(f'`{e}`' for e in names)})" if names else ""


def _in(note: str, experiments) -> str:
    """``note`` saying which experiments it is of, where the compared runs differ in it."""
    of = _of(experiments)
    return f"{note.rstrip('.')}{of}." if of else note


def _run_notes(runs: pd.DataFrame) -> list[str]:
    """What our compared runs did, read from the table: epochs, fine-tuning, method options."""
    g = compared(runs)
    if g.empty:
        return []
    epochs, finetune = joined(g, "epochs") or "?", joined(g[g["selection"] == "target"], "finetune_epochs") or "?"
    out = [f"Our runs: {epochs} training epochs and {finetune} "
           "fine-tuning epoch(s) of the matched targets (the papers: 200, and 20 for magnitude's retraining)."]
    if "method_params" in g:
        for method in method_order(g["method"].unique()):
            m = g[(g["method"] == method) & g["method_params"].notna()]
            params = sorted(m["method_params"].unique())
            if params and params != ["{}"]:
                named = len(params) > 1 and "experiment" in m  # which experiment ran with which
                said = [f"`{p}`" + (_of(m.loc[m["method_params"] == p, "experiment"].unique()) if named else "")
                        for p in params]
                out.append(f"Our `{method}` options: {', '.join(said)}.")
    return out


def on_a_path(g: pd.DataFrame) -> str:
    """The weights still on a path from an input to an output (``physical_weights``, the
    physical network's nonzero weights) as a percentage of all weights, mean ± sd over the
    rows; "–" for rows made before the record had the field.  ``1 - sparsity`` overstates
    it by the weights into units that no longer reach the outputs."""
    if "physical_weights" not in g or g["physical_weights"].isna().any():
        return "–"
    return f"{mean_sd(100 * g['physical_weights'].astype(float) / g['n_weights'].astype(float), digits=2)}%"


def architecture(g: pd.DataFrame) -> str:
    """What the first row (the lowest seed) keeps, in the papers' form: for an MLP the input
    features, then the units of each hidden layer (Louizos et al.'s "266-88-33" counts the
    inputs of each of LeNet-300-100's three layers); else the units / channels of each hidden
    layer (``nodes_kept``)."""
    row = g.sort_values("seed").iloc[0]
    nodes = str(row["nodes_kept"])
    if row["model"] == "mlp" and "features_kept" in g and pd.notna(row["features_kept"]):
        return f"{int(row['features_kept'])}-{nodes}"
    return nodes


def compared(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``runs`` on a data set and architecture with published numbers."""
    return runs[runs["dataset"].isin({d for d, *_ in PUBLISHED}) & runs["model"].isin({m for _, m, *_ in PUBLISHED})]


def published_comparison(runs: pd.DataFrame, prov: dict | None) -> str:
    """Markdown: our test error and weights kept beside the published numbers of
    docs/published.md, for the same data set and architecture, with the protocol differences listed; with a
    frozen provenance ``prov`` each row says which provenance its runs have (protocol or
    REDUCED) and the source line of the compared experiments follows the table."""
    from slabbench.paper import source_line, tag

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
                ours = ["not run", "–", "–", "–", "–"]
            else:
                ours = [f"{mean_sd(error(g))} ({label}, {g['seed'].nunique()} seeds)",
                        f"{mean_sd(100 * (1 - g['sparsity']), digits=2)}%", on_a_path(g), joined(g, "epochs") or "?",
                        architecture(g)]
            where = f"{dataset} {net_name(dataset, model)}" + (f" ({exp})" if len(experiments) > 1 else "")
            rows.append([where, method, *ours, f"{err:g}", kept, source] + ([tag(prov, exp) if exp else "–"] if prov else []))
    published = {(d, m) for d, m, *_ in PUBLISHED}
    for (exp, dataset, model), g in runs[(runs["method"] == "spike_slab") & (runs["selection"] == "natural")].groupby(
            ["experiment", "dataset", "model"]):
        if (dataset, model) not in published:
            continue
        several = runs.loc[(runs["dataset"] == dataset) & (runs["model"] == model), "experiment"].nunique() > 1
        rows.append([f"{dataset} {net_name(dataset, model)}" + (f" ({exp})" if several else ""), "spike_slab",
                     f"{mean_sd(error(g))} (natural, {g['seed'].nunique()} seeds)",
                     f"{mean_sd(100 * (1 - g['sparsity']))}%", on_a_path(g), joined(g, "epochs"), architecture(g), "–", "–",
                     "no published number to compare with (the paper's tables were not available to us)"]
                    + ([tag(prov, exp)] if prov else []))
    headers = ["data, net", "method", "ours: test error %", "ours: weights kept", "ours: on a path", "ours: epochs",
               "ours: kept (seed 0)",
               "published error %", "published kept", "source"] + (["ours: provenance"] if prov else [])
    notes = "\n".join(f"- {n}" for n in protocol_notes(compared(runs)) + _run_notes(runs))
    source = f"\n\nSource: {source_line(prov, compared(runs)['experiment'].unique())}." if prov else ""
    return ("# Our numbers beside the published ones\n\n" + tabulate(rows, headers=headers, tablefmt="github")
            + f"{source}\n\nHow our protocol differs from the papers':\n\n{notes}\n")
