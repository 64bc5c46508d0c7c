"""``magnitude``: magnitude pruning, SCIENCE.md §2.

(a) ``schedule: oneshot`` (Han et al. 2015): train dense with L2 (``weight_decay``), score
    every weight by |w|, keep the top (1 - s) (globally or per layer, ``scope``), then the
    core fine-tunes the survivors (``finetune_epochs`` at ``lr * finetune_lr_factor``,
    0.1 by default, Han et al.'s retraining at 1/10 of the learning rate).
(b) ``schedule: gradual`` (Zhu & Gupta 2017): one training run per target s_f; every
    ``prune_every`` steps between t0 = ``begin_frac`` and t0 + n*dt = ``end_frac`` of
    training, prune the smallest weights to

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3,

    masks held fixed in between and after.  The final mask then equals the top-k by |w|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slabbench.api import Method as _Base
from slabbench.api import adam
from slabbench.api import PluginError, check_choice
from slabbench.layers import prunable_layers
from slabbench.prune import SCOPES, magnitude_scores, topk_masks

SCHEDULES = ("oneshot", "gradual")


@dataclass(frozen=True)
class Params:
    weight_decay: float = 1e-4  #: L2 coefficient during training (Han et al. train with L2)
    scope: str = "global"  #: global | layerwise threshold
    schedule: str = "oneshot"  #: oneshot | gradual
    initial_sparsity: float = 0.0  #: s_i of the gradual schedule
    begin_frac: float = 0.1  #: t0 as a fraction of all training steps
    end_frac: float = 0.7  #: t0 + n*dt as a fraction of all training steps
    prune_every: int = 0  #: dt in optimiser steps; 0 = once per epoch


def cubic_sparsity(t: int, t0: int, span: int, s_i: float, s_f: float) -> float:
    """Zhu & Gupta's schedule: s_t = s_f + (s_i - s_f)(1 - (t - t0)/span)^3, clipped to [t0, t0 + span]."""
    if span <= 0:
        return s_f if t >= t0 else s_i
    frac = min(max((t - t0) / span, 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - frac) ** 3


class Method(_Base):
    Params = Params

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        owner = "method 'magnitude'"
        check_choice(owner, "scope", params.scope, SCOPES)
        check_choice(owner, "schedule", params.schedule, SCHEDULES)
        if not 0.0 <= params.begin_frac <= params.end_frac <= 1.0:
            raise PluginError(f"{owner}: need 0 <= begin_frac <= end_frac <= 1, got {params.begin_frac}, {params.end_frac}")
        if not 0.0 <= params.initial_sparsity < 1.0:
            raise PluginError(f"{owner}: initial_sparsity must be in [0, 1), got {params.initial_sparsity}")
        self.prune_scope = params.scope
        total = ctx.epochs * ctx.steps_per_epoch
        self._t0 = int(params.begin_frac * total)
        self._t1 = int(params.end_frac * total)
        self._dt = params.prune_every or max(1, ctx.steps_per_epoch)

    @classmethod
    def trains_per_target(cls, params: Params) -> bool:
        return params.schedule == "gradual"

    def optimizer(self, model, lr):
        return adam(model.parameters(), lr, self.params.weight_decay)

    def after_step(self, model, step, epoch):
        if self.params.schedule != "gradual" or step < self._t0 or step > self._t1:
            return
        if (step - self._t0) % self._dt and step != self._t1:
            return
        s_t = cubic_sparsity(step, self._t0, self._t1 - self._t0, self.params.initial_sparsity, self.ctx.target)
        if s_t <= 0.0:
            return
        masks = topk_masks(magnitude_scores(model), s_t, self.prune_scope)
        with torch.no_grad():
            for name, layer in prunable_layers(model):
                layer.weight_mask.copy_(masks[f"{name}.weight"])

    def scores(self, model):
        return magnitude_scores(model)
