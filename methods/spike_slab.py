"""``spike_slab``: spike-and-slab variational inference, docs/science.md §1 (the method of Saha,
Liu & Liang, arXiv 2411.00273, building on Bai, Song & Cheng, NeurIPS 2020, and Jantre et
al. 2021/2023 for node gates).

Options (``Params``):

* ``phi_update``: how the inclusion probabilities φ are learnt.
  ``closed_form`` (default): θ = logit φ is not trained by gradient; every ``phi_every`` steps
  (0 = once per epoch), after ``phi_warmup_epochs`` epochs with φ fixed at ``phi_init``
  (default 5% of the epochs; what counts is steps: the slabs widen while φ is fixed, and a
  first update after 5,500 steps (MNIST, 10 of 200 epochs) removed 99.7% of LeNet-300-100's
  weights for good, since a gate at φ ≈ 0 is never sampled on again: the image configs set
  1 epoch = 550 steps, near the simulation's 600; docs/published.md),
      logit φ_i = logit λ + log(σ_i/σ0) + μ_i²/(2σ_i²)
  (group form: logit φ_g = logit λ + Σ_{i∈g}[...]); gates in the forward pass are Bernoulli(φ),
  or with ``lrt_forward: true`` (ours) the moment-matched pre-activations of ``lrt``.
  ``gumbel``: θ trained through a hard binary-concrete straight-through sample, τ = ``tau``.
  ``lrt`` (ours): θ trained by gradient through the moment-matched pre-activations.
* ``granularity``: ``edge`` (one γ per weight), ``node`` (one γ per output unit, shared by
  its incoming weights and bias), ``input`` (one γ per input unit of the first layer, for
  feature selection; the other layers keep edge gates — our choice).
* ``sigma0`` (slab sd σ0, Bai: 1.3), ``prior_inclusion`` (λ; ``None`` = Bai's rule
  −log λ = log T + δ[(L+1) log N + log(√n · p)] with δ = ``bai_delta``, T = weights + biases,
  L hidden layers of width N (the widest, for unequal widths — ours), n training points,
  p inputs), ``phi_init`` (0.99), ``rho_init`` (−6).
* ``kl_warmup_epochs``: β(t) rises linearly 0 → 1 over this many epochs (0 = off).  The
  closed-form update needs no β: it is the stationary point of NLL + β KL in φ for every β,
  given the slab trained on that same objective (see ``closed_form_update``).
* ``prior_from_target`` (ours): train once per sparsity target s with λ = 1 − s, the prior
  whose expected sparsity is s (``prior_inclusion`` must stay null), as magnitude's gradual
  schedule trains once per target: a method aimed at each target, beside the plain method
  whose one posterior (under Bai's λ, ≈ 1e-4 to 1e-7) is ranked for every target.  Each run's
  λ is a buffer of its layers (``prior_logit``), so the runs of all targets × seeds train in
  one stack, each under its own λ (``target_in_model``; docs/performance.md, "Many runs, one process").
* ``rho_lr_factor`` (ours; 1 = one learning rate for every parameter): Adam's learning rate of
  ρ (the slab scales, weights' and biases') is ``lr × rho_lr_factor``.  Adam moves a parameter
  by about lr per step whatever its scale; σ starts at softplus(ρ_init) ≈ 0.0025, and ρ must
  travel a few units (to the posterior's log σ) before the signal-to-noise term μ²/(2σ²) of
  the closed-form update means what the update assumes (the slab at its optimum).  At lr 1e-3
  that takes thousands of steps: a short run stops with σ still near its init and the update
  over-includes (mnist5k, 30 epochs = 840 steps: 21% of the weights kept).  The factor lets ρ
  travel that far within the run's steps; the update and the objective are unchanged.
* ``bias_prior``: ``none`` (biases are plain parameters without prior; under node gates they
  are gated by their unit's γ) or ``spike_slab``: every bias gets the weights' spike-and-slab
  prior, variational family, KL and PIP update, as in Bai et al.'s code (``layers/layer.py``:
  ``b_mu``, ``b_rho``, ``b_theta``; the same λ and σ0): one γ per bias under ``edge`` /
  ``input`` granularity, the unit's γ (its weights' and bias's group) under ``node``.
  Selection still acts on weights only: top-k targets never prune a bias and the natural
  selection masks weights only (a bias with PIP < 0.5 is left at its posterior mean φ_b μ_b:
  shrunk by its PIP, not zeroed), except that under ``node`` gates the natural selection
  drops a unit together with its bias (one γ covers both), in the masked network and in the
  masked model average.
  Bai et al. count biases with φ > 0.5 in their fraction kept; our ``sparsity`` counts weights
  only, and the bias PIPs are saved as the ``pip_bias`` artefact.
* ``phi_step`` (ours; closed_form): θ ← θ + phi_step (θ* − θ) at each update, θ* the
  closed-form value; 1 (default) sets θ = θ*.  A step < 1 is the damped update of stochastic
  variational inference (Hoffman et al. 2013) on the gate's natural parameter: a gate is not
  closed by one early update while the slab is still far from its optimum.
* ``bma_samples``: MC samples for the Bayesian model average (None: 30 regression, 10 images).
* ``export_mean``: the deterministic network whose metrics are reported: ``posterior``
  (E[w] = φμ, the posterior mean) or ``slab`` (E[w | γ = 1] = μ, ours).  Bai et al. report
  no deterministic network: their test RMSE (``main_sparse_func.py`` of
  JinchengBai/sparse-variational-bnn) is that of the average prediction of 30 networks
  drawn from q, gates and slab noise on every weight and bias, nothing masked; see
  :meth:`Method.sampled_predict`.

Scores for matched sparsity are the PIP logits θ (ranking by θ = ranking by φ, without
float32 saturation at φ = 1); weights sharing a gate are ordered by |μ|/σ (a second ranking
key, ours: the core sorts by (θ, |μ|/σ) lexicographically).
Natural selection: φ > 0.5 (the median probability model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slabbench.api import Method as _Base
from slabbench.api import adam_scaled
from slabbench.api import PluginError, check_choice
from slabbench.layers import prunable_layers, replace_layers
from slabbench.layers.spike_slab import BIAS_PRIORS, GRANULARITIES, MODES, SPIKE_SLAB_LAYERS, from_plain, logit

EXPORTS = ("posterior", "slab")


@dataclass(frozen=True)
class Params:
    phi_update: str = "closed_form"  #: closed_form | gumbel | lrt
    granularity: str = "edge"  #: edge | node | input
    sigma0: float = 1.3  #: slab prior sd σ0 (Bai et al.; Jantre et al. use 1.0)
    prior_inclusion: float | None = None  #: λ; None = Bai et al.'s rule
    bai_delta: float = 0.1  #: δ in Bai et al.'s rule for λ
    phi_init: float = 0.99  #: initial inclusion probability
    rho_init: float = -6.0  #: initial ρ (σ = softplus(ρ) ≈ 0.0025)
    phi_every: int = 0  #: closed_form: steps between φ updates; 0 = once per epoch
    phi_warmup_epochs: int | None = None  #: closed_form: epochs with φ fixed; None = 5% of epochs (>= 1)
    kl_warmup_epochs: int = 0  #: linear KL warm-up β: 0 -> 1 over this many epochs
    tau: float = 0.5  #: gumbel: binary-concrete temperature
    lrt_forward: bool = False  #: closed_form: moment-matched pre-activations instead of sampled gates (ours)
    bma_samples: int | None = None  #: None = 30 (regression) / 10 (classification)
    export_mean: str = "posterior"  #: posterior (φμ) | slab (μ, ours)
    prior_from_target: bool = False  #: ours: one training per target s with λ = 1 − s (prior expected sparsity s)
    phi_step: float = 1.0  #: closed_form: θ moves this fraction of the way to its update (ours; 1 = the update)
    rho_lr_factor: float = 1.0  #: lr of ρ = lr × this (ours; 1 = one lr for every parameter)
    bias_prior: str = "none"  #: none (plain biases) | spike_slab (Bai et al.'s code: biases get the prior and a gate)


def bai_prior_inclusion(n_coef: int, hidden_layers: int, width: int, n: int, p: int, delta: float = 0.1) -> float:
    """λ from Bai et al.'s rule: −log λ = log T + δ[(L+1) log N + log(√n · p)]."""
    neg_log = math.log(n_coef) + delta * ((hidden_layers + 1) * math.log(width) + math.log(math.sqrt(n) * p))
    return math.exp(-neg_log)


class Method(_Base):
    Params = Params
    hooks_per_stack = True  # hooks handle stacked layers: penalties sum over runs, updates are elementwise
    # prior_from_target: the target enters only through λ, which build() stores in the layers
    # (a buffer, stacked per run), so runs of different targets share one stack
    target_in_model = True

    @property
    def after_step_in_step(self) -> bool:
        """The per-step hook does nothing unless φ is updated every ``phi_every`` steps (which
        reads the step count): then it runs between steps, else it is part of the step."""
        p = self.params
        return not (p.phi_update == "closed_form" and p.phi_every > 0)

    def __init__(self, params: Params, ctx):
        super().__init__(params, ctx)
        owner = "method 'spike_slab'"
        check_choice(owner, "phi_update", params.phi_update, MODES)
        check_choice(owner, "granularity", params.granularity, GRANULARITIES)
        check_choice(owner, "export_mean", params.export_mean, EXPORTS)
        check_choice(owner, "bias_prior", params.bias_prior, BIAS_PRIORS)
        if params.lrt_forward and params.phi_update == "gumbel":
            raise PluginError(f"option 'lrt_forward' of {owner} needs phi_update closed_form or lrt, got gumbel")
        if not 0 < params.phi_step <= 1:
            raise PluginError(f"option 'phi_step' of {owner} must be in (0, 1], got {params.phi_step}")
        for key in ("phi_every", "phi_warmup_epochs", "kl_warmup_epochs"):  # counts of steps or epochs
            v = getattr(params, key)
            if v is not None and v < 0:
                raise PluginError(f"option {key!r} of {owner} must be >= 0, got {v}")
        if params.bma_samples is not None and params.bma_samples < 1:
            raise PluginError(f"option 'bma_samples' of {owner} must be an integer >= 1 or null (30 for regression, "
                              f"10 for images), got {params.bma_samples}")
        for key in ("sigma0", "tau", "rho_lr_factor"):
            if getattr(params, key) <= 0:
                raise PluginError(f"option {key!r} of {owner} must be > 0, got {getattr(params, key)}")
        for key in ("phi_init", "prior_inclusion"):
            v = getattr(params, key)
            if v is not None and not 0 < v < 1:
                raise PluginError(f"option {key!r} of {owner} must be in (0, 1), got {v}")
        self.warmup = params.phi_warmup_epochs if params.phi_warmup_epochs is not None else max(1, round(0.05 * ctx.epochs))
        self.logit_lam = logit(params.prior_inclusion) if params.prior_inclusion is not None else None
        if params.prior_from_target:
            if params.prior_inclusion is not None:
                raise PluginError(f"option 'prior_from_target' of {owner} sets λ = 1 − target itself; leave "
                                  f"'prior_inclusion' null (got {params.prior_inclusion})")
            if ctx.target is not None:
                self.logit_lam = logit(1.0 - ctx.target)

    @classmethod
    def trains_per_target(cls, params: Params) -> bool:
        """``prior_from_target``: one training per sparsity target, its prior aimed at it."""
        return bool(params.prior_from_target)

    # -- build ------------------------------------------------------------------------------
    def build(self, model):
        layers = list(prunable_layers(model))
        if self.logit_lam is None:
            n_coef = sum(p.numel() for _, l in layers for p in (l.weight, l.bias) if p is not None)
            width = max([l.weight.shape[0] for _, l in layers[:-1]] or [1])
            lam = bai_prior_inclusion(n_coef, len(layers) - 1, width, self.ctx.n_train,
                                      self.ctx.spec.n_features if self.ctx.spec else layers[0][1].weight.shape[1],
                                      self.params.bai_delta)
            self.logit_lam = logit(lam)
        first = layers[0][0]
        p = self.params
        # prior_from_target: λ differs between runs, so each layer holds its run's own
        own = self.logit_lam if p.prior_from_target else None
        return replace_layers(model, lambda name, layer: from_plain(
            layer, granularity=("edge" if p.granularity == "input" and name != first else p.granularity),
            mode=p.phi_update, phi_init=p.phi_init, rho_init=p.rho_init, tau=p.tau, lrt_forward=p.lrt_forward,
            bias_prior=p.bias_prior, prior_logit=own))

    @property
    def prior_inclusion(self) -> float:
        return 1 / (1 + math.exp(-self.logit_lam))

    def _layers(self, model):
        return list(prunable_layers(model, SPIKE_SLAB_LAYERS))

    # -- training ---------------------------------------------------------------------------
    def optimizer(self, model, lr):
        """Adam; the slab scales ρ (weights' and biases') at ``lr × rho_lr_factor`` (see the
        module docstring)."""
        return adam_scaled(model, lr, ("rho", "bias_rho"), self.params.rho_lr_factor)

    def beta(self, epoch):
        k = self.params.kl_warmup_epochs
        return 1.0 if k <= 0 else min(1.0, epoch / k)

    @property
    def _layer_lam(self) -> float | None:
        """The logit λ handed to the layers: ``None`` (each layer's own, see :meth:`build`)
        under ``prior_from_target``, else the one float."""
        return None if self.params.prior_from_target else self.logit_lam

    def penalty(self, model):
        return sum(layer.kl(self._layer_lam, self.params.sigma0) for _, layer in self._layers(model))

    def _update(self, model):
        for _, layer in self._layers(model):
            layer.closed_form_update(self._layer_lam, self.params.sigma0, self.params.phi_step)

    def after_step(self, model, step, epoch):
        p = self.params
        if p.phi_update == "closed_form" and p.phi_every > 0 and epoch >= self.warmup and (step + 1) % p.phi_every == 0:
            self._update(model)

    def after_epoch(self, model, epoch):
        p = self.params
        if p.phi_update == "closed_form" and p.phi_every == 0 and epoch + 1 >= self.warmup:
            self._update(model)

    # -- selection and export ---------------------------------------------------------------
    def export(self, model):
        kind = self.params.export_mean
        return replace_layers(model, lambda name, layer: layer.to_plain(kind), kinds=SPIKE_SLAB_LAYERS)

    @torch.no_grad()
    def scores(self, model):
        """(θ broadcast to the weight, |μ|/σ) per weight: rank by PIP logit, then, within a
        shared gate, by the slab's signal-to-noise ratio (see :func:`slabbench.prune.topk_masks`)."""
        return {f"{name}.weight": (layer.expand(layer.theta).clone(), (layer.mu.abs() / layer.sigma))
                for name, layer in self._layers(model)}

    @torch.no_grad()
    def natural_mask(self, model):
        """Keep a weight iff its PIP > 0.5 (θ > 0); under node gates also a unit's bias with its
        unit (one γ covers both, docs/science.md §1): a dropped unit outputs f(0), not f(φb)."""
        mask = {}
        for name, layer in self._layers(model):
            mask[f"{name}.weight"] = (layer.expand(layer.theta) > 0).float()
            bias = layer.natural_bias_mask()
            if bias is not None:
                mask[f"{name}.bias"] = bias
        return mask

    @torch.no_grad()
    def bma_predict(self, model, masks, x):
        n = self.params.bma_samples if self.params.bma_samples is not None else (30 if self.ctx.task == "regression" else 10)
        layers = self._layers(model)
        saved = [layer.weight_mask.clone() for _, layer in layers]
        model.eval()
        try:
            for name, layer in layers:
                layer.bma = True
                if masks is not None:
                    layer.weight_mask.copy_(masks[f"{name}.weight"])
                    layer.bias_keep = masks.get(f"{name}.bias")
            outs = []
            for _ in range(n):
                out = torch.cat([model(x[i:i + 4096]) for i in range(0, len(x), 4096)])
                outs.append(F.softmax(out, dim=1) if self.ctx.task == "classification" else out.reshape(-1))
            # classification: the averaged probabilities (n, C); regression: every sample's
            # means (n_samples, n), so the core scores the mixture's density, not its mean's
            return torch.stack(outs).mean(0) if self.ctx.task == "classification" else torch.stack(outs)
        finally:
            for (_, layer), m in zip(layers, saved):
                layer.bma = False
                layer.bias_keep = None
                layer.weight_mask.copy_(m)

    @torch.no_grad()
    def sampled_predict(self, model, x):
        """Bai et al.'s predictor: the average over ``bma_samples`` networks drawn from q with
        nothing masked (every weight, whatever its PIP), class probabilities (n, C) or
        predictive means (n,).  Each network draws z ~ Bernoulli(φ) and w = z (μ + σ ε) per
        weight: the same law as Bai et al.'s hard binary-concrete gate, 1[θ + logit u > 0],
        at any temperature.  Biases are as the layers hold them: with ``bias_prior: spike_slab``
        drawn from q like the weights, as in Bai et al.'s code; with ``none`` plain (gated under
        node granularity).  Unlike
        :meth:`bma_predict` this ignores any mask, so one value per trained model."""
        ones = {f"{name}.weight": torch.ones_like(layer.mu) for name, layer in self._layers(model)}
        pred = self.bma_predict(model, ones, x)
        return pred.mean(0) if self.ctx.task == "regression" else pred  # regression: mean over samples (n,)

    @torch.no_grad()
    def extra_artifacts(self, model):
        layers = self._layers(model)
        return {
            "pip_weight": {f"{n}.weight": l.expand(l.phi).detach().cpu() for n, l in layers},
            "pip_node": {n: l.node_pip().detach().cpu() for n, l in layers[:-1]},
            "pip_input": layers[0][1].input_pip().detach().cpu(),
            "pip_bias": {f"{n}.bias": l.bias_pip().detach().cpu() for n, l in layers if l.bias_pip() is not None},
            "prior_inclusion": self.prior_inclusion,
        }
