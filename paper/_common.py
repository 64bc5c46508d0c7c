"""What the paper scripts share: loading the frozen data, the provenance said in every title,
panel and footer, and the small drawing helpers.  Each ``paper/<output>.py`` draws its own
output from ``paper/data/`` only (run as ``python paper/<output>.py [PAPER_DIR]``).
"""

from __future__ import annotations

import math
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from slabbench.io import write_text
from slabbench.paper import REFREEZE, gaps_text, is_protocol, load_artefacts, load_frozen, source_line, tag  # noqa: F401
from slabbench.plotting import RANGE_NOTE, method_order, no_path, plt, save, sparsity_ticks  # noqa: F401 (the scripts take them from here)
from slabbench.published import net_name

#: the method whose input PIPs the figures show first (others with PIPs follow)
PIP_METHOD = "spike_slab"
#: natural selections below this sparsity are drawn at it (marked "<"), so the logit axis
#: stays on the targets (0.5 ... 0.995) instead of stretching to e.g. 0.006
X_FLOOR = 0.3


# --------------------------------------------------------------------------- loading and writing

def paper_dir() -> Path:
    """The paper/ folder: the script's first argument, else the folder the scripts live in."""
    return Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent


def load(folder: Path | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """(runs, provenance, artefacts) frozen in ``folder``/data."""
    folder = folder or paper_dir()
    runs, prov = load_frozen(folder / "data")
    return runs, prov, load_artefacts(folder / "data")


def save_figure(fig, name: str, folder: Path | None = None) -> None:
    folder = folder or paper_dir()
    save(fig, folder / "figures" / f"{name}.png", folder / "figures" / f"{name}.pdf")


def save_table(name: str, markdown: str, latex: str, folder: Path | None = None) -> None:
    folder = folder or paper_dir()
    write_text(folder / "tables" / f"{name}.md", markdown)
    write_text(folder / "tables" / f"{name}.tex", latex)


# --------------------------------------------------------------------------- provenance in titles

def experiment_title(g: pd.DataFrame, prov: dict | None = None) -> str:
    """"mnist, LeNet-300-100, 200 epochs, 3 seeds", with the experiment's provenance tag below when given."""
    epochs = "/".join(str(int(v)) for v in sorted(g["epochs"].dropna().unique())) if "epochs" in g else ""
    ep = f", {epochs} epochs" if epochs else ""
    n = g["seed"].nunique() if "seed" in g else 0
    ep += f", {n} seed{'s' * (n != 1)}" if n else ""
    title = f"{g['experiment'].iloc[0]}: {g['dataset'].iloc[0]}, {net_name(g['dataset'].iloc[0], g['model'].iloc[0])}{ep}"
    return title + (f"\n[{tag(prov, g['experiment'].iloc[0])}]" if prov is not None else "")


def panel_tag(prov: dict, exp: str) -> str:
    return f"[{tag(prov, exp)}]"


def title_prefix(prov: dict, experiments) -> str:
    """"" when every experiment shown is at the protocol, else "REDUCED: " or "partly REDUCED: "."""
    exps = list(experiments)
    if is_protocol(prov, exps):
        return ""
    return "partly REDUCED: " if any(is_protocol(prov, [e]) for e in exps) else "REDUCED: "


# --------------------------------------------------------------------------- drawing helpers

def fill(text: str, width: int) -> str:
    """Wrap at spaces only (names such as cifar10-vgg stay whole)."""
    return textwrap.fill(text, width, break_on_hyphens=False, break_long_words=False)


def finish(fig, prov: dict, title: str, notes=(), experiments=None, right: float = 1.0) -> None:
    """Suptitle (with the REDUCED label of the experiments shown), notes and the source line
    (each experiment's provenance, the paper-grid experiments missing) at the bottom."""
    shown = list(experiments) if experiments is not None else list(prov.get("experiments", {}))
    fig.suptitle(title_prefix(prov, shown) + title, fontsize=12)
    width = int(fig.get_size_inches()[0] * 18)  # characters of 6.5 pt text across the figure
    source = source_line(prov, shown) + gaps_text(prov)
    lines = [fill(n, width) for n in notes] + [fill("Source: " + source, width)]
    text = "\n".join(lines)
    height = fig.get_size_inches()[1]
    bottom = min(0.5, (0.16 * text.count("\n") + 0.3) / height)
    fig.text(0.01, 0.005, text, ha="left", va="bottom", fontsize=6.5)
    fig.tight_layout(rect=(0, bottom, right, 0.965))


def say(ax, text: str, width: int = 60) -> None:
    """Replace a panel's content by a message (what is missing and how to get it)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.text(0.5, 0.5, fill(text, width), ha="center", va="center", fontsize=8, transform=ax.transAxes,
            color="0.25", wrap=True)


def legend_outside(ax, order: bool = True) -> None:
    """The panel's legend right of it, outside the data (entries of one method together)."""
    handles, labels = ax.get_legend_handles_labels()
    pairs = list(zip(handles, labels))
    if order:
        rank = {m: i for i, m in enumerate(method_order([lb.split(" ")[0] for lb in labels]))}
        pairs.sort(key=lambda hl: (rank[hl[1].split(" ")[0]], " natural" in hl[1], " BMA" in hl[1]))
    if pairs:
        ax.legend(*zip(*pairs), fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def figure_legend(fig, right: float) -> None:
    """One legend for the whole figure, right of the panels (``right``: where they end), the
    entries of every panel once, in the fixed method order."""
    seen: dict[str, object] = {}
    for ax in fig.axes:
        for h, lb in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(re.sub(r" \([0-9.]+% sparse\)", "", lb), h)  # one entry per method, whatever its sparsity
    rank = {m: i for i, m in enumerate(method_order([lb.split(" ")[0] for lb in seen]))}
    labels = sorted(seen, key=lambda lb: (rank.get(lb.split(" ")[0], len(rank)), " natural" in lb, " BMA" in lb))
    if labels:
        fig.legend([seen[lb] for lb in labels], labels, fontsize=7, frameon=False, loc="upper left",
                   bbox_to_anchor=(right + 0.005, 0.95))


def log_scale(ax, which: str, values) -> str:
    """Log scale (ticks at 1, 2, 5 × 10^k, plain numbers) where ``values`` span more than a factor
    of 3, else linear; returns the label suffix (", log scale" or "")."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=float)
    if len(v) == 0 or v.max() / v.min() <= 3:
        return ""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())
    return ", log scale"


def ylim_from(ax, means, low: float = -math.inf, high: float = math.inf) -> None:
    """The y-axis over ``means`` (with a margin, inside [low, high]): one wide band cannot
    squash the rest (bands may run past the panel's edge)."""
    v = [m for m in means if m is not None and np.isfinite(m)]
    if not v:
        return
    lo, hi = min(v), max(v)
    if ax.get_yscale() == "log" and lo > 0:
        ax.set_ylim(lo / 1.25, hi * 1.25)
        return
    pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 0.01
    ax.set_ylim(max(lo - pad, low), min(hi + pad, high))


def grid(n: int, columns: int, size=(5.0, 3.8), extra_h: float = 0.9):
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows + extra_h), squeeze=False)
    return fig, axes


def logit_x(ax, xs, ticks) -> None:
    """Logit-scaled sparsity axis with ticks at the targets (as the central figure)."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if xs and min(xs) > 0 and max(xs) < 1:
        ax.set_xscale("logit")
        ax.xaxis.set_major_locator(FixedLocator(sparsity_ticks(sorted(ticks) or sorted(set(np.round(xs, 3))), xs)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sparsity (fraction of weights pruned; logit scale)")


def experiments(runs: pd.DataFrame, task: str | None = None) -> list[str]:
    g = runs if task is None else runs[runs["task"] == task]
    return sorted(g["experiment"].unique())


def no_path_summary(runs: pd.DataFrame) -> list[str]:
    """"l0 at 0.8 (3 of 3 runs), ..." per experiment: the targets whose nets have no path from
    input to output (named in captions)."""
    out = []
    t = runs[runs["selection"] == "target"]
    empty = no_path(t)
    for exp, g in t[empty].groupby("experiment", sort=True):
        parts = []
        for method in method_order(g["method"].unique()):
            m = g[g["method"] == method]
            cells = []
            for target, gt in m.groupby("target_sparsity", sort=True):
                n = len(t[(t["experiment"] == exp) & (t["method"] == method) & (t["target_sparsity"] == target)])
                cells.append(f"{target:g} ({len(gt)}/{n})")
            parts.append(f"{method} at {', '.join(cells)}")
        out.append(f"{exp}: {'; '.join(parts)}")
    return out


def off_path_summary(runs: pd.DataFrame, share: float, up_to: float) -> list[str]:
    """"diabetes: spike_slab_target at 0.5 (2% on a path), ..." per experiment: the targets up to
    ``up_to`` whose nets keep fewer than ``share`` of their nonzero weights on a path from an
    input to the output (``physical_weights / nonzero_weights``, mean over seeds; nets with no
    path at all are the crosses, named by :func:`no_path_summary`)."""
    if "physical_weights" not in runs:
        return []
    t = runs[(runs["selection"] == "target") & (runs["target_sparsity"] <= up_to + 1e-9) & (runs["nonzero_weights"] > 0)]
    t = t.assign(on=t["physical_weights"] / t["nonzero_weights"]).dropna(subset=["on"])
    on = t.groupby(["experiment", "method", "target_sparsity"])["on"].mean()
    out = []
    for exp, g in on[on < share].groupby(level="experiment", sort=True):
        parts = []
        for method in method_order(g.index.get_level_values("method").unique()):
            cells = [f"{target:g} ({100 * v:.0f}% on a path)" for (_, _, target), v in g.xs(method, level="method", drop_level=False).items()]
            parts.append(f"{method} at {', '.join(cells)}")
        out.append(f"{exp}: {'; '.join(parts)}")
    return out


def trains_per_target(g: pd.DataFrame) -> bool | None:
    """Whether the records ``g`` of one run come from one training per sparsity target (the
    method's ``trains_per_target`` on the run's own options: ``spike_slab`` with
    ``prior_from_target``, ``magnitude`` with a gradual schedule); None where the table cannot
    say (no ``method_params`` column, or a method this installation does not know)."""
    import json

    from slabbench.api import make_params
    from slabbench.registry import method_class

    if "method_params" not in g or g["method_params"].isna().all():
        return None
    row = g.iloc[0]
    plugin = row["variant_of"] if "variant_of" in g and isinstance(row["variant_of"], str) else row["method"]
    try:
        cls = method_class(plugin)
        return bool(cls.trains_per_target(make_params(cls.Params, json.loads(row["method_params"]), plugin)))
    except Exception:  # a plugin that is not installed here, options it no longer takes
        return None


def run_seconds(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (experiment, method, seed): ``seconds`` of training (each record holds its
    model's share of its stack's wall time: a run's seconds are its models' shares, one model per
    run, or one per target record for a method that trains per target), ``finetune_seconds``
    (its target records' shares; NaN when none was recorded), ``models``, ``device``."""
    rows = []
    for (exp, method, seed), g in runs.groupby(["experiment", "method", "seed"], sort=True):
        per_target = trains_per_target(g)
        if per_target:
            secs = g.loc[g["selection"] == "target", "train_seconds"].dropna().astype(float).to_numpy()
        else:  # one model; where the table cannot say, distinct shares are distinct trainings
            secs = g["train_seconds"].dropna().astype(float).unique()
            secs = secs[:1] if per_target is False else secs
        tune = g.loc[g["selection"] == "target", "finetune_seconds"].dropna() if "finetune_seconds" in g else pd.Series([])
        rows.append(dict(experiment=exp, method=method, seed=int(seed), seconds=float(secs.sum()) if len(secs) else math.nan,
                         finetune_seconds=float(tune.sum()) if len(tune) else math.nan, models=len(secs),
                         device=", ".join(sorted(g["device_name"].dropna().astype(str).unique())) if "device_name" in g else ""))
    return pd.DataFrame(rows, columns=["experiment", "method", "seed", "seconds", "finetune_seconds", "models", "device"])


def pip_stack(arts: dict, exp: str, kind: str = "input_pip") -> dict[str, np.ndarray]:
    """method -> (seeds, ...) PIPs of ``exp`` in the frozen arrays (``kind``: input_pip or
    kernel_pip), ``PIP_METHOD`` first."""
    out: dict[str, list[np.ndarray]] = {}
    prefix = f"{kind}/{exp}/"
    keys = [k for k in (arts.get("arrays") or {}) if k.startswith(prefix)]
    for key in sorted(keys, key=lambda k: (k.split("/")[2], int(k.rsplit("=", 1)[1]))):
        method = key[len(prefix):].split("/")[0]
        out.setdefault(method, []).append(np.asarray(arts["arrays"][key], dtype=float))
    ordered = sorted(out, key=lambda m: (m != PIP_METHOD, m))
    return {m: np.stack(out[m]) for m in ordered}


def missing_artefacts_text(arts: dict, what: str) -> str:
    files = ", ".join(f"paper/data/{f}" for f in arts.get("missing", []))
    return (f"{what} not in the frozen data ({files} missing: the table was frozen before the freeze kept them); "
            f"to draw this panel, {REFREEZE}")
