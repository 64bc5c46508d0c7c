"""Spike-and-slab variational layers (docs/science.md §1).

Prior per coefficient (or per group g of coefficients sharing one indicator):
    w_i | γ ~ γ N(0, σ0²) + (1 − γ) δ0,   γ ~ Bernoulli(λ).
Mean-field variational family:
    q(w_i, γ) = Bern(γ; φ) [γ N(w_i; μ_i, σ_i²) + (1 − γ) δ0],  σ = softplus(ρ), φ = sigmoid(θ).

Parameters of a layer with weight shape W = (out, in) or (out, in, kh, kw):
    ``mu`` (W), ``rho`` (W), ``theta`` (the gate shape: W for ``edge``, (out,) for ``node``,
    (in,) for ``input``), ``bias`` (out,) a plain parameter without prior (gated by the node
    indicator under ``node`` granularity).  ``weight_mask`` (W) is a 0/1 buffer applied in
    every forward (used for masked Bayesian model averages).

Bias priors (``bias_prior``): ``none`` (above) or ``spike_slab``: every bias gets the weights'
prior and variational family, as in Bai et al.'s code (``layers/layer.py`` of
JinchengBai/sparse-variational-bnn: ``b_mu``, ``b_rho``, ``b_theta``, the same λ, σ0 and KL).
``bias`` is then the slab mean μ_b, ``bias_rho`` (out,) its ρ, and its gate is ``bias_theta``
(out,) under ``edge`` / ``input`` granularity (one γ per bias; trained like θ: a buffer set by
the closed-form update or a parameter trained by gradient), or the node's own γ under ``node``
(the unit's incoming weights and bias share one indicator, so the group's KL and closed-form
update include the bias's slab term).  Biases are never masked: ``weight_mask`` acts on weights.

Per-run prior (``prior_logit``): a layer built with its own logit λ holds it as a buffer, shape
() for an ordinary layer and (S,) stacked, so runs with different priors (``prior_from_target``:
λ = 1 − target) train in one stack, each under its own λ.  The KL and the closed-form update
take ``logit_lam = None`` to mean that buffer; a float is one λ for every run.

Training forward by ``mode``:
    * ``closed_form``: gates z ~ Bernoulli(φ) (no gradient to θ, which is a buffer set by
      :meth:`closed_form_update`), w = z (μ + σ ε), one sample of the network per minibatch;
      or, with ``lrt_forward = True``, the moment-matched pre-activations below (θ still a
      buffer: only the slab's gradient changes, from a sparse sampled one to its expectation).
    * ``gumbel``: z is a hard (straight-through) binary-concrete sample at temperature τ
      (Bai, Song & Cheng 2020); θ is trained by gradient.
    * ``lrt``: no gate sampling: pre-activations drawn from their Gaussian moment match with
      E[w] = φμ, Var[w] = φ(σ² + μ²) − φ²μ² (node gates: the same formula applied to the
      whole pre-activation), out = mean + sqrt(var + 1e-8) ε.  θ is trained by gradient.
Eval forward: the posterior-mean network, w = φ μ (masked); with ``bma = True`` a sampled
network (z ~ Bernoulli(φ), w = z (μ + σ ε)), for Monte Carlo model averages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slabbench.layers import spike_slab_ops as ops
from slabbench.layers import stacked
from slabbench.layers.masked import MaskedConv2d, MaskedLinear, make_plain

GRANULARITIES = ("edge", "node", "input")
MODES = ("closed_form", "gumbel", "lrt")
BIAS_PRIORS = ("none", "spike_slab")
LRT_EPS = 1e-8
#: the key of the KL constants computed with the layer's own per-run prior_logit (see _fixed_gate)
_OWN_PRIOR = "prior_logit"


def _refresh_after_load(module: nn.Module, incompatible_keys) -> None:
    """load_state_dict post-hook of the spike-and-slab layers (a module-level function, so that a
    pickled layer keeps it): the cached gate tensors follow the θ just written."""
    module._refresh_gate_cache()


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class _SpikeSlab(nn.Module):
    """Shared machinery of :class:`SpikeSlabLinear` and :class:`SpikeSlabConv2d`.

    With ``stack = S`` (see :mod:`slabbench.layers.stacked`) every parameter and buffer has a
    leading run dimension S; shapes below are then per run."""

    stack = 0

    def _setup(self, plain: nn.Module, granularity: str, mode: str, phi_init: float, rho_init: float, tau: float,
               lrt_forward: bool = False, bias_prior: str = "none", prior_logit: float | None = None) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
        if mode not in MODES:
            raise ValueError(f"unknown phi_update {mode!r}; valid: {', '.join(MODES)}")
        if bias_prior not in BIAS_PRIORS:
            raise ValueError(f"unknown bias_prior {bias_prior!r}; valid: {', '.join(BIAS_PRIORS)}")
        w = plain.weight.detach()
        if lrt_forward and mode == "gumbel":
            raise ValueError("lrt_forward needs phi_update closed_form or lrt (gumbel samples its gates)")
        self.granularity, self.mode, self.tau = granularity, mode, tau
        self.lrt_forward = lrt_forward or mode == "lrt"
        self.bma = False
        #: during a masked model average only: 0/1 per bias, the biases of units the mask dropped
        #: (:meth:`natural_bias_mask`); a sampled bias is multiplied by it
        self.bias_keep: torch.Tensor | None = None
        self.mu = nn.Parameter(w.clone())
        self.rho = nn.Parameter(torch.full_like(w, rho_init))
        self.bias = nn.Parameter(plain.bias.detach().clone()) if plain.bias is not None else None
        shape = {"edge": w.shape, "node": w.shape[:1], "input": w.shape[1:2]}[granularity]
        theta = torch.full(shape, logit(phi_init), dtype=w.dtype)
        if mode == "closed_form":
            self.register_buffer("theta", theta)
        else:
            self.theta = nn.Parameter(theta)
        self.register_buffer("weight_mask", torch.ones_like(w))
        self._gate_cache = None  # closed_form: φ and the KL's constant part, see _fixed_gate
        # load_state_dict writes θ in place: the cached tensors follow it at once, in place
        self.register_load_state_dict_post_hook(_refresh_after_load)
        # a layer without bias has no bias prior to hold
        self.bias_prior = bias_prior if self.bias is not None else "none"
        if self.bias_prior == "spike_slab":
            self.bias_rho = nn.Parameter(torch.full_like(self.bias, rho_init))
            if granularity != "node":  # node gates: the bias shares its unit's γ (θ)
                bias_theta = torch.full_like(self.bias, logit(phi_init))
                if mode == "closed_form":
                    self.register_buffer("bias_theta", bias_theta)
                else:
                    self.bias_theta = nn.Parameter(bias_theta)
        if prior_logit is not None:  # the run's own logit λ: () here, (S,) once stacked
            self.register_buffer("prior_logit", torch.tensor(float(prior_logit), dtype=w.dtype))

    def restack(self, stack: int) -> None:
        """Called when the layer's tensors gain (``stack = S``) or lose (0) the run dimension."""
        self.stack = stack
        self._gate_cache = None

    @property
    def _gate_view(self) -> tuple[int, ...]:
        """View that broadcasts a gate-shaped tensor to the weight's shape."""
        shape = tuple(self.mu.shape)
        lead, nd = shape[:1] if self.stack else (), len(shape) - (1 if self.stack else 0)
        return {"edge": shape, "node": lead + (-1,) + (1,) * (nd - 1),
                "input": lead + (1, -1) + (1,) * (nd - 2)}[self.granularity]

    # -- derived quantities (shapes: gate shape unless noted) --------------------------
    @property
    def sigma(self) -> torch.Tensor:
        """σ = softplus(ρ), weight shape."""
        return F.softplus(self.rho)

    @property
    def bias_sigma(self) -> torch.Tensor:
        """σ_b = softplus(ρ_b) of the biases' slab (``bias_prior: spike_slab``), bias shape."""
        return F.softplus(self.bias_rho)

    @staticmethod
    def _update_term(mu: torch.Tensor, sigma: torch.Tensor, sigma0: float) -> torch.Tensor:
        """log(σ/σ0) + μ²/(2σ²) per coefficient, the closed-form update's term (σ floored at 1e-12)."""
        sigma = sigma.clamp_min(1e-12)
        return torch.log(sigma / sigma0) + mu ** 2 / (2 * sigma ** 2)

    @property
    def phi(self) -> torch.Tensor:
        """Posterior inclusion probabilities φ = sigmoid(θ), gate shape."""
        return torch.sigmoid(self.theta)

    def expand(self, g: torch.Tensor) -> torch.Tensor:
        """Broadcast a gate-shaped tensor to the weight's shape."""
        return g.reshape(self._gate_view).expand_as(self.mu)

    def group_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a weight-shaped tensor over each gate's group -> gate shape."""
        if self.granularity == "edge":
            return t
        d = 1 if self.stack else 0  # the run dimension, if any, stays
        if self.granularity == "node":
            return t.flatten(d + 1).sum(d + 1)
        return t.transpose(d, d + 1).flatten(d + 1).sum(d + 1)

    def node_pip(self) -> torch.Tensor:
        """P(output unit has at least one included incoming weight), shape (out,).
        Edge / input gates: 1 − Π_j (1 − φ_j) over the unit's weights; node gates: φ."""
        if self.granularity == "node":
            return self.phi
        log1m = F.logsigmoid(-self.expand(self.theta))
        return -torch.expm1(log1m.flatten(1).sum(1))

    def input_pip(self) -> torch.Tensor:
        """P(input unit / channel feeds at least one included weight), shape (in,)."""
        if self.granularity == "input":
            return self.phi
        if self.granularity == "node":  # all inputs share the node gates
            p = -torch.expm1(F.logsigmoid(-self.theta).sum())
            return p.expand(self.mu.shape[1])
        log1m = F.logsigmoid(-self.theta)
        return -torch.expm1(log1m.transpose(0, 1).flatten(1).sum(1))

    def bias_pip(self) -> torch.Tensor | None:
        """PIP of each bias (out,) under ``bias_prior: spike_slab`` (node gates: the unit's φ),
        else ``None``."""
        if self.bias_prior == "none":
            return None
        return torch.sigmoid(self._bias_gate)

    def natural_bias_mask(self) -> torch.Tensor | None:
        """Under node gates, 0/1 per bias (out,): kept iff its unit's θ > 0 (PIP > 0.5), since the
        unit's γ covers its incoming weights and its bias, so a dropped unit goes with its bias;
        else None (a bias with a γ of its own, ``bias_prior: spike_slab``, is never masked: the
        suite prunes weights, and units through their weights)."""
        if self.bias is None or self.granularity != "node":
            return None
        return (self.theta > 0).float()

    @property
    def _bias_gate(self) -> torch.Tensor:
        """θ of each bias's indicator, (out,): its own, or its unit's under node gates."""
        return self.theta if self.granularity == "node" else self.bias_theta

    # -- KL and the closed-form update --------------------------------------------------
    def _prior(self, logit_lam: float | None) -> float | torch.Tensor:
        """The logit λ the KL and the update use: ``logit_lam`` itself (one float for every
        run), or for ``None`` the layer's own ``prior_logit`` buffer (shape () or, stacked, (S,):
        one value per run)."""
        if logit_lam is not None:
            return logit_lam
        lam = self._buffers.get("prior_logit")
        if lam is None:
            raise ValueError(f"{type(self).__name__}: logit_lam None asks for the layer's own prior (prior_logit), "
                             f"but it was built without one; pass a float logit λ or build it with prior_logit")
        return lam

    @staticmethod
    def _per_run(lam: float | torch.Tensor, t: torch.Tensor) -> float | torch.Tensor:
        """``lam`` shaped to broadcast against ``t``: a float as it is; a per-run tensor (S,)
        as (S, 1, ..., 1) against a stacked ``t`` (S, ...), a 0-dim one as it is."""
        if not torch.is_tensor(lam) or lam.dim() == 0:
            return lam
        return lam.reshape((-1,) + (1,) * (t.dim() - 1))

    def _gate_kl(self, logit_lam: float | torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_g [φ log(φ/λ) + (1−φ) log((1−φ)/(1−λ))], computed stably from θ (default: the
        weights' gates), summed over runs; ``logit_lam`` a float or per run ((S,), see
        :meth:`_prior`)."""
        theta = self.theta if theta is None else theta
        phi = torch.sigmoid(theta)
        if torch.is_tensor(logit_lam):
            lam = self._per_run(logit_lam, theta)
            log_lam, log1m_lam = F.logsigmoid(lam), F.logsigmoid(-lam)
        else:
            log_lam, log1m_lam = -math.log1p(math.exp(-logit_lam)), -math.log1p(math.exp(logit_lam))
        return (phi * (F.logsigmoid(theta) - log_lam) + (1 - phi) * (F.logsigmoid(-theta) - log1m_lam)).sum()

    @torch.no_grad()
    def _fixed_gate(self, logit_lam: float | torch.Tensor | None = None, sigma0: float | None = None):
        """``closed_form``: θ is a buffer that changes only at an update, so everything that
        depends on θ alone is computed once per update instead of every step: φ (gate shape),
        φ broadcast to the weight (contiguous) and, per (λ, σ0), the KL's constant part
        Σ_g [φ log(φ/λ) + (1−φ) log((1−φ)/(1−λ))] + (log σ0 − ½) Σ_i φ_i (0-dim, summed over runs).
        The cache is keyed on the θ tensor itself and its version counter (an in-place write
        such as ``closed_form_update`` or ``load_state_dict`` bumps it; ``.to()`` makes a new
        tensor), so a stale φ is never used.  A per-run λ (the ``prior_logit`` buffer, from
        :meth:`_prior`, always the layer's own ``prior_logit`` buffer) keys the constants by that
        name: it is written only where θ is too (``load_state_dict``), and a new one (``.to()``,
        stacking, cutting a stack) comes with a new θ or a reset cache.  Traced by torch.compile, the version counter is
        not consulted (Dynamo cannot guard on it): the cache is taken as current, which it is,
        since every write of θ outside a step refreshes it in place (``closed_form_update``, the
        ``load_state_dict`` hook) and a step never writes θ.  Returns (φ, φ_w, const or None)."""
        c = self._gate_cache
        if c is None or c[0] is not self.theta or (not torch.compiler.is_compiling() and c[1] != self.theta._version):
            phi = self.phi
            c = self._gate_cache = (self.theta, self.theta._version, phi, self.expand(phi).contiguous(), {})
        consts = c[4]
        if logit_lam is None:
            return c[2], c[3], None
        # the per-run λ is always the layer's own prior_logit buffer (see _prior): keyed by name
        key = (_OWN_PRIOR if torch.is_tensor(logit_lam) else logit_lam, sigma0)
        if key not in consts:
            consts[key] = self._gate_kl(logit_lam) + (math.log(sigma0) - 0.5) * c[3].sum()
        return c[2], c[3], consts[key]

    def kl(self, logit_lam: float | None, sigma0: float) -> torch.Tensor:
        """KL(q ‖ p) in nats for this layer (exact; the spike cancels), docs/science.md §1:
        Σ_g [φ log(φ/λ) + (1−φ) log((1−φ)/(1−λ))] + Σ_g φ_g Σ_{i∈g} [log(σ0/σ_i) + (σ_i² + μ_i²)/(2σ0²) − ½].
        0-dim, summed over the runs of a stacked layer.  ``logit_lam``: logit λ, one float for
        every run, or ``None`` for the layer's own ``prior_logit`` (per run, see :meth:`_prior`).

        Computed by the fused functions of :mod:`spike_slab_ops` (hand-written backward).
        Under ``closed_form`` θ is a constant between updates, so the gate term and the
        slab's constant part come from :meth:`_fixed_gate` (same value, fewer operations).
        With ``bias_prior: spike_slab`` the biases' terms are added (:meth:`_bias_kl`).
        """
        logit_lam = self._prior(logit_lam)
        if self.mode == "closed_form":
            _, phi_w, const = self._fixed_gate(logit_lam, sigma0)
            kl = const + ops.slab_kl_fixed_gate(self.mu, self.rho, phi_w, sigma0)
        else:
            kl = ops.spike_slab_kl(self.mu, self.rho, self.theta, self._gate_view, self._per_run(logit_lam, self.theta),
                                   sigma0)
        return kl if self.bias_prior == "none" else kl + self._bias_kl(logit_lam, sigma0)

    def _bias_kl(self, logit_lam: float | torch.Tensor, sigma0: float) -> torch.Tensor:
        """The biases' part of the KL, nats (plain autograd: (out,)-sized tensors):
        Σ_j φ_j [log(σ0/σ_j) + (σ_j² + μ_j²)/(2σ0²) − ½] over biases j with slab (μ_j, σ_j) and
        inclusion probability φ_j, plus their gate terms Σ_j [φ_j log(φ_j/λ) + (1−φ_j)
        log((1−φ_j)/(1−λ))] when each bias has its own gate (under node gates the unit's gate
        term is already in the weights' part).  ``logit_lam``: a float or per run ((S,))."""
        s = self.bias_sigma
        slab = (s * s + self.bias * self.bias) * (0.5 / sigma0 ** 2) - torch.log(s) + (math.log(sigma0) - 0.5)
        kl = (torch.sigmoid(self._bias_gate) * slab).sum()
        return kl if self.granularity == "node" else kl + self._gate_kl(logit_lam, self.bias_theta)

    @torch.no_grad()
    def closed_form_update(self, logit_lam: float | None, sigma0: float, step: float = 1.0) -> None:
        """θ ← logit λ + Σ_{i∈g} [log(σ_i/σ0) + μ_i²/(2σ_i²)]  (docs/science.md §1; the group
        form sums the per-weight terms).  ``logit_lam``: one float for every run, or ``None``
        for the layer's own ``prior_logit`` (per run: run s's θ gets run s's logit λ).  With ``step`` < 1 (ours) θ moves that fraction of the
        way: θ ← θ + step (θ* − θ), θ* the value above: the damped step of stochastic
        variational inference on the Bernoulli's natural parameter θ = logit φ.

        Also the stationary point of the objective trained under KL warm-up, NLL + β KL
        (β ≤ 1): in φ it is logit φ = logit λ − KL_slab + (A − B)/β, and with the log-likelihood
        quadratic in w_i (gradient g, curvature h) the slab trained on the same objective sits
        at σ² = β/(h + β/σ0²), μ = g/(h + β/σ0²), where (A − B)/β − KL_slab reduces to
        log(σ/σ0) + μ²/(2σ²) for every β: β acts through σ, not as a factor here (docs/methods.md,
        "KL warm-up and the closed-form update")."""
        lam = self._prior(logit_lam)
        theta = self._per_run(lam, self.theta) + self.group_sum(self._update_term(self.mu, self.sigma, sigma0))
        if self.bias_prior == "spike_slab":  # the same update for each bias (Bai et al.'s prior)
            term_b = self._update_term(self.bias, self.bias_sigma, sigma0)
            if self.granularity == "node":  # one γ for the unit's weights and bias: the group sum
                theta = theta + term_b
            else:
                self.bias_theta.lerp_(self._per_run(lam, term_b) + term_b, step)
        self.theta.lerp_(theta, step)  # step 1: θ* itself
        self._refresh_gate_cache()

    @torch.no_grad()
    def _refresh_gate_cache(self) -> None:
        """After an in-place change of θ: the tensors that :meth:`_fixed_gate` caches are
        rewritten in place, not replaced, so whatever holds them (a captured CUDA graph replays
        reads of these very tensors) sees the new φ; the values are those a fresh computation
        gives, bit for bit."""
        c = self._gate_cache
        if c is None or c[0] is not self.theta:
            self._gate_cache = None
            return
        phi = self.phi
        c[2].copy_(phi)
        c[3].copy_(self.expand(phi))
        for (logit_lam, sigma0), const in c[4].items():
            lam = self._prior(None) if logit_lam == _OWN_PRIOR else logit_lam
            const.copy_(self._gate_kl(lam) + (math.log(sigma0) - 0.5) * c[3].sum())
        self._gate_cache = (self.theta, self.theta._version, *c[2:])

    # -- forward ------------------------------------------------------------------------
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _out_view(self, g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Broadcast an (out,)-shaped tensor over a layer output (B, out, ...); stacked:
        (S, out) over (S, B, out)."""
        if self.stack:
            return g.reshape((self.stack, 1, -1) + (1,) * (out.dim() - 3))
        return g.reshape((1, -1) + (1,) * (out.dim() - 2))

    def _gate_sample(self, theta: torch.Tensor) -> torch.Tensor:
        """Gates of ``theta``'s shape: in gumbel training a straight-through hard binary-concrete
        sample at temperature τ (carries a gradient to θ), else z ~ Bernoulli(sigmoid(θ)) (none)."""
        u = stacked.rand_like(theta, self.stack)
        if self.training and self.mode == "gumbel":
            # (u kept off 0 and 1 so that the logs stay finite; Bai et al. add 1e-20 inside the logs
            # instead.  It matters only where |θ| > 13.8: such a gate is then always on (off)
            # instead of flipping with probability below 1e-6.)
            u = u.clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((theta + torch.log(u) - torch.log1p(-u)) / self.tau)
            hard = (soft > 0.5).to(soft.dtype)
            return hard + soft - soft.detach()
        return torch.lt(u, torch.sigmoid(theta.detach()), out=u)

    def _sampled_bias(self, z_node: torch.Tensor | None) -> torch.Tensor:
        """``bias_prior: spike_slab``: biases drawn from q, b = z (μ_b + σ_b ε), z the unit's
        gate under node granularity (``z_node``), else each bias's own."""
        b = torch.addcmul(self.bias, self.bias_sigma, stacked.randn_like(self.bias, self.stack))
        return b * (z_node if self.granularity == "node" else self._gate_sample(self.bias_theta))

    def _sampled(self, x: torch.Tensor) -> torch.Tensor:
        """One network drawn from q: z ~ Bernoulli(φ) (gumbel in training: a straight-through
        binary-concrete sample), w = z (μ + σ ε) masked; biases with a prior likewise."""
        b = self.bias
        if self.training and self.mode == "gumbel":  # z carries a gradient to θ: plain autograd
            z = self._gate_sample(self.theta)  # straight-through
            w = self.expand(z) * (self.mu + self.sigma * stacked.randn_like(self.mu, self.stack)) * self.weight_mask
        else:
            # closed_form: φ cached per update; the weight and its gradient by the fused function.
            phi = self._fixed_gate()[0] if self.mode == "closed_form" else self.phi.detach()
            # z ~ Bernoulli(φ) drawn as 1[u < φ], u ~ U[0, 1): torch.bernoulli does exactly this
            # on CPU (bit-identical gates and generator state for a seed, checked in
            # tests/test_spike_slab_ops.py), but its per-element kernel takes about twice as long
            # as rand_like + lt (~2 ms a step for LeNet-300-100 on one CPU thread).  On CUDA both
            # are Bernoulli(φ) draws from torch's generator (bit-equality there not checked).
            u = stacked.rand_like(phi, self.stack)
            z = torch.lt(u, phi, out=u)  # in place: 0./1. in φ's dtype
            zm = z.mul_(self.weight_mask) if self.granularity == "edge" else self.expand(z) * self.weight_mask
            w = ops.SampledWeight.apply(self.mu, self.rho, zm, stacked.randn_like(self.mu, self.stack))
        if self.bias_prior == "spike_slab":
            b = self._sampled_bias(z if self.granularity == "node" else None)
        elif b is not None and self.granularity == "node":
            b = b * z
        if self.bias_keep is not None:
            b = b * self.bias_keep
        return self._op(x, w, b)

    def lrt_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the pre-activation under q, per output (B, out, ...).

        Edge / input gates (independent per weight): E[w] = φμ, Var[w] = φ(σ² + μ²) − φ²μ²,
        mean = x·E[w] + b, var = x²·Var[w].  Node gates (one γ per output, bias included):
        with m = x·μ + b and v = x²·σ², mean = φm, var = φ(v + m²) − φ²m².
        The variances are evaluated as Var[w] = φσ² + E[w](μ − E[w]) = φσ² + φ(1 − φ)μ² and
        var = φv + φ(1 − φ)m²: the same values, as sums of non-negative terms (no cancellation,
        never negative in floating point either).
        A bias with a prior adds like one more weight with input 1: its own gate adds E[b] =
        φ_b μ_b to the mean and Var[b] = φ_b σ_b² + φ_b(1 − φ_b)μ_b² to the variance; under node
        gates it adds μ_b to m and σ_b² to v.
        """
        x2 = x * x
        bias_var = None if self.bias_prior == "none" else self.bias_sigma ** 2
        if self.granularity == "node":
            m = self._op(x, self.mu * self.weight_mask, self.bias)
            v = self._op(x2, self.sigma ** 2 * self.weight_mask, bias_var)
            phi = self._out_view(self.phi, m)
            return phi * m, torch.addcmul(phi * v, phi - phi * phi, m * m)
        # E[w], Var[w] and their gradients in one fused function
        e, var_w = ops.lrt_weights(self.mu, self.rho, self.theta, self.weight_mask, self._gate_view)
        bias_mean = self.bias
        if bias_var is not None:
            phi_b = torch.sigmoid(self.bias_theta)
            bias_mean = phi_b * self.bias
            bias_var = torch.addcmul(phi_b * bias_var, bias_mean, self.bias - bias_mean)
        return self._op(x, e, bias_mean), self._op(x2, var_w, bias_var)

    def _lrt(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.lrt_moments(x)
        return ops.lrt_noise(mean, var, stacked.randn_like(mean, self.stack), LRT_EPS)

    def mean_weight(self, kind: str = "posterior") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Deterministic weight and bias: ``posterior`` E[w] = φμ (bias φ_node b under node
        gates, φ_b μ_b with a bias prior), or ``slab`` E[w | γ = 1] = μ."""
        if kind == "slab":
            return self.mu, self.bias
        phi = self.phi
        b = self.bias
        if self.bias_prior == "spike_slab":
            b = self.bias_pip() * b
        elif b is not None and self.granularity == "node":
            b = phi * b
        return self.expand(phi) * self.mu, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._lrt(x) if self.lrt_forward else self._sampled(x)
        if self.bma:
            return self._sampled(x)
        w, b = self.mean_weight()
        return self._op(x, w * self.weight_mask, b)


class SpikeSlabLinear(_SpikeSlab):
    handles_run_dim = True

    def __init__(self, plain: nn.Linear, granularity: str = "edge", mode: str = "closed_form",
                 phi_init: float = 0.99, rho_init: float = -6.0, tau: float = 0.5, lrt_forward: bool = False,
                 bias_prior: str = "none", prior_logit: float | None = None):
        super().__init__()
        self.in_features, self.out_features = plain.in_features, plain.out_features
        self._setup(plain, granularity, mode, phi_init, rho_init, tau, lrt_forward, bias_prior, prior_logit)

    def _op(self, x, w, b):
        return stacked.linear(x, w, b, self.stack)

    def to_plain(self, kind: str = "posterior") -> MaskedLinear:
        w, b = self.mean_weight(kind)
        return make_plain(MaskedLinear, self.in_features, self.out_features, weight=w, bias=b)


class SpikeSlabConv2d(_SpikeSlab):
    handles_run_dim = True

    def __init__(self, plain: nn.Conv2d, granularity: str = "edge", mode: str = "closed_form",
                 phi_init: float = 0.99, rho_init: float = -6.0, tau: float = 0.5, lrt_forward: bool = False,
                 bias_prior: str = "none", prior_logit: float | None = None):
        super().__init__()
        self.conv_args = dict(in_channels=plain.in_channels, out_channels=plain.out_channels, kernel_size=plain.kernel_size,
                              stride=plain.stride, padding=plain.padding, dilation=plain.dilation, groups=plain.groups)
        if plain.groups != 1:
            raise ValueError("spike-and-slab Conv2d supports groups=1 only")
        self._setup(plain, granularity, mode, phi_init, rho_init, tau, lrt_forward, bias_prior, prior_logit)

    def _op(self, x, w, b):
        a = self.conv_args
        return stacked.conv2d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"], self.stack)

    def to_plain(self, kind: str = "posterior") -> MaskedConv2d:
        w, b = self.mean_weight(kind)
        return make_plain(MaskedConv2d, weight=w, bias=b, **self.conv_args)


SPIKE_SLAB_LAYERS = (SpikeSlabLinear, SpikeSlabConv2d)


def from_plain(layer: nn.Module, **kw) -> _SpikeSlab:
    """The spike-and-slab counterpart of a plain masked layer (μ initialised from its weight)."""
    if isinstance(layer, nn.Conv2d):
        return SpikeSlabConv2d(layer, **kw)
    return SpikeSlabLinear(layer, **kw)
