"""The architectures' layers that are not pruned (batch norm, max pooling), stackable.

Each is torch's own layer (a subclass, same parameters, buffers and state-dict keys) that also
runs stacked (:mod:`slabbench.layers.stacked`): with ``stack = S`` every parameter and buffer has
a leading run dimension S and the input is ``(S, B, C, ...)``.  Batch norm keeps per-run batch
statistics, running statistics and affine parameters: run s normalises its channels over its
own minibatch only, exactly as it would alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slabbench.layers import stacked


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    """(S, C) -> (S*C,) as a view, so running statistics updated in place land in the buffer."""
    return None if t is None else t.view(-1)


class _StackedBatchNorm:
    """Stacked forward of torch's batch norm (same rules as ``nn.modules.batchnorm._BatchNorm``):
    weight, bias, running mean and variance ``(S, C)``, ``num_batches_tracked`` ``(S,)``."""

    stack = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stack:
            return super().forward(x)
        self._check_input_dim(x[0])
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average; every run has seen as many batches
                factor = 1.0 / float(self.num_batches_tracked[0])
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        y = F.batch_norm(stacked.to_channels(x), _flat(self.running_mean) if keep else None,
                         _flat(self.running_var) if keep else None, _flat(self.weight), _flat(self.bias),
                         use_batch, factor, self.eps)
        return stacked.from_channels(y, self.stack)


class BatchNorm1d(_StackedBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d``; stacked input ``(S, B, C)`` or ``(S, B, C, L)``."""

    handles_run_dim = True


class BatchNorm2d(_StackedBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d``; stacked input ``(S, B, C, H, W)``."""

    handles_run_dim = True


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d``; stacked input ``(S, B, C, H, W)``, output ``(S, B, C, H', W')``."""

    handles_run_dim = True
    stack = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stack and self.return_indices:
            raise NotImplementedError("a stacked MaxPool2d does not return indices")
        return stacked.per_plane(super().forward, x, self.stack)
