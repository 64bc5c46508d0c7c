"""``magnitude``: magnitude pruning, docs/science.md §2.

(a) ``schedule: oneshot`` (Han et al. 2015): train dense with L2 (``weight_decay``), score
    every weight by |w|, keep the top (1 - s) (globally or per layer, ``scope``), then the
    core fine-tunes the survivors (``finetune_epochs`` at ``lr * finetune_lr_factor``,
    0.1 by default, Han et al.'s retraining at 1/10 of the learning rate).
(b) ``schedule: gradual`` (Zhu & Gupta 2017): one training run per target s_f; every
    ``prune_every`` steps between t0 = ``begin_frac`` and t0 + n*dt = ``end_frac`` of
    training, prune the smallest weights to

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3,

    masks held fixed in between and after.  The final mask then equals the top-k by |w|.
(c) ``schedule: iterative`` (Han et al. 2015's iterative prune-and-retrain): one training
    run per target s; dense training until ``begin_frac`` of the epochs, then ``rounds``
    prunings at epoch boundaries evenly spaced from ``begin_frac`` to ``end_frac`` of the
    epochs (round k = 0 .. R-1 after epoch round(E * (b + k (e - b) / (R - 1))), the one
    round of R = 1 at b), each followed by retraining of the survivors with the masks held;
    from the first pruning on, the learning rate is ``lr * retrain_lr_factor`` (Han et al.
    retrain at a lower rate; 0.1 as the core's fine-tuning).  Round k keeps the fraction
    (1 - s)^((k + 1) / R) of the weights (each round prunes the same fraction of the
    survivors, so the last one reaches s; Han et al. do not give their per-round rates for
    LeNet: ours).  Pruned weights stay pruned (they score 0).  After training, the core's
    fine-tuning (``finetune_epochs``) comes on top, as for every method.

``layer_sparsity`` (gradual and iterative): a per-layer profile, a mapping from the
prunable layer's name (``fc1``, ``conv2``, ... as the model names them) to a sparsity in
[0, 1), e.g. Han et al.'s LeNet-300-100 rates ``{fc1: 0.92, fc2: 0.91, fc3: 0.74}``.  At
every pruning to an overall sparsity s_t each layer keeps its own top weights by |w|, the
layers' kept fractions (1 - s_l) scaled by one common factor c (a layer reaching 100% is
held there and the rest rescaled) so that exactly the weights of ``s_t`` survive in total;
at the overall sparsity the profile itself implies (1 - sum_l (1 - s_l) n_l / sum_l n_l,
0.9182 for Han's LeNet-300-100 and 0.9157 for LeNet-5) the layers get the given rates.
With it the score of a weight is the pair (kept by the final mask, |w|), so the core's
global top-k at the target keeps exactly the weights of the method's per-layer mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from slabbench.api import Method as _Base
from slabbench.api import adam
from slabbench.api import PluginError, check_choice
from slabbench.layers import prunable_layers
from slabbench.prune import SCOPES, keep_top, magnitude_scores, n_keep, topk_masks

SCHEDULES = ("oneshot", "gradual", "iterative")


@dataclass(frozen=True)
class Params:
    weight_decay: float = 1e-4  #: L2 coefficient during training (Han et al. train with L2)
    scope: str = "global"  #: global | layerwise threshold
    schedule: str = "oneshot"  #: oneshot | gradual | iterative
    initial_sparsity: float = 0.0  #: s_i of the gradual schedule
    begin_frac: float = 0.1  #: gradual: t0 as a fraction of all training steps; iterative: first pruning (fraction of epochs)
    end_frac: float = 0.7  #: gradual: t0 + n*dt as a fraction of all steps; iterative: last pruning (fraction of epochs)
    prune_every: int = 0  #: dt in optimiser steps; 0 = once per epoch
    rounds: int = 3  #: iterative: prune-and-retrain rounds (ours; Han et al. give none for LeNet)
    retrain_lr_factor: float = 0.1  #: iterative: lr multiplier from the first pruning on
    layer_sparsity: Any = None  #: gradual / iterative: {layer name: sparsity} profile, scaled to each target; None = scope


def cubic_sparsity(t: int, t0: int, span: int, s_i: float, s_f: float) -> float:
    """Zhu & Gupta's schedule: s_t = s_f + (s_i - s_f)(1 - (t - t0)/span)^3, clipped to [t0, t0 + span]."""
    if span <= 0:
        return s_f if t >= t0 else s_i
    frac = min(max((t - t0) / span, 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - frac) ** 3


def iterative_sparsity(k: int, rounds: int, s_f: float) -> float:
    """Sparsity after round ``k`` (0-based) of ``rounds``: 1 - (1 - s_f)^((k + 1) / rounds)."""
    return 1.0 - (1.0 - s_f) ** ((k + 1) / rounds)


def iterative_prune_epochs(epochs: int, rounds: int, begin: float, end: float) -> list[int]:
    """The epoch count after which each round prunes: round(E * (b + k (e - b) / (R - 1))),
    k = 0 .. R-1 (b alone for R = 1), clipped to [1, E] (E = after the last epoch, before the
    core's fine-tuning); rounds may share an epoch in a short run."""
    fracs = [begin] if rounds == 1 else [begin + k * (end - begin) / (rounds - 1) for k in range(rounds)]
    return [min(epochs, max(1, int(math.floor(epochs * f + 0.5)))) for f in fracs]


def layer_keep_counts(sizes: dict[str, int], profile: dict[str, float], keep: int) -> dict[str, int]:
    """Weights kept per layer so that the total is exactly ``keep``: layer l keeps
    min(n_l, c (1 - s_l) n_l) for the one c that sums to ``keep`` (water-filling: layers that
    would exceed n_l are held at n_l), rounded to integers by the largest remainder (ties to the
    earlier layer).  ``sizes``: weights per layer; ``profile``: sparsity s_l in [0, 1) per layer."""
    total = sum(sizes.values())
    if not 0 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} weights")
    share = {k: (1.0 - profile[k]) * n for k, n in sizes.items()}  # kept weights at c = 1
    full: set[str] = set()
    while True:
        rest = keep - sum(sizes[k] for k in full)
        denom = sum(share[k] for k in sizes if k not in full)
        c = rest / denom if denom > 0 else 0.0
        over = {k for k in sizes if k not in full and c * share[k] >= sizes[k]}
        if not over:
            break
        full |= over
    exact = {k: float(sizes[k]) if k in full else c * share[k] for k in sizes}
    counts = {k: min(sizes[k], int(math.floor(v))) for k, v in exact.items()}
    order = sorted(sizes, key=lambda k: -(exact[k] - counts[k]))  # stable: ties to the earlier layer
    missing = keep - sum(counts.values())
    for k in order * 2:
        if missing <= 0:
            break
        if counts[k] < sizes[k]:
            counts[k] += 1
            missing -= 1
    return counts


class Method(_Base):
    Params = Params

    @property
    def after_step_in_step(self) -> bool:
        """The per-step hook prunes on the gradual schedule only (it reads the step); for
        oneshot and iterative pruning it does nothing and is part of the step."""
        return self.params.schedule != "gradual"

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        owner = "method 'magnitude'"
        check_choice(owner, "scope", params.scope, SCOPES)
        check_choice(owner, "schedule", params.schedule, SCHEDULES)
        if not 0.0 <= params.begin_frac <= params.end_frac <= 1.0:
            raise PluginError(f"{owner}: need 0 <= begin_frac <= end_frac <= 1, got {params.begin_frac}, {params.end_frac}")
        if not 0.0 <= params.initial_sparsity < 1.0:
            raise PluginError(f"{owner}: initial_sparsity must be in [0, 1), got {params.initial_sparsity}")
        if params.rounds < 1:
            raise PluginError(f"option 'rounds' of {owner} must be an integer >= 1, got {params.rounds!r}")
        if params.prune_every < 0:
            raise PluginError(f"option 'prune_every' of {owner} must be >= 0 (0 = once per epoch), got {params.prune_every!r}")
        if params.weight_decay < 0:
            raise PluginError(f"option 'weight_decay' of {owner} must be >= 0, got {params.weight_decay!r}")
        if not params.retrain_lr_factor > 0:
            raise PluginError(f"option 'retrain_lr_factor' of {owner} must be > 0, got {params.retrain_lr_factor!r}")
        self._profile = self._check_profile(owner, params)
        self.prune_scope = params.scope
        total = ctx.epochs * ctx.steps_per_epoch
        self._t0 = int(params.begin_frac * total)
        self._t1 = int(params.end_frac * total)
        self._dt = params.prune_every or max(1, ctx.steps_per_epoch)
        self._prune_after = (iterative_prune_epochs(ctx.epochs, params.rounds, params.begin_frac, params.end_frac)
                             if params.schedule == "iterative" else [])

    @staticmethod
    def _check_profile(owner: str, params: Params) -> dict[str, float] | None:
        profile = params.layer_sparsity
        if profile is None:
            return None
        if not isinstance(profile, dict) or not profile:
            raise PluginError(f"option 'layer_sparsity' of {owner} must be a mapping layer name -> sparsity in [0, 1), "
                              f"e.g. {{fc1: 0.92, fc2: 0.91, fc3: 0.74}}, got {profile!r}")
        for name, value in profile.items():
            if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value < 1.0:
                raise PluginError(f"option 'layer_sparsity' of {owner}: layer {name!r} has sparsity {value!r}; "
                                  "each must be a number in [0, 1)")
        if params.schedule == "oneshot":
            raise PluginError(f"option 'layer_sparsity' of {owner} needs a schedule that prunes during training "
                              f"(gradual, iterative), got schedule {params.schedule!r}")
        if params.scope != "global":
            raise PluginError(f"option 'layer_sparsity' of {owner} sets each layer's sparsity itself; "
                              f"leave scope at 'global', got {params.scope!r}")
        return {str(k): float(v) for k, v in profile.items()}

    @classmethod
    def trains_per_target(cls, params: Params) -> bool:
        return params.schedule in ("gradual", "iterative")

    def build(self, model):
        if self._profile is not None:  # every prunable layer named, no other name
            names = [name for name, _ in prunable_layers(model)]
            if set(names) != set(self._profile):
                unknown = sorted(set(self._profile) - set(names))
                missing = [n for n in names if n not in self._profile]
                raise PluginError(f"option 'layer_sparsity' of method 'magnitude' must name every prunable layer once: "
                                  f"unknown {unknown or 'none'}, missing {missing or 'none'}; the layers are "
                                  f"{', '.join(names)}")
        return model

    def optimizer(self, model, lr):
        return adam(model.parameters(), lr, self.params.weight_decay)

    def lr_factor(self, epoch):
        if self.params.schedule == "iterative" and epoch >= self._prune_after[0]:
            return self.params.retrain_lr_factor
        return 1.0

    def _prune(self, model, sparsity: float) -> None:
        """Set every prunable layer's mask to the top weights by |w| (pruned ones score 0) at
        overall ``sparsity``: per the layer profile, or the top-k in ``scope``."""
        scores = magnitude_scores(model)
        if self._profile is None:
            masks = topk_masks(scores, sparsity, self.prune_scope)
        else:
            sizes = {k: v.numel() for k, v in scores.items()}
            counts = layer_keep_counts(sizes, {f"{n}.weight": s for n, s in self._profile.items()},
                                       n_keep(sum(sizes.values()), sparsity))
            masks = {k: keep_top(v, counts[k]) for k, v in scores.items()}
        with torch.no_grad():
            for name, layer in prunable_layers(model):
                layer.weight_mask.copy_(masks[f"{name}.weight"])

    def after_step(self, model, step, epoch):
        if self.params.schedule != "gradual" or step < self._t0 or step > self._t1:
            return
        if (step - self._t0) % self._dt and step != self._t1:
            return
        s_t = cubic_sparsity(step, self._t0, self._t1 - self._t0, self.params.initial_sparsity, self.ctx.target)
        if s_t <= 0.0:
            return
        self._prune(model, s_t)

    def after_epoch(self, model, epoch):
        for k, after in enumerate(self._prune_after):  # rounds that share an epoch prune in turn
            if epoch + 1 == after:
                self._prune(model, iterative_sparsity(k, self.params.rounds, self.ctx.target))

    def scores(self, model):
        if self._profile is None:
            return magnitude_scores(model)
        # the per-layer mask first, so the core's global top-k at the target keeps exactly it
        mags = magnitude_scores(model)
        return {f"{name}.weight": (layer.weight_mask.detach().clone(), mags[f"{name}.weight"])
                for name, layer in prunable_layers(model)}
