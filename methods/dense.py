"""``dense``: the unpruned network, trained by maximum likelihood (Adam), the reference
every table starts from.  It supplies no scores, so it has one record: sparsity 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slabbench.api import Method as _Base


@dataclass(frozen=True)
class Params:
    weight_decay: float = 0.0  #: L2 coefficient (coupled, added to the gradient)


class Method(_Base):
    Params = Params

    def optimizer(self, model, lr):
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=self.params.weight_decay)
