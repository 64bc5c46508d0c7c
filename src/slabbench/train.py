"""The core training and evaluation of runs: (experiment, method, seeds) -> records per seed.

For the seeds of one experiment x method the core loads each seed's data once onto the device,
builds one architecture per seed (and per target, for methods that train per target), lets the
method build its training-time model and trains every run with

    loss = mean NLL over the minibatch + beta(epoch) * penalty / N_train

then, on each run's exported network, for every sparsity target ``s``: scores -> global top-k
mask -> optional fine-tune -> evaluate; plus the method's natural selection.  Metrics are
always measured here, on the exported (plain, masked) network.

Runs that stack (:mod:`slabbench.stack`) train as one model with a leading run dimension, and
so do their fine-tunings; the rest train one after another in the same process.  Either way
each run draws its initialisation, data order and noise from its own seed only, so its records
do not depend on which runs share its job.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from slabbench import metrics as M
from slabbench import physical
from slabbench.api import Method, TrainContext, make_params
from slabbench.config import method_plugin, run_option_error
from slabbench.engine import StepGraphs, state_entries
from slabbench.layers.stacked import run_generators, shared_input
from slabbench.models import build_model
from slabbench.outputs import check_mask, check_scores
from slabbench.prune import apply_masks, topk_masks
from slabbench.provenance import provenance
from slabbench.registry import dataset_class, method_class
from slabbench.stack import (declares_stackable, run_views, select_runs, stack_modules, stacked_runs, unstack,
                             unstackable_modules)

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use device: auto or cpu")
    return torch.device(device)


def set_threads(threads: int) -> None:
    """Torch's intra-op thread count follows the job's ``threads``."""
    torch.set_num_threads(max(1, int(threads)))
    try:
        torch.set_num_interop_threads(max(1, int(threads)))
    except RuntimeError:  # already set in this process
        pass


class TrainingDiverged(RuntimeError):
    """A run's training loss or parameters became NaN or infinite."""


@dataclass
class Member:
    """One training run inside a job: its label (for messages), seed, (per-target training)
    target and start (restarts), its method instance and, once built, its model."""

    label: str
    seed: int
    target: float | None
    method: Method
    model: nn.Module | None = None
    diverged: str | None = None  #: why the run diverged ("epoch 3: loss nan"), if it did
    start: int = 0  #: which of the run's starts (restarts) this is
    stack_runs: int = 1  #: how many runs trained in its stack
    noise: int | None = None  #: seed of its noise generator; None = noise_seed(seed)
    screen_objective: float | None = None  #: restarts' screening: its training objective then (None: diverged)
    screened_out: bool = False  #: restarts' screening: it stopped there (its model is its state then)

    @property
    def noise_seed(self) -> int:
        return noise_seed(self.seed) if self.noise is None else self.noise


def _nll_per_run(out: torch.Tensor, y: torch.Tensor, task: str, noise_sd: float) -> torch.Tensor:
    """Mean NLL per run (S,) of stacked outputs ``out`` (S, B, C or 1) against ``y`` (S, B)."""
    s, b = y.shape
    if task == "classification":
        return torch.nn.functional.cross_entropy(out.reshape(s * b, -1), y.reshape(-1), reduction="none").view(s, b).mean(1)
    return M.gaussian_nll(out.squeeze(-1), y, noise_sd).mean(1)


def _divergence_advice(lr: float) -> str:
    return (f"Lower the learning rate (lr = {lr:g}), shorten a warm-up or check the method's options; set "
            f"on_divergence: record in the config to keep the other runs and report this one as diverged.")


def _check_finite(members: Sequence[Member], nll_sums: torch.Tensor, params: list[torch.Tensor], epoch: int,
                  epochs: int, lr: float, stop: bool) -> None:
    """Once per epoch (one host synchronisation): every run's summed NLL and parameters must be
    finite.  A run that is not either stops the job (``stop``) or is marked diverged."""
    ok = torch.isfinite(nll_sums)
    for p in params:
        ok = ok & torch.isfinite(p.detach().flatten(1)).all(1)
    if bool(ok.all()):
        return
    for member, fine, value in zip(members, ok.tolist(), nll_sums.tolist()):
        if fine or member.diverged:
            continue
        member.diverged = f"epoch {epoch + 1}/{epochs}: summed training NLL {value}"
        msg = (f"{member.label}: training diverged at epoch {epoch + 1} of {epochs} (summed NLL of the epoch "
               f"{value}, or a parameter became NaN/inf). {_divergence_advice(lr)}")
        if stop:
            raise TrainingDiverged(msg)
        log.warning(msg)


def _batches(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]):
    """One data tensor for every run: shared when all runs use the same tensors (fixed
    splits), else concatenated with per-run row offsets (simulation replicates)."""
    if all(x is xs[0] for x in xs) and all(y is ys[0] for y in ys):
        return xs[0], ys[0], torch.zeros(len(xs), dtype=torch.long)
    n = len(ys[0])
    if any(len(y) != n for y in ys):
        raise ValueError(f"runs of one stack need training sets of one size, got {[len(y) for y in ys]}")
    return torch.cat(list(xs)), torch.cat(list(ys)), torch.arange(len(xs)) * n


#: whether runs that share their batches (restarts' starts, a seed's fine-tunings) gather them
#: once and run their first linear layer as one matmul per group (``False``: one per run, as
#: every other stack; the same numbers up to rounding; benchmarks/stacking.py --starts compares)
SHARE_INPUTS = True


def _data_groups(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], data_gens: Sequence[torch.Generator]) -> list[int]:
    """Group id of each run: consecutive runs with the same training tensors and equal data
    generators (the starts of one run, the fine-tunings of one seed's targets) share one."""
    ids = [0]
    for i in range(1, len(xs)):
        same = (xs[i] is xs[i - 1] and ys[i] is ys[i - 1]
                and torch.equal(data_gens[i].get_state(), data_gens[i - 1].get_state()))
        ids.append(ids[-1] if same else ids[-1] + 1)
    return ids


def _group_size(group_of: Sequence[int]) -> int:
    """K when the groups are consecutive runs of one size K, else 1 (no input sharing)."""
    sizes = {group_of.count(g) for g in set(group_of)}
    return sizes.pop() if len(sizes) == 1 else 1


def _select(obj: Any, idx: torch.Tensor, runs: int) -> Any:
    """``obj`` (a tensor, or a list / tuple / dict of them) with every tensor whose leading
    dimension is ``runs`` cut to the rows ``idx``; anything else as it is."""
    if torch.is_tensor(obj):
        return obj.index_select(0, idx.to(obj.device)) if obj.dim() > 0 and obj.shape[0] == runs else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_select(v, idx, runs) for v in obj)
    if isinstance(obj, dict):
        return {k: _select(v, idx, runs) for k, v in obj.items()}
    return obj


#: screen(model, members) -> positions of the runs that train on, called once after the
#: screening epoch (restarts' successive halving, see :func:`fit_stacked`)
Screen = tuple[int, Callable[[nn.Module, Sequence["Member"]], Sequence[int]]]


def fit_stacked(model: nn.Module, members: Sequence[Member], xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], *,
                epochs: int, batch_size: int, lr: float, task: str, noise_sd: float,
                data_gens: Sequence[torch.Generator], noise_gens: Sequence[torch.Generator],
                stop_on_divergence: bool = True, screen: Screen | None = None, graphs: bool = False) -> list[int]:
    """Train ``model`` with the core's loss convention: the sum over its runs of
    [mean NLL_s + beta * penalty_s / N].  ``model`` is stacked (S runs, see
    :mod:`slabbench.stack`) or an ordinary model (one run, S = 1, noise from torch's global
    generator).  Run ``s`` sees its own data ``xs[s]``, ``ys[s]`` in the order drawn from
    ``data_gens[s]`` and its layers' noise from ``noise_gens[s]``.  The method's hooks are called
    once on the model when it is ordinary or the method's class declares ``stackable = True``,
    else ``after_step`` / ``after_epoch`` once per run on views of the run's slice (its own
    method instance, e.g. its own target).  NaN / inf is checked once per epoch.

    ``screen = (epoch, choose)`` (stacked models only): after that many epochs, ``choose(model,
    members)`` names the runs that train on and the stack is cut to them in place: every
    parameter and buffer (:func:`slabbench.stack.select_runs`), the optimizer's state and any
    tensor of the stackable method's instance with the run dimension (e.g. l0's parameter
    averages); the others stop there.  Returns the positions (in ``members``) of the runs the
    model holds at the end.

    ``graphs`` (CUDA): each kind of step is captured once as a CUDA graph and replayed
    (:mod:`slabbench.engine`); β and the learning rates then live in device tensors and Adam is
    made capturable.  Eager otherwise, and wherever capture is not possible (the log says why)."""
    lead = members[0].method
    opt = lead.optimizer(model, lr)
    base_lrs = [g["lr"] for g in opt.param_groups]  # lr_factor scales these (one value for the stack)
    device = next(model.parameters()).device
    step_graphs = None
    if _use_graphs(graphs, device):
        opt, why = _capturable(opt, device)
        if why is None:
            # each graph writes gradients of its own (captured with none there): hooks read that
            # graph's, so .grad is pointed at them around every replay
            step_graphs = StepGraphs(lambda key: body(idx_bufs[key[0]], beta_t, key[1], False),
                                     state=lambda: state_entries(model, opt, lead), generators=noise_gens,
                                     label=members[0].label.split(" seed=")[0], backend=GRAPH_BACKEND,
                                     prepare=lambda key: opt.zero_grad(set_to_none=True),
                                     before_replay=lambda key: _point_grads(grads_of.get(key, ())),
                                     after_replay=lambda key: key in grads_of or grads_of.__setitem__(
                                         key, [(q, q.grad) for q in model.parameters()]))
        else:
            log.info("%s: CUDA graphs off: %s", members[0].label, why)
    beta_t = torch.zeros((), device=device) if step_graphs is not None else None
    idx_bufs: dict[int, torch.Tensor] = {}  # minibatch size -> the index buffer a graph reads
    grads_of: dict = {}  # step kind -> (parameter, the gradient its graph writes)
    stacked = stacked_runs(model) > 0
    forward = model if stacked else (lambda xb: model(xb[0]).unsqueeze(0))
    cls = type(lead)
    # hooks once per run (on views, with their run's gradients) only where they could tell runs
    # apart: a method that does not declare stackable and overrides a per-step hook (e.g.
    # magnitude's gradual schedule, a plugin that reads gradients)
    per_run_hooks = stacked and not declares_stackable(cls) and (
        cls.after_step is not Method.after_step or cls.after_epoch is not Method.after_epoch)
    views = run_views(model) if per_run_hooks else None
    x_all, y_all, offsets = _batches(xs, ys)
    n, s_runs = len(ys[0]), len(members)
    params = [p if stacked else p[None] for p in model.parameters()]  # leading run dimension
    # one buffer for every minibatch gather: a fresh (S·B, ...) tensor per step is, at S = 300
    # runs of the paper simulation, 120 MB that the allocator maps and unmaps every step (a
    # third of the CPU time went to the kernel); the graph that reads a batch is freed by
    # backward() before the next gather overwrites it
    x_buf = x_all.new_empty((s_runs * min(batch_size, n), *x_all.shape[1:]))
    # runs that see the same rows (restarts' starts): gathered once per group, and the stacked
    # linear layers fed the batch run one matmul per group (layers.stacked.shared_input)
    group_of = _data_groups(xs, ys, data_gens) if SHARE_INPUTS and stacked else list(range(s_runs))
    order_gens = [data_gens[group_of.index(g)] for g in range(group_of[-1] + 1)]  # one data order per group
    per_group = _group_size(group_of)
    xu_buf = x_all.new_empty((len(order_gens) * min(batch_size, n), *x_all.shape[1:])) if per_group > 1 else None
    members, noise_gens, kept = list(members), list(noise_gens), list(range(s_runs))
    if screen is not None and not stacked:
        raise ValueError("fit_stacked: screening needs a stacked model")
    hooked = per_run_hooks or cls.after_step is not Method.after_step or cls.after_epoch is not Method.after_epoch
    nll_sums = torch.zeros(s_runs, device=x_all.device)

    def body(idx: torch.Tensor, beta, with_penalty: bool, set_to_none: bool) -> None:
        """One step on the minibatch rows ``idx`` (groups x B): gather, forward, loss, backward,
        optimizer step; adds each run's mean NLL to ``nll_sums``.  Reads only ``idx``, ``beta``
        (a number, or a device tensor under graphs) and tensors that stay in place."""
        flat, b = idx.reshape(-1), idx.shape[1]
        # index_select, not x[idx]: the same rows, but advanced indexing's general kernel
        # takes ~6x longer on CPU (0.19 vs 0.03 ms for 500 x 200 floats)
        if per_group > 1:
            xu = torch.index_select(x_all, 0, flat, out=xu_buf[:flat.numel()]).view(-1, b, *x_all.shape[1:])
            xb = x_buf[:s_runs * b].view(xu.shape[0], per_group, *xu.shape[1:])
            xb.copy_(xu.unsqueeze(1).expand_as(xb))
            xb = xb.view(s_runs, *xu.shape[1:])
            yb = y_all.index_select(0, flat).view(-1, 1, b).expand(-1, per_group, b).reshape(s_runs, b)
            with run_generators(noise_gens), shared_input(xb, xu):
                out = forward(xb)
        else:
            xb = torch.index_select(x_all, 0, flat, out=x_buf[:flat.numel()]).view(s_runs, b, *x_all.shape[1:])
            yb = y_all.index_select(0, flat).view(s_runs, b)
            with run_generators(noise_gens):
                out = forward(xb)
        nll = _nll_per_run(out, yb, task, noise_sd)
        loss = nll.sum()
        if with_penalty:  # not while beta = 0 (a KL warm-up's first epochs)
            penalty = lead.penalty(model)
            if penalty is not None:
                loss = loss + beta * penalty / n
        opt.zero_grad(set_to_none=set_to_none)
        loss.backward()
        opt.step()
        nll_sums.add_(nll.detach())

    model.train()
    step = 0
    for epoch in range(epochs):
        beta = lead.beta(epoch)
        factor = lead.lr_factor(epoch)
        for group, base in zip(opt.param_groups, base_lrs):
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(base * factor)
            else:
                group["lr"] = base * factor
        if beta_t is not None:
            beta_t.fill_(beta)
        # one data order per group of runs that share it, drawn from the generator of its first
        # run (the others are equal and not drawn from)
        perm = torch.stack([torch.randperm(n, generator=g) for g in order_gens])
        perm = (perm + offsets[::per_group, None] if per_group > 1
                else perm[torch.tensor(group_of)] + offsets[:, None]).to(x_all.device)
        if nll_sums.shape[0] == s_runs:
            nll_sums.zero_()
        else:  # the stack was cut
            nll_sums = torch.zeros(s_runs, device=x_all.device)
        for start in range(0, n, batch_size):
            idx = perm[:, start:start + batch_size]
            if step_graphs is None:
                # per-run hooks read their run's slice of the gradients (views.share_grads): zeroed
                # in place, the gradient tensors stay the same and the slices are taken once
                body(idx, beta, beta != 0.0, not per_run_hooks)
            else:
                b = idx.shape[1]
                if b not in idx_bufs or idx_bufs[b].shape != idx.shape:
                    idx_bufs[b] = torch.empty_like(idx)
                idx_bufs[b].copy_(idx)
                step_graphs.run((b, beta != 0.0))
            if per_run_hooks:
                views.share_grads()
                for m, view in zip(members, views):
                    m.method.after_step(view, step, epoch)
            else:
                lead.after_step(model, step, epoch)
            if step_graphs is not None and hooked:
                step_graphs.check()
            step += 1
        if per_run_hooks:
            for m, view in zip(members, views):
                m.method.after_epoch(view, epoch)
        else:
            lead.after_epoch(model, epoch)
        if step_graphs is not None and hooked:
            step_graphs.check()
        _check_finite(members, nll_sums, params, epoch, epochs, lr, stop_on_divergence)
        if screen is not None and epoch + 1 == screen[0] and epoch + 1 < epochs:
            keep = sorted(set(screen[1](model, members)))
            if len(keep) < s_runs:
                idx = torch.tensor(keep, dtype=torch.long)
                renamed = select_runs(model, keep)
                state = {renamed[id(p)]: _select(dict(v), idx, s_runs) for p, v in opt.state.items()}
                for group in opt.param_groups:
                    group["params"] = [renamed[id(p)] for p in group["params"]]
                opt.state.clear()
                opt.state.update(state)
                if not per_run_hooks:  # the stack's one method instance: its per-run tensors
                    for key, value in vars(lead).items():
                        setattr(lead, key, _select(value, idx, s_runs))
                members, noise_gens, kept = [members[i] for i in keep], [noise_gens[i] for i in keep], [kept[i] for i in keep]
                offsets = offsets[idx]
                groups = sorted(set(group_of[i] for i in keep))
                order_gens = [order_gens[g] for g in groups]
                group_of = [groups.index(group_of[i]) for i in keep]
                per_group = _group_size(group_of)
                if per_group > 1 and xu_buf is None:  # the groups became equal (groups only shrink)
                    xu_buf = x_all.new_empty((len(order_gens) * min(batch_size, n), *x_all.shape[1:]))
                s_runs = len(keep)
                params = list(model.parameters())
                views = run_views(model) if per_run_hooks else None
                if step_graphs is not None:  # new tensors, fewer runs: every step kind is captured anew
                    step_graphs.invalidate()
                    step_graphs.generators = list(noise_gens)
                    idx_bufs.clear()
                    grads_of.clear()
    if step_graphs is not None:
        log.info("%s: %s", members[0].label.split(" seed=")[0], step_graphs.summary())
    model.eval()
    return kept


#: captures and replays the steps of ``graphs: true`` (None: :class:`slabbench.engine.CudaGraphs`,
#: CUDA only; tests set a stand-in that runs the captured function, to run the same code on a CPU)
GRAPH_BACKEND = None


def _use_graphs(requested: bool, device: torch.device) -> bool:
    return bool(requested) and (device.type == "cuda" or GRAPH_BACKEND is not None)


def _capturable(opt: torch.optim.Optimizer, device: torch.device) -> tuple[torch.optim.Optimizer, str | None]:
    """``opt`` rebuilt for capture: the same class, groups and settings, ``fused`` and
    ``capturable``, every learning rate a device tensor (so a schedule changes it in place).
    Returns (optimizer, None), or (``opt``, why not) for an optimizer other than Adam / AdamW."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW):
        return opt, f"its optimizer ({type(opt).__name__}) is not Adam or AdamW, whose fused kernels capture"
    if opt.state:
        return opt, "its optimizer has stepped already"
    groups = []
    for g in opt.param_groups:
        group = {k: v for k, v in g.items() if k not in ("fused", "capturable", "foreach", "differentiable")}
        group["lr"] = torch.tensor(float(g["lr"]), device=device)
        groups.append(group)
    return type(opt)(groups, fused=True, capturable=True), None


def _point_grads(pairs) -> None:
    """Each parameter's ``.grad`` is the tensor the graph just replayed writes (hooks read it)."""
    for p, g in pairs:
        if p.grad is not g:
            p.grad = g


def fit(model: nn.Module, method: Method, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int,
        lr: float, task: str, noise_sd: float, generator: torch.Generator, member: Member | None = None,
        stop_on_divergence: bool = True, graphs: bool = False) -> None:
    """Minibatch training of one ordinary (unstacked) model, see :func:`fit_stacked`; ``x``,
    ``y`` live on the model's device; shuffling draws from ``generator`` (CPU), noise from
    torch's global generator."""
    member = member or Member(label="run", seed=0, target=None, method=method)
    fit_stacked(model, [member], [x], [y], epochs=epochs, batch_size=batch_size, lr=lr, task=task, noise_sd=noise_sd,
                data_gens=[generator], noise_gens=[], stop_on_divergence=stop_on_divergence, graphs=graphs)


def evaluate(net: nn.Module, data: dict, spec, task: str, noise_sd: float) -> dict[str, Any]:
    """Structure and predictive metrics of a plain masked network."""
    out: dict[str, Any] = M.structure(net, spec.input_shape)
    for split in ("val", "test"):
        x, y = data[split]
        out.update(M.predictive_metrics(M.predict(net, x), y, task, noise_sd, prefix=split))
    if spec.true_support is not None:
        out.update(M.selection_errors(out["selected_features"], spec.true_support, spec.n_features))
    return out


def _bma_metrics(method: Method, model: nn.Module, masks, data, task: str, noise_sd: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        x, y = data[split]
        with torch.no_grad():
            pred = method.bma_predict(model, masks, x)
        if pred is None:
            return {}
        m = M.predictive_metrics(pred, y, task, noise_sd, prefix=split, probs=True)
        out.update({f"{k}_bma": v for k, v in m.items()})
    return out


def _sampled_metrics(method: Method, model: nn.Module, data, task: str, noise_sd: float, seed: int,
                     device: torch.device) -> dict[str, Any]:
    """Accuracy or RMSE of the method's unmasked posterior-sampling predictor
    (:meth:`Method.sampled_predict`) on the validation and test splits, as ``*_sampled``; {}
    when the method has none.  Its draws come from the run's own seed and leave torch's
    generators as they were, so the model averages after it draw what they drew without it."""
    out: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(noise_seed(seed) + 3)  # +1: model averages; +2: restarts' objectives
        for split in ("val", "test"):
            x, y = data[split]
            with torch.no_grad():
                pred = method.sampled_predict(model, x)
            if pred is None:
                return {}
            key = f"{split}_accuracy" if task == "classification" else f"{split}_rmse"
            out[f"{key}_sampled"] = M.predictive_metrics(pred, y, task, noise_sd, prefix=split, probs=True)[key]
    return out


# --------------------------------------------------------------------------- runs of one job

#: fraction of the device's free memory a stack may plan to use before it is split
MEMORY_FRACTION = 0.5


def noise_seed(seed: int) -> int:
    """Seed of a run's noise generator (layer noise, model averages), distinct from its data
    order's (``seed``) and fine-tuning's (``seed + 7919``) and a function of the seed only."""
    return (int(seed) * 1_000_003 + 104_729) % (2 ** 62)


def start_seed(seed: int, start: int) -> int:
    """Seed of start ``start`` of the run with seed ``seed`` (its initialisation; its noise
    draws from :func:`noise_seed` of this): start 0 is the run itself, so one start is
    exactly the run without restarts; later starts are a function of (seed, start) only."""
    if start == 0:
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"slabbench-start:{int(seed)}:{int(start)}".encode()).digest()[:7], "big")


#: sampled networks whose mean NLL makes a stochastic method's training objective
OBJECTIVE_SAMPLES = 20
#: rows per forward pass when a training objective is evaluated
OBJECTIVE_CHUNK = 8192


@torch.no_grad()
def training_objective(model: nn.Module, method: Method, x: torch.Tensor, y: torch.Tensor, *, task: str,
                       noise_sd: float, samples: int = OBJECTIVE_SAMPLES) -> float:
    """The method's own loss on the whole training set, in nats per training point:
    mean NLL (averaged over ``samples`` networks drawn as in training, from torch's global
    generator; one when two draws agree, i.e. the network is deterministic) + penalty / N.
    The model is evaluated in training mode (its noise on) and its buffers (batch-norm
    statistics) are restored afterwards."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    model.train()
    n = len(y)
    # equal chunks, never a one-row remainder (batch norm in training mode needs two rows)
    parts = -(-n // OBJECTIVE_CHUNK)
    chunks = list(zip(x.tensor_split(parts), y.tensor_split(parts)))
    nlls = []
    for s in range(samples):
        total = 0.0
        for xb, yb in chunks:
            out = model(xb)
            total += float(_nll_per_run(out[None], yb[None], task, noise_sd)[0]) * len(yb)
        nlls.append(total / n)
        if s == 1 and nlls[1] == nlls[0]:
            break
    for b, v in saved:
        b.copy_(v)
    model.train(was_training)
    penalty = method.penalty(model)
    return sum(nlls) / len(nlls) + (0.0 if penalty is None else float(penalty) / n)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def stack_refusal(method: Method, model: nn.Module) -> str | None:
    """Why the runs of ``method`` with built model ``model`` cannot share one stacked model,
    or ``None`` when they can (see :mod:`slabbench.stack` and docs/extending.md)."""
    bad = unstackable_modules(model)
    if bad:
        return f"its model has layers that do not stack ({', '.join(bad)})"
    cls = type(method)
    if not declares_stackable(cls) and cls.penalty is not Method.penalty:
        return "it overrides penalty() without declaring stackable = True"
    return None


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def plan_chunks(n_runs: int, bytes_per_run: int, free_bytes: int, fraction: float = MEMORY_FRACTION) -> list[range]:
    """Split ``n_runs`` stacked runs into consecutive chunks that each fit ``fraction`` of
    ``free_bytes`` at ``bytes_per_run`` (at least one run per chunk)."""
    per_chunk = max(1, int(fraction * free_bytes // max(1, bytes_per_run)))
    return [range(i, min(i + per_chunk, n_runs)) for i in range(0, n_runs, per_chunk)]


def _activations_per_example(model: nn.Module, x1: torch.Tensor) -> int:
    """Numbers in the outputs of every leaf module for the one example ``x1`` (1, ...): one
    forward in eval mode without gradient (no noise drawn, no running statistics updated)."""
    sizes: list[int] = []
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
             for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x1)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return x1.numel() + sum(sizes)


def _bytes_per_run(model: nn.Module, batch_size: int, x: torch.Tensor) -> int:
    """Rough training footprint of one run: parameters and buffers x 8 (value, gradient, two
    Adam moments, noise and temporaries) plus the minibatch's activations x 4 (every layer's
    output and its gradient, local-reparameterisation means and variances; a conv net's
    feature maps, not just its widest layer)."""
    tensors = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return 8 * tensors + 4 * batch_size * _activations_per_example(model, x[:1]) * x.element_size()


def _screen_starts(model: nn.Module, members: Sequence[Member], data, keep: int, *, task: str, noise_sd: float,
                   what: str, epoch: int) -> list[int]:
    """Restarts' screening: of the starts of each run (and target) in a stack, the ``keep``
    with the lowest training objective now (:func:`training_objective` of each start's
    unstacked copy, training data only; a diverged start loses).  Records each start's value
    and state there; returns the positions of the kept starts.  torch's global generator is
    left as it was."""
    values = []
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        for s, m in enumerate(members):
            m.model = unstack(model, s)
            torch.manual_seed(m.noise_seed + 2)  # the start's own draws, as for the final choice
            v = math.inf if m.diverged else training_objective(m.model, m.method, *data[s], task=task, noise_sd=noise_sd)
            values.append(v if math.isfinite(v) else math.inf)
            m.screen_objective = None if math.isinf(values[-1]) else v
    groups: dict[tuple, list[int]] = {}
    for s, m in enumerate(members):
        groups.setdefault((m.seed, m.target), []).append(s)
    kept = []
    for idx in groups.values():
        best = sorted(idx, key=lambda s: (values[s], s))[:keep]
        kept += best
        log.info("%s: after epoch %d, starts %s of %d train on (training objectives %s nats per point)",
                 members[idx[0]].label.rsplit(" start=", 1)[0], epoch, sorted(members[s].start for s in best), len(idx),
                 ", ".join(f"{values[s]:.4f}" for s in idx))
    for s, m in enumerate(members):
        m.screened_out = s not in kept
    return sorted(kept)


def _target_splits_stacks(cls: type) -> bool:
    """Whether runs of ``cls`` with different targets train in separate stacks: a stackable
    method's hooks run once per stack with its first run's instance, so they do unless the
    class declares in its own body that its per-target state lives in the model
    (:attr:`slabbench.api.Method.target_in_model`; inherited declarations do not count, as for
    ``stackable``).  A method that is not stackable gets hooks per run: never split."""
    return declares_stackable(cls) and not cls.__dict__.get("target_in_model", False)


def _train(members: list[Member], xs, ys, *, epochs: int, batch_size: int, lr: float, task: str, noise_sd: float,
           device: torch.device, data_seeds: Sequence[int], stop: bool, what: str,
           screen: tuple[int, int] | None = None, graphs: bool = False) -> list[float]:
    """Train every member's model (stacked where possible, else one after another); returns
    each member's share of the wall time in seconds.  ``screen = (epoch, keep)``: restarts'
    screening (stacked runs only, see :func:`_screen_starts`): after ``epoch`` epochs only
    the ``keep`` best starts of each run train on; every start's share counts the whole stack."""
    refusal = stack_refusal(members[0].method, members[0].model)
    seconds = [0.0] * len(members)
    kw = dict(epochs=epochs, batch_size=batch_size, lr=lr, task=task, noise_sd=noise_sd, stop_on_divergence=stop,
              graphs=graphs)
    if refusal is not None:
        if screen is not None:
            raise ValueError(f"{what}: screening restarts (restarts_keep) needs runs that train stacked; these do not "
                             f"({refusal})")
        log.info("%s: %d runs train one after another (not stacked: %s)", what, len(members), refusal)
        for i, m in enumerate(members):
            torch.manual_seed(m.noise_seed)
            t0 = time.perf_counter()
            fit(m.model, m.method, xs[i], ys[i], generator=torch.Generator().manual_seed(int(data_seeds[i])),
                member=m, **kw)
            _sync(device)
            seconds[i] = time.perf_counter() - t0
        return seconds
    # a stackable method's hooks run once per stack with the first run's method instance, so runs
    # whose instances differ (per-target training: each its own target) share a stack only when
    # the method keeps what the target changes in the model (target_in_model: buffers, stacked
    # per run)
    by_target: dict = {}
    for i, m in enumerate(members):
        by_target.setdefault(m.target if _target_splits_stacks(type(m.method)) else None, []).append(i)
    per_run = _bytes_per_run(members[0].model, batch_size, xs[0])
    # a stack that does not fit is split between runs, never inside the starts of one run (and
    # target): their screening compares them all, and they share their batches
    chunks = []
    for idx in by_target.values():
        units = [list(u) for _, u in itertools.groupby(idx, key=lambda i: (members[i].seed, members[i].target))]
        size = max(map(len, units))
        chunks += [[i for u in c for i in units[u]] for c in plan_chunks(len(units), per_run * size, _free_bytes(device))]
    log.info("%s: %d runs train stacked in %d stack(s) of up to %d", what, len(members), len(chunks), max(map(len, chunks)))
    for chunk in chunks:
        group = [members[i] for i in chunk]
        stacked = stack_modules([m.model for m in group])
        data = [(xs[i], ys[i]) for i in chunk]
        scr = None if screen is None else (screen[0], lambda model, ms, data=data: _screen_starts(
            model, ms, data, screen[1], task=task, noise_sd=noise_sd, what=what, epoch=screen[0]))
        t0 = time.perf_counter()
        kept = fit_stacked(stacked, group, [d[0] for d in data], [d[1] for d in data],
                           data_gens=[torch.Generator().manual_seed(int(data_seeds[i])) for i in chunk],
                           noise_gens=[_generator(m.noise_seed, device) for m in group], screen=scr, **kw)
        _sync(device)
        share = (time.perf_counter() - t0) / len(group)
        for i, m in zip(chunk, group):
            m.stack_runs = len(group)
            seconds[i] = share
        for j, pos in enumerate(kept):
            group[pos].model = unstack(stacked, j)
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _finetune_all(jobs: list[tuple[nn.Module, dict, int, dict]], cfg: dict, task: str, device,
                  label: str) -> tuple[list[nn.Module], list[float]]:
    """Masked copies of the networks of ``jobs`` = [(net, masks, seed, data)], fine-tuned with
    NLL only, Adam at ``lr * finetune_lr_factor`` for ``finetune_epochs`` epochs (the same for
    every method), all targets x seeds in one stack where the network stacks; also each one's
    share of the fine-tuning's wall time in seconds."""
    nets = [apply_masks(copy.deepcopy(net), masks) for net, masks, _, _ in jobs]
    epochs = int(cfg.get("finetune_epochs", 0))
    if epochs <= 0 or not jobs:
        return nets, [0.0] * len(nets)
    lr = cfg["lr"] * cfg["finetune_lr_factor"]
    members = []
    for net, (_, _, seed, data) in zip(nets, jobs):
        for p in net.parameters():
            p.requires_grad_(True)
        ctx = TrainContext(task=task, n_train=len(data["train"][1]), epochs=epochs, steps_per_epoch=0, lr=lr,
                           device=device, spec=None)
        members.append(Member(label=f"{label} seed={seed} (fine-tuning)", seed=seed, target=None,
                              method=Method(None, ctx), model=net))
    seconds = _train(members, [j[3]["train"][0] for j in jobs], [j[3]["train"][1] for j in jobs], epochs=epochs,
                     batch_size=cfg["batch_size"], lr=lr, task=task, noise_sd=cfg["noise_sd"], device=device,
                     data_seeds=[j[2] + 7919 for j in jobs], stop=cfg.get("on_divergence", "stop") == "stop",
                     what=f"{label} fine-tuning", graphs=bool(cfg.get("graphs", False)))
    out = []
    for m, (_, masks, _, _) in zip(members, jobs):
        with torch.no_grad():  # Adam moments may move masked weights; they never act, zero them
            apply_masks(m.model, masks)
        out.append(m.model)
    return out, seconds


def _load_data(cfg: dict, device: torch.device) -> tuple[Any, dict]:
    """(spec, {split: (x, y)}) of a run's data set on ``device``."""
    ds_cls = dataset_class(cfg["dataset"])
    dataset = ds_cls(make_params(ds_cls.Params, cfg.get("dataset_params"), f"dataset {cfg['dataset']!r}"), int(cfg["seed"]))
    dataset.prepare()
    spec = dataset.spec()
    return spec, {s: tuple(t.to(device) for t in dataset.load(s)) for s in ("train", "val", "test")}


def run_stack(cfgs: Sequence[dict], threads: int = 1) -> list[tuple[list[dict], dict[str, Any]]]:
    """Train and evaluate the runs ``cfgs`` (resolved run specs of one experiment x method
    that differ in their seed only, see :func:`slabbench.config.run_specs`) in one process.
    Returns, per spec, its records (one per target plus the natural selection) and its
    artefacts (scores, natural masks) for figures.

    Subnormal floats are flushed to zero on the CPU while it runs (``flush_denormal``, default
    true; switched off again at the end): long CPU runs otherwise slow down as weights decay
    into the subnormal range (magnitude on MNIST LeNet-300-100, epochs 3-12 of one thread: 4.77
    s of CPU per epoch without, 1.20 s with; docs/config.md, "flush_denormal")."""
    if not cfgs:
        return []
    flush = bool(cfgs[0].get("flush_denormal", True))
    applied = torch.set_flush_denormal(flush) and flush
    try:
        return _run_stack(cfgs, threads, applied)
    finally:
        torch.set_flush_denormal(False)


def _run_stack(cfgs: Sequence[dict], threads: int, flushed: bool) -> list[tuple[list[dict], dict[str, Any]]]:
    same = [{k: v for k, v in c.items() if k != "seed"} for c in cfgs]
    if any(s != same[0] for s in same):
        raise ValueError("run_stack: the specs of one job must differ in their seed only")
    cfg0 = cfgs[0]
    set_threads(threads)
    device = resolve_device(cfg0["device"])
    m_cls = method_class(method_plugin(cfg0))
    m_params = make_params(m_cls.Params, cfg0.get("method_params"), f"method {cfg0['method']!r}")
    err = run_option_error(cfg0, int(cfg0["epochs"]))  # validate() checked it; run_stack is also called directly
    if err:
        raise ValueError(f"{cfg0['experiment']}/{cfg0['method']}: {err}")
    restarts = int(cfg0.get("restarts", 1))
    screen = None
    if cfg0.get("restarts_keep") is not None:
        screen = (int(cfg0["restarts_screen_epochs"]), int(cfg0["restarts_keep"]))
    stop = cfg0.get("on_divergence", "stop") == "stop"
    label = f"{cfg0['experiment']}/{cfg0['method']}"
    # a fixed split (the spec's promise, checked by the dataset contract test) is loaded once
    # and shared by every run; a simulation draws each seed's replicate
    loaded = [_load_data(cfgs[0], device)]
    for c in cfgs[1:]:
        loaded.append(_load_data(c, device) if loaded[0][0].replicate_per_seed else loaded[0])
    spec = loaded[0][0]
    task, noise_sd = spec.task, float(cfg0["noise_sd"])
    n_train = len(loaded[0][1]["train"][1])
    targets = [float(s) for s in cfg0["sparsities"]]
    per_target = m_cls.trains_per_target(m_params)

    members, member_run = [], []
    for r, c in enumerate(cfgs):
        seed = int(c["seed"])
        for train_target in (targets if per_target else [None]):
            for start in range(restarts):
                init = start_seed(seed, start)
                torch.manual_seed(init)
                arch = build_model(c["model"], spec, c.get("model_params"))
                ctx = TrainContext(task=task, n_train=n_train, epochs=int(c["epochs"]),
                                   steps_per_epoch=-(-n_train // int(c["batch_size"])), lr=float(c["lr"]),
                                   device=device, spec=spec, target=train_target)
                method = m_cls(m_params, ctx)
                tag = (f"{label} seed={seed}" + (f" target={train_target}" if train_target is not None else "")
                       + (f" start={start}" if restarts > 1 else ""))
                member = Member(label=tag, seed=seed, target=train_target, method=method, start=start,
                                noise=noise_seed(init))
                member.model = method.build(arch).to(device)
                members.append(member)
                member_run.append(r)
    seconds = _train(members, [loaded[r][1]["train"][0] for r in member_run], [loaded[r][1]["train"][1] for r in member_run],
                     epochs=int(cfg0["epochs"]), batch_size=int(cfg0["batch_size"]), lr=float(cfg0["lr"]), task=task,
                     noise_sd=noise_sd, device=device, data_seeds=[m.seed for m in members],
                     stop=stop and restarts == 1, what=label, screen=screen,  # with restarts, a diverged start just loses
                     graphs=bool(cfg0.get("graphs", False)))
    restart_info = [{"restarts": restarts}] * len(members)
    if restarts > 1:
        members, member_run, seconds, restart_info = _choose_starts(
            members, member_run, seconds, [loaded[r][1]["train"] for r in member_run], task=task, noise_sd=noise_sd)
        for m in members:  # the kept start stopped at the screening: every start that went on diverged
            if m.screened_out and not m.diverged:
                m.diverged = "every start trained to the end diverged"
        lost = [m for m in members if m.diverged]  # the kept start diverged: so did every start of its run
        if lost and stop:
            which = f"every one of its {restarts} starts" if screen is None else "every start trained to the end"
            raise TrainingDiverged(f"{lost[0].label}: {which} diverged (start "
                                   f"{lost[0].start}: {lost[0].diverged}). {_divergence_advice(float(cfg0['lr']))}")

    prov = dict(provenance(device), flush_denormal=flushed)
    results: list[tuple[list[dict], dict[str, Any]]] = [([], {}) for _ in cfgs]
    pending = []  # (run, exported net, masks, seed, data, common fields, BMA metrics, target) awaiting fine-tuning
    for m, r, secs, chosen in zip(members, member_run, seconds, restart_info):
        c, data = cfgs[r], loaded[r][1]
        records, artefacts = results[r]
        method, model = m.method, m.model
        common = {k: c[k] for k in ("experiment", "dataset", "model", "method", "seed")}
        common.update(task=task, device=str(device), spec=dict(c), provenance=prov, train_seconds=secs,
                      stack_runs=m.stack_runs, **chosen)
        if task == "regression":  # the reference a collapsed net is read against
            common.update(M.constant_predictor_metrics(data["train"][1], data["test"][1]))
        if m.diverged:
            common["diverged"] = m.diverged
        exported = method.export(model).to(device).eval()
        scores = method.scores(model)
        if scores is not None:
            check_scores(scores, exported, c["method"], diverged=bool(m.diverged))
        torch.manual_seed(noise_seed(m.seed) + 1)  # model averages: the run's own draws (whichever start won)
        if m.target is None:
            natural = method.natural_mask(model)
            if natural is not None:
                check_mask(natural, exported, c["method"])
            if natural is not None or scores is None:
                net = apply_masks(copy.deepcopy(exported), natural) if natural is not None else exported
                records.append(physical.attach(dict(
                    common, selection="natural", target_sparsity=None, finetune_epochs=0,
                    **evaluate(net, data, spec, task, noise_sd), **_bma_metrics(method, model, natural, data, task, noise_sd),
                    **_sampled_metrics(method, model, data, task, noise_sd, m.seed, device)), artefacts, net, spec.input_shape))
            artefacts.update(method.extra_artifacts(model))
            if scores is not None:
                artefacts["scores"] = {k: (v[0] if isinstance(v, tuple) else v).detach().cpu() for k, v in scores.items()}
            if natural is not None:
                artefacts["natural_mask"] = {k: v.detach().cpu() for k, v in natural.items()}
        if scores is None:
            continue
        for target in ([m.target] if m.target is not None else targets):
            masks = topk_masks(scores, target, method.prune_scope)
            bma = _bma_metrics(method, model, masks, data, task, noise_sd) if not c.get("finetune_epochs") else {}
            pending.append((r, exported, masks, m.seed, data, common, bma, target))
    tuned, tune_seconds = _finetune_all([(net, masks, seed, data) for _, net, masks, seed, data, *_ in pending], cfg0,
                                        task, device, label)
    for (r, _, _, _, data, common, bma, target), net, secs in zip(pending, tuned, tune_seconds):
        results[r][0].append(physical.attach(dict(common, selection="target", target_sparsity=target,
                                  finetune_epochs=int(cfg0.get("finetune_epochs", 0)), finetune_seconds=secs,
                                  **evaluate(net, data, spec, task, noise_sd), **bma), results[r][1], net, spec.input_shape))
    for (records, _), c in zip(results, cfgs):
        records.sort(key=lambda rec: (rec["selection"] != "natural", rec["target_sparsity"] or 0.0))
        log.info("%s seed=%s: %d records", label, c["seed"], len(records))
    return results


def _choose_starts(members: list[Member], member_run: list[int], seconds: list[float], train_data, *, task: str,
                   noise_sd: float):
    """Restarts: of the starts of each run (and target), keep the one with the lowest final
    training objective (:func:`training_objective`, training data only, never validation or
    test data); a diverged start, or one that stopped at the screening, loses to any finite one.  Returns the kept members, their
    runs, their seconds (the sum over all the run's starts) and each one's restart record
    fields."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault((member_run[i], m.target), []).append(i)
    chosen = []  # (member index, its seconds, its record fields)
    for idx in groups.values():
        objectives = []
        for i in idx:
            m = members[i]
            torch.manual_seed(m.noise_seed + 2)  # the start's own draws
            value = math.inf if m.diverged or m.screened_out else training_objective(
                m.model, m.method, *train_data[i], task=task, noise_sd=noise_sd)
            objectives.append(value if math.isfinite(value) else math.inf)
        i = idx[min(range(len(idx)), key=lambda j: (objectives[j], j))]
        fields = dict(restarts=len(idx), restart_chosen=members[i].start,
                      restart_objectives=[None if math.isinf(v) else v for v in objectives])
        if any(members[j].screened_out for j in idx):  # screened: who went on, and everyone's value then
            fields.update(restart_finalists=[members[j].start for j in idx if not members[j].screened_out],
                          restart_screen_objectives=[members[j].screen_objective for j in idx])
        chosen.append((i, sum(seconds[j] for j in idx), fields))
        log.info("%s: start %d of %d kept (training objectives %s nats per point)", members[i].label, members[i].start,
                 len(idx), ", ".join(f"{v:.4f}" for v in objectives))
    chosen.sort(key=lambda c: c[0])
    return ([members[i] for i, _, _ in chosen], [member_run[i] for i, _, _ in chosen],
            [secs for _, secs, _ in chosen], [fields for _, _, fields in chosen])


def run(cfg: dict, threads: int = 1) -> tuple[list[dict], dict[str, Any]]:
    """Train and evaluate one run (a job of one seed); see :func:`run_stack`."""
    return run_stack([cfg], threads)[0]
