"""paper/figures/input_pips.{png,pdf}: input-pixel PIP maps (mean over seeds) beside the mean
training image, per image experiment with a pixel-level first layer (LeNet-300-100); for a
convolutional first layer (LeNet-5, whose conv1 weights are shared across positions) the PIPs of
conv1's kernels as 5×5 maps instead.  From paper/data/ only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from _common import (PIP_METHOD, REFREEZE, experiments, fill, finish, load, missing_artefacts_text, panel_tag, pip_stack, plt,
                     save_figure, say)
from slabbench.plotting import method_colour

TITLE = "input-pixel inclusion probabilities (feature importance)"


def trains_pips(runs: pd.DataFrame, exp: str) -> bool:
    """Whether experiment ``exp`` ran the method that writes input PIPs (or a variant of it); an
    experiment without it (the published comparison's baselines) has no panel here."""
    g = runs[runs["experiment"] == exp]
    return bool((g["method"] == PIP_METHOD).any() or ("variant_of" in g and (g["variant_of"] == PIP_METHOD).any()))


def input_pip_rows(runs: pd.DataFrame, arts: dict) -> list[dict]:
    """One row per image experiment that ran the PIP method (and method with PIPs): ``experiment``, ``method``,
    ``image`` (h, w mean training input or None), ``pips`` ((seeds, h, w) or None),
    ``kernels`` ((seeds, out, in, kh, kw) conv1 kernel PIPs or None), ``message`` (what is
    missing, or None)."""
    meta, arrays = arts.get("meta"), arts.get("arrays")
    if meta is None or arrays is None:
        return [dict(experiment=e, method=PIP_METHOD, image=None, pips=None, kernels=None,
                     message=missing_artefacts_text(arts, "Input PIPs and the mean image are"))
                for e in experiments(runs, "classification") if trains_pips(runs, e)]
    rows = [dict(experiment=e, method=PIP_METHOD, image=None, pips=None, kernels=None,
                 message=f"the artefacts of {e} are not in the frozen data (frozen before the freeze kept them); to draw "
                         f"this panel, {REFREEZE}")
            for e in experiments(runs, "classification") if e not in meta and trains_pips(runs, e)]
    for exp in sorted(meta):
        facts = meta[exp]
        shape = facts.get("feature_shape")
        if not shape or len(shape) != 2:
            continue  # not image data
        size = int(np.prod(shape))
        image = arrays.get(f"mean_image/{exp}")
        image = None if image is None else np.asarray(image, dtype=float).reshape(shape)
        stacks, kernels = pip_stack(arts, exp), pip_stack(arts, exp, "kernel_pip")
        if not stacks and not kernels:
            if not trains_pips(runs, exp):
                continue  # no method that writes PIPs ran here: nothing is missing
            has = sorted(runs.loc[runs["experiment"] == exp, "method"].unique())
            rows.append(dict(experiment=exp, method=PIP_METHOD, image=image, pips=None, kernels=None,
                             message=f"no run with input PIPs in the frozen data (methods present: {', '.join(has)}; "
                                     f"{PIP_METHOD} writes them)"))
            continue
        for method in list(dict.fromkeys([*stacks, *kernels])):
            pips, kern = stacks.get(method), kernels.get(method)
            if kern is not None:
                rows.append(dict(experiment=exp, method=method, image=image, pips=None, kernels=kern, message=None))
            elif pips.shape[1] != size:
                rows.append(dict(experiment=exp, method=method, image=image, pips=None, kernels=None,
                                 message=f"{method}'s input PIPs here are per input channel ({pips.shape[1]} values), "
                                         f"not per pixel ({size}), and no conv1 kernel PIPs were frozen"))
            else:
                rows.append(dict(experiment=exp, method=method, image=image, pips=pips.reshape(len(pips), *shape),
                                 kernels=None, message=None))
    return sorted(rows, key=lambda r: r["experiment"])


def kernel_mosaic(kernels: np.ndarray, columns: int = 5) -> np.ndarray:
    """(out, in, kh, kw) kernel PIPs -> one image: each output channel's kernel (mean over its
    input channels) as a kh × kw tile, ``columns`` tiles a row, NaN gaps between tiles."""
    k = kernels.mean(1)
    n, kh, kw = k.shape
    rows = -(-n // columns)
    out = np.full((rows * (kh + 1) - 1, columns * (kw + 1) - 1), np.nan)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * (kh + 1):r * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = k[i]
    return out


def draw(runs: pd.DataFrame, prov: dict, arts: dict):
    """Per image experiment: the mean training image (with the contour where the mean PIP
    crosses 0.5) beside the mean input PIP over seeds (the probability that a pixel feeds at
    least one included first-layer weight), or conv1's kernel PIPs as 5×5 maps."""
    rows = input_pip_rows(runs, arts)
    n = max(1, len(rows))
    shown = sorted({r["experiment"] for r in rows})
    if all(r["pips"] is None and r["kernels"] is None and r["image"] is None for r in rows):
        fig, axes = plt.subplots(n, 1, figsize=(8.6, 1.3 * n + 1.6), squeeze=False)
        for ax, row in zip(axes[:, 0], rows):
            say(ax, f"{row['experiment']} ({row['method']}) {panel_tag(prov, row['experiment'])}: {row['message']}", 110)
        if not rows:
            say(axes[0, 0], "no image experiment in the frozen data")
        finish(fig, prov, TITLE, experiments=shown)
        return fig
    fig, axes = plt.subplots(n, 2, figsize=(8.6, 3.9 * n + 1.2), squeeze=False)
    for (ax_img, ax_pip), row in zip(axes, rows):
        exp, method = row["experiment"], row["method"]
        where = panel_tag(prov, exp)
        if row["image"] is not None:
            ax_img.imshow(row["image"], cmap="gray")
            ax_img.set_title(f"{exp}: mean training image\n{fill(where, 60)}", fontsize=8)
            ax_img.set_xticks([])
            ax_img.set_yticks([])
        else:
            say(ax_img, f"{exp}: mean image not in the frozen data (data files missing at freeze time)", 45)
        if row["kernels"] is not None:
            k = row["kernels"]
            im = ax_pip.imshow(kernel_mosaic(k.mean(0)), cmap="viridis", vmin=0, vmax=1)
            fig.colorbar(im, ax=ax_pip, fraction=0.046, pad=0.04, label="kernel weight PIP")
            kept = int((k.mean(0) > 0.5).sum())
            ax_pip.set_title(f"{method}: conv1 kernel PIPs ({k.shape[1]} maps of {k.shape[3]}×{k.shape[4]}), mean over "
                             f"{len(k)} seeds\n{kept} of {k[0].size} kernel weights > 0.5 {where}", fontsize=8)
            ax_pip.set_xticks([])
            ax_pip.set_yticks([])
            continue
        if row["pips"] is None:
            say(ax_pip, f"{exp} ({method}) {where}: {row['message']}", 45)
            continue
        mean = row["pips"].mean(0)
        im = ax_pip.imshow(mean, cmap="viridis", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax_pip, fraction=0.046, pad=0.04, label="input PIP")
        if row["image"] is not None and mean.min() < 0.5 < mean.max():
            ax_img.contour(mean, levels=[0.5], colors=[method_colour(PIP_METHOD)], linewidths=1.0)
            ax_img.set_title(f"{exp}: mean training image (contour: mean PIP = 0.5)\n{fill(where, 60)}", fontsize=8)
        kept = int((mean > 0.5).sum())
        title = f"{method}: mean input PIP over {len(row['pips'])} seeds\n{kept} of {mean.size} pixels > 0.5"
        if len(row["pips"]) > 1:  # how far the seeds agree: a mean near 1/3 or 2/3 is seeds disagreeing
            per_seed = (row["pips"] > 0.5).reshape(len(row["pips"]), -1).sum(1)
            every = int((row["pips"] > 0.5).all(0).sum())
            title += f"; > 0.5 in every seed: {every}, per seed {per_seed.min()}–{per_seed.max()}"
        ax_pip.set_title(title, fontsize=8)
        ax_pip.set_xticks([])
        ax_pip.set_yticks([])
    finish(fig, prov, TITLE,
           ["Input PIP: the posterior probability that a pixel feeds at least one included first-layer weight "
            "(1 - prod(1 - phi) over its weights), of each run's natural fit; mean over seeds. Where each seed's "
            "PIPs are near 0 or 1, the mean counts the seeds that keep a pixel (0, 1/3, 2/3, 1 over three seeds): "
            "it shows how far the seeds agree, not posterior uncertainty. Conv1 kernel PIPs "
            "(LeNet-5): one 5x5 map per output channel, the weight PIPs of its kernel (the same at every position)."],
           experiments=shown)
    return fig


if __name__ == "__main__":
    runs, prov, arts = load()
    save_figure(draw(runs, prov, arts), "input_pips")
