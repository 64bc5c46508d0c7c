"""``sparse_vd``: sparse variational dropout (Molchanov, Ashukha & Vetrov, ICML 2017), docs/science.md §2.

Every prunable layer becomes a sparse-VD layer (:mod:`slabbench.layers.sparse_vd`: theta
initialised from the plain weight, log sigma^2 = ``log_sigma2_init``, bias in the mean
only, local reparameterisation, log alpha clipped to [-8, 8] in training and in the KL).
The core minimises the SGVLB per data point,

    mean NLL + beta(epoch) * KL / N,      KL = sum over all weights of eq. 14 (nats),

with Adam at the experiment's lr.  After training:

* ``natural_mask``: keep w_ij iff log alpha_ij <= ``threshold`` (3 in the paper), log
  alpha unclipped;
* ``scores`` (matched sparsity): -log alpha (unclipped), so the global top-k keeps the
  lowest dropout rates;
* ``export``: plain MaskedLinear / MaskedConv2d layers, same names, weight = theta, bias
  kept, no mask (the core applies the natural or top-k masks).

KL warm-up (``beta``): the official scripts (``optpolicy.rw_linear``) use

    beta(e) = 0 for e < 5,  (e - 5) / 15 for 5 <= e < 20,  1 after       (0-based epoch e)

i.e. ``kl_warmup_start = 5``, ``kl_warmup_end = 20`` with ``kl_warmup_unit: epochs`` (the
default).  With ``kl_warmup_unit: fraction`` the two numbers are fractions of the run's
epochs E instead (the window is [start * E, end * E]); e.g. 0.025 / 0.1 is the official
window of a 200-epoch run scaled to any length.  Runs shorter than the window, in epochs:
with E <= ``kl_warmup_end`` the KL never reaches full weight (the last epoch has beta =
(E - 1 - start) / (end - start)), so the run optimises a down-weighted KL and prunes
less than the ELBO would; with E <= ``kl_warmup_start`` + 1 the KL never acts at all and
the natural selection keeps (almost) every weight.  Nothing is rescaled silently: set the
window (or the fraction unit) for short runs.

Learning-rate schedule (``lr_schedule``; the official scripts' ``nets/optpolicy.py``, Adam's
lr set at the start of every epoch e = 0, 1, ..., E - 1 of an E-epoch run):

* ``constant`` (the default): the experiment's lr throughout;
* ``linear_from_half``: lr * min(1, 2 - 2e/E), constant for the first half, then linear to
  0 (``lr_linear``, the LeNet-300-100 script ``lenet300-100-ard.py``: k * min(2 - e/100, 1)
  over 200 epochs);
* ``linear_to0``: lr * (E - e)/E, linear from the start (``lr_linear_to0``, the LeNet-5
  script ``lenet5-ard.py``: lr * (200 - e)/200 over 200 epochs).

The official functions count in epochs of a 200-epoch run (their loop runs one more epoch,
e = 200, at lr 0, which changes nothing); ours are the same fractions of the run's E epochs,
so at E = 200 they are identical and a shortened run keeps the schedule's shape.

``train_clip`` defaults to true: the official LeNet-300-100 and LeNet-5 scripts
(``run_experiment(..., train_clip=True)``) zero the weights with log alpha > 3 in the
training forward as well.  Their PyTorch demo (``LinearSVDO``) does not; set it false for that.
Where the official layers zero them differs by layer type (``nets/layers.py``): the dense
layer in the mean only (the weight's noise x^2 alpha theta^2 stays in the variance), the
convolution in the mean and the variance.  ``train_clip_variance: null`` (the default) does
the same per layer type; ``true`` / ``false`` zero them in the variance of every / no layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slabbench.api import Method as _Base
from slabbench.api import PluginError, check_choice
from slabbench.layers import replace_layers
from slabbench.layers.sparse_vd import LOG_SIGMA2_INIT, SVDO_LAYERS, THRESHOLD, svdo_layers, to_svdo

WARMUP_UNITS = ("epochs", "fraction")
LR_SCHEDULES = ("constant", "linear_from_half", "linear_to0")


@dataclass(frozen=True)
class Params:
    threshold: float = THRESHOLD  #: natural rule: drop log alpha > threshold (paper: 3)
    train_clip: bool = True  #: zero log alpha > threshold weights in the training forward too (official scripts)
    train_clip_variance: bool | None = None  #: ... in the variance too; None = official: Linear no, Conv2d yes
    log_sigma2_init: float = LOG_SIGMA2_INIT  #: initial log sigma^2 (official code: -10)
    kl_warmup_start: float = 5.0  #: beta = 0 before this epoch (or fraction of the run)
    kl_warmup_end: float = 20.0  #: beta = 1 from this epoch (or fraction of the run) on
    kl_warmup_unit: str = "epochs"  #: epochs | fraction (of the run's epochs)
    lr_schedule: str = "constant"  #: constant | linear_from_half (official LeNet-300-100) | linear_to0 (official LeNet-5)


def warmup_weight(epoch: float, start: float, end: float) -> float:
    """Linear KL warm-up: 0 before ``start``, 1 from ``end`` on, linear in between
    (a step at ``start`` when ``end == start``).  Unitless, in [0, 1]."""
    if end <= start:
        return 1.0 if epoch >= start else 0.0
    return min(1.0, max(0.0, (epoch - start) / (end - start)))


def lr_schedule_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The lr multiplier of ``schedule`` at 0-based ``epoch`` of an ``epochs``-epoch run (see
    the module docstring): 1, min(1, 2 - 2e/E) or (E - e)/E, never below 0."""
    if schedule == "linear_from_half":  # optpolicy.lr_linear: k * min(2 - epoch / 100, 1) at E = 200
        return max(0.0, min(1.0, 2.0 - 2.0 * epoch / epochs))
    if schedule == "linear_to0":  # optpolicy.lr_linear_to0: lr * max(0, (200 - epoch) / 200) at E = 200
        return max(0.0, (epochs - epoch) / epochs)
    return 1.0


class Method(_Base):
    Params = Params
    hooks_per_stack = True  # hooks handle stacked layers: penalties sum over runs, updates are elementwise

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        owner = "method 'sparse_vd'"
        check_choice(owner, "kl_warmup_unit", params.kl_warmup_unit, WARMUP_UNITS)
        check_choice(owner, "lr_schedule", params.lr_schedule, LR_SCHEDULES)
        start, end = float(params.kl_warmup_start), float(params.kl_warmup_end)
        if not 0.0 <= start <= end:
            raise PluginError(f"{owner}: need 0 <= kl_warmup_start <= kl_warmup_end, got {start}, {end}")
        if params.kl_warmup_unit == "fraction":
            if end > 1.0:
                raise PluginError(f"{owner}: with kl_warmup_unit 'fraction' the window must lie in [0, 1], got {start}, {end}")
            start, end = start * ctx.epochs, end * ctx.epochs
        self._window = (start, end)
        self._layer_kw = dict(log_sigma2_init=float(params.log_sigma2_init), threshold=float(params.threshold),
                              train_clip=bool(params.train_clip), clip_variance=params.train_clip_variance)

    def build(self, model):
        return replace_layers(model, lambda name, layer: to_svdo(layer, **self._layer_kw))

    def beta(self, epoch):
        return warmup_weight(epoch, *self._window)

    def lr_factor(self, epoch):
        return lr_schedule_factor(self.params.lr_schedule, epoch, self.ctx.epochs)

    def penalty(self, model):
        """KL(q || p) summed over every weight of every sparse-VD layer, in nats (scalar)."""
        kls = [layer.kl() for _, layer in svdo_layers(model)]
        return torch.stack(kls).sum() if kls else None

    def export(self, model):
        return replace_layers(model, lambda name, layer: layer.to_masked(), kinds=SVDO_LAYERS)

    def scores(self, model):
        """-log alpha (unclipped) per weight, keyed ``"<layer>.weight"``, the weight's shape."""
        return {f"{name}.weight": -layer.log_alpha().detach() for name, layer in svdo_layers(model)}

    def natural_mask(self, model):
        """1.0 where log alpha (unclipped) <= threshold, else 0.0; the weight's shape."""
        return {f"{name}.weight": layer.keep_mask() for name, layer in svdo_layers(model)}

    def extra_artifacts(self, model):
        return {"log_alpha": {f"{name}.weight": layer.log_alpha().detach().cpu() for name, layer in svdo_layers(model)}}
