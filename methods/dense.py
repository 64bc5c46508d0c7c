"""``dense``: the unpruned network, trained by maximum likelihood (Adam), the reference
every table starts from.  It supplies no scores, so it has one record: sparsity 0."""

from __future__ import annotations

from dataclasses import dataclass

from slabbench.api import Method as _Base
from slabbench.api import PluginError, adam


@dataclass(frozen=True)
class Params:
    weight_decay: float = 0.0  #: L2 coefficient (coupled, added to the gradient)


class Method(_Base):
    Params = Params
    hooks_per_stack = True  # hooks handle stacked layers: penalties sum over runs, updates are elementwise

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        if params.weight_decay < 0:
            raise PluginError(f"option 'weight_decay' of method 'dense' must be >= 0, got {params.weight_decay!r}")

    def optimizer(self, model, lr):
        return adam(model.parameters(), lr, self.params.weight_decay)
