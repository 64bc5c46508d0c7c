"""``l0``: L0 regularisation with hard-concrete gates (Louizos, Welling & Kingma, ICLR 2018), docs/science.md §2.

Every prunable layer becomes an L0 layer (:mod:`slabbench.layers.l0`; theta from the plain
weight, gate locations log alpha from a drop rate d: log(1 - d) - log(d) plus N(0, 0.01^2)
jitter as in the official code; d = ``droprate_init_input`` (0.2) on an MLP's input layer,
i.e. the first prunable layer when it is a Linear, ``droprate_init`` (0.5) elsewhere).
The core minimises

    mean NLL + penalty / N,
    penalty = l0_lambda * sum_g |g| P(z_g != 0) + gate-weighted L2 (weight_decay)   (nats)

with one hard-concrete gate sample per minibatch, and after every optimiser step log alpha
is clamped to [log 0.01, log 100] (``after_step``).  After training:

* ``natural_mask``: keep a weight iff its test-time gate z_hat (paper eq. 13) is non-zero;
* ``scores`` (matched sparsity): P(z != 0) of the weight's gate, broadcast to the weight's
  shape, with |theta| as the second ranking key (with ``gates: input`` the weights of a group
  tie on the first; ours);
* ``export``: plain MaskedLinear / MaskedConv2d, same names, weight = theta * z_hat baked in.

``l0_lambda`` is per weight and in the core's convention (penalty / N): ``l0_lambda = 0.1``
is the paper's "lambda = 0.1/N" for LeNet-300-100 and LeNet-5 (Table 1), i.e. the official
code's ``lamba = 0.1`` with its ``regularization() / N``; the official code counts lambda
once per weight of each group (|g| P(z_g != 0)), as the paper's group-sparsity L0 does.

``weight_decay`` is the prior precision of the paper's L2 term (combined with the expected L0), in the same /N
convention: 0.5 * weight_decay * sum_g P(z_g != 0) sum_{j in g} theta_j^2 (+ 0.5 *
weight_decay * b^2).  The official code's L0MLP multiplies its ``--weight-decay`` by N
first (so weight_decay here = N * theirs), its L0LeNet5 does not.  Default 0: no L2.

``gate_lr_factor`` (not in the paper) multiplies the learning rate of the gate locations
log alpha only.  The paper trains everything with Adam at lr 1e-3 for 200 epochs of
60,000 images (~10^5 steps); Adam moves a parameter by at most about lr per step, and a
gate needs log alpha < -2.4 (from 0 or 1.4 at init) for z_hat = 0, so short runs with
lr 1e-3 cannot close any gate.  1.0 reproduces the paper.  (30 epochs of mnist5k at lr 1e-3,
28 steps per epoch, needed a factor of about 40 with ``gates: weight`` to reach 90% natural
sparsity.)

``temperature`` is the hard concrete's beta (2/3 in the paper and the official code).

Official protocol (AMLab-Amsterdam/L0_regularization, ``train_lenet5.py`` and ``models.py``):

* ``weight_decay``: ``train_lenet5.py`` passes ``--weight-decay 5e-4`` to ``L0LeNet5``, whose
  layers add (1 - Q(z <= 0)) * (0.5 * 5e-4 * sum theta^2 + lambda) per gate and divide the
  sum by N: ``weight_decay: 5.0e-4`` here.  ``L0MLP`` multiplies its argument by N first,
  so the same 5e-4 there is ``weight_decay: 5e-4 * N`` here (the repository has no MLP script;
  that 5e-4 is the LeNet-5 script's default).  Linear biases get the plain 0.5 * wd * b^2,
  conv biases the gated one, as in the official layers; their conv layer also adds
  + lambda * P(z != 0) per channel for the bias (it lowers the penalty), which we do not
  copy: one lambda per channel against |g| = 25 (conv1) or 500 (conv2) in the L0 term.
* ``ema``: ``L0MLP`` averages every parameter (weights, biases, gate locations) after every
  step, after the clamp, with decay 0.999 (``beta_ema``, its default), and evaluates the
  averaged parameters; ``L0LeNet5`` does not (its ``beta_ema`` defaults to 0 and
  ``train_lenet5.py`` never passes ``--beta_ema``): ``ema: 0.999`` reproduces the MLP,
  ``ema: 0`` (the default) the LeNet-5.  With ``ema`` > 0, after the last epoch the
  averaged values replace the parameters, so the export, scores, natural mask and
  artefacts all read the averaged network.  The average is the bias-corrected one,
  a_t = ema * a_{t-1} + (1 - ema) * p_t from a_0 = 0, evaluated as a_t / (1 - ema^t) (a
  weighted mean of the iterates); the official code starts a_0 at the initial parameters
  and divides by the same (1 - ema^t), which adds ema^t / (1 - ema^t) * p_0: nothing at the
  official 120,000 steps (ema^t ~ 1e-52), a distortion in a short run, so we start at 0.
* Not reproduced: the official scripts report the *best* test error over the epochs (their
  validation loader is the test set; ``best_prec1``); we report the final epoch.  Their
  Kaiming-normal initialisation, inputs in [0, 1] and 60,000 training images differ from
  our architecture's initialisation, the data set's normalisation and its 55,000 (5,000
  held out for validation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slabbench.api import Method as _Base
from slabbench.api import PluginError, adam_scaled, check_choice
from slabbench.layers import prunable_layers, replace_layers
from slabbench.layers.l0 import BETA, GATES, L0_LAYERS, eval_gate, l0_layers, to_l0


@dataclass(frozen=True)
class Params:
    gates: str = "input"  #: input (per input neuron / output channel, the paper) | weight (per weight)
    l0_lambda: float = 0.1  #: lambda per expected non-zero weight, before the core's / N (paper: 0.1/N)
    weight_decay: float = 0.0  #: prior precision of the gate-weighted L2 term, before / N
    droprate_init: float = 0.5  #: initial drop rate of every gate (paper / official code)
    droprate_init_input: float = 0.2  #: initial drop rate on an MLP's input layer (official L0MLP)
    temperature: float = BETA  #: hard-concrete temperature beta (paper: 2/3)
    gate_lr_factor: float = 1.0  #: lr of log alpha = lr * this (not in the paper; 1 = paper)
    ema: float = 0.0  #: decay of the parameter average evaluated after training; 0 = off (official L0MLP: 0.999)


class Method(_Base):
    Params = Params
    hooks_per_stack = True  # hooks handle stacked layers: penalties sum over runs, updates are elementwise
    run_state = ("_ema",)  # the parameter averages: one per run of a stack
    after_step_in_step = True  # the clamp and the averaging: in place, the same every step (counted on the device)

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        owner = "method 'l0'"
        check_choice(owner, "gates", params.gates, GATES)
        for key in ("droprate_init", "droprate_init_input"):
            value = getattr(params, key)
            if not 0.0 < value < 1.0:
                raise PluginError(f"option {key!r} of {owner} must be in (0, 1), got {value!r}")
        for key in ("l0_lambda", "weight_decay"):
            if getattr(params, key) < 0:
                raise PluginError(f"option {key!r} of {owner} must be >= 0, got {getattr(params, key)!r}")
        for key in ("temperature", "gate_lr_factor"):
            if not getattr(params, key) > 0:
                raise PluginError(f"option {key!r} of {owner} must be > 0, got {getattr(params, key)!r}")
        if not 0.0 <= params.ema < 1.0:
            raise PluginError(f"option 'ema' of {owner} must be in [0, 1) (0 = no averaging; official L0MLP: 0.999), "
                              f"got {params.ema!r}")
        self._ema: list[torch.Tensor] | None = None  # running averages of model.parameters(), in order
        self._ema_steps: torch.Tensor | None = None  # how many averaging steps (a device counter: no host sync)

    def build(self, model):
        p = self.params
        layers = list(prunable_layers(model))
        first = layers[0][0] if layers and isinstance(layers[0][1], nn.Linear) else None

        def convert(name, layer):
            d = p.droprate_init_input if name == first else p.droprate_init
            return to_l0(layer, gates=p.gates, droprate=d, beta=p.temperature)

        return replace_layers(model, convert)

    def optimizer(self, model, lr):
        return adam_scaled(model, lr, ("log_alpha",), self.params.gate_lr_factor)

    def penalty(self, model):
        """l0_lambda * expected number of non-zero weights (+ gate-weighted L2), in nats (scalar)."""
        terms = []
        for _, layer in l0_layers(model):
            terms.append(self.params.l0_lambda * layer.expected_l0())
            if self.params.weight_decay > 0:
                terms.append(layer.l2(self.params.weight_decay))
        return torch.stack(terms).sum() if terms else None

    def after_step(self, model, step, epoch):
        for _, layer in l0_layers(model):
            layer.constrain()
        if self.params.ema > 0:  # official update_ema: after the clamp, every parameter, elementwise
            params = [p.detach() for p in model.parameters()]
            if self._ema is None:
                self._ema = [torch.zeros_like(p) for p in params]
                self._ema_steps = torch.zeros((), dtype=torch.int64, device=params[0].device)
            with torch.no_grad():  # avg = ema * avg + (1 - ema) * p; one kernel for all on a GPU
                torch._foreach_lerp_(self._ema, params, 1.0 - self.params.ema)
                self._ema_steps.add_(1)

    def after_epoch(self, model, epoch):
        if self.params.ema > 0 and epoch == self.ctx.epochs - 1 and self._ema_steps is not None:
            self.load_average(model)

    @torch.no_grad()
    def load_average(self, model):
        """Replace the parameters of ``model`` by their bias-corrected averages a_t / (1 - ema^t)
        (the official ``load_ema_params``, from a_0 = 0; see the module docstring)."""
        debias = 1.0 - self.params.ema ** int(self._ema_steps)  # (read once, at the end)
        for p, avg in zip(model.parameters(), self._ema):
            p.copy_(avg / debias)

    def export(self, model):
        return replace_layers(model, lambda name, layer: layer.to_masked(), kinds=L0_LAYERS)

    @torch.no_grad()
    def scores(self, model):
        """(P(z != 0) of each weight's gate, |theta|), keyed ``"<layer>.weight"``, each the
        weight's shape.  The core ranks the pair lexicographically: weights sharing a gate are
        ordered by |theta| (ours), so a partly kept group keeps its largest weights rather
        than the first by index."""
        return {f"{name}.weight": (layer.expand(layer.prob_nonzero()).expand_as(layer.theta).clone(),
                                   layer.theta.abs().detach())
                for name, layer in l0_layers(model)}

    def natural_mask(self, model):
        """1.0 where the weight's test-time gate z_hat is non-zero, else 0.0; the weight's shape."""
        out = {}
        for name, layer in l0_layers(model):
            keep = (eval_gate(layer.log_alpha) > 0).to(layer.theta.dtype)
            out[f"{name}.weight"] = layer.expand(keep).expand_as(layer.theta).detach().clone()
        return out

    def extra_artifacts(self, model):
        """Per layer, gate-shaped: P(z != 0) and the test-time gate z_hat."""
        return {
            "p_nonzero": {f"{n}.weight": l.prob_nonzero().detach().cpu() for n, l in l0_layers(model)},
            "test_gate": {f"{n}.weight": eval_gate(l.log_alpha).detach().cpu() for n, l in l0_layers(model)},
        }
