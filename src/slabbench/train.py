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

This module plans a job (data, models, stacks that fit memory, fine-tuning) and hands the
parts to the training engine (:mod:`slabbench.engine`: the step and the epoch loop), the
restarts policy (:mod:`slabbench.restarts`) and evaluation (:mod:`slabbench.records`); their
public names are importable from here too.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import sys
import time
import types
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from slabbench import engine
from slabbench.api import Method, TrainContext, make_params
from slabbench.checkpoint import JobCheckpoint, code_digest
from slabbench.config import RunSpec, run_option_error
from slabbench.engine import Member, Screen, TrainingDiverged, _divergence_advice, fit, fit_stacked, noise_seed
from slabbench.layers.stacked import run_noise
from slabbench.models import build_model
from slabbench.prune import apply_masks
from slabbench.provenance import provenance
from slabbench.records import (Measure, TargetSelection, bma_metrics, common_fields, evaluate, measure_run,
                               sampled_metrics)
from slabbench.registry import dataset_class, method_class
from slabbench.restarts import (OBJECTIVE_CHUNK, OBJECTIVE_SAMPLES, choose_starts, screen_starts, start_seed,
                                training_objective)
from slabbench.stack import hooks_per_stack, stack_modules, unstack, unstackable_modules

__all__ = [
    # this module's: a job's runs, planned and handed to the engine
    "DEVICES", "MEMORY_FRACTION", "resolve_device", "set_threads", "run", "run_stack", "stack_refusal", "plan_chunks",
    # the engine's, the restarts policy's and evaluation's, importable from here as before
    "Member", "Screen", "TrainingDiverged", "fit", "fit_stacked", "noise_seed",
    "Measure", "TargetSelection", "bma_metrics", "common_fields", "evaluate", "measure_run", "sampled_metrics",
    "OBJECTIVE_CHUNK", "OBJECTIVE_SAMPLES", "choose_starts", "screen_starts", "start_seed", "training_objective",
]

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




# --------------------------------------------------------------------------- runs of one job

#: fraction of the device's free memory a stack may plan to use before it is split
MEMORY_FRACTION = 0.5


def stack_refusal(method: Method, model: nn.Module) -> str | None:
    """Why the runs of ``method`` with built model ``model`` cannot share one stacked model,
    or ``None`` when they can (see :mod:`slabbench.stack` and docs/extending.md)."""
    bad = unstackable_modules(model)
    if bad:
        return f"its model has layers that do not stack ({', '.join(bad)})"
    cls = type(method)
    if not hooks_per_stack(cls) and cls.penalty is not Method.penalty:
        return "it overrides penalty() without declaring hooks_per_stack = True"
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


def _target_splits_stacks(cls: type) -> bool:
    """Whether runs of ``cls`` with different targets train in separate stacks: the hooks of a
    method that declares ``hooks_per_stack`` run once per stack with its first run's instance,
    so they do unless the class declares in its own body that its per-target state lives in the
    model (:attr:`slabbench.api.Method.target_in_model`; inherited declarations do not count, as
    for ``hooks_per_stack``).  A method without it gets hooks per run: never split."""
    return hooks_per_stack(cls) and not cls.__dict__.get("target_in_model", False)


def _train(members: list[Member], xs, ys, *, epochs: int, batch_size: int, lr: float, task: str, noise_sd: float,
           device: torch.device, data_seeds: Sequence[int], stop: bool, what: str,
           screen: tuple[int, int] | None = None, graphs: bool = False, compile_step: bool = False,
           noise_rng: str = "generators", checkpoint: JobCheckpoint | None = None) -> list[float]:
    """Train every member's model (stacked where possible, else one after another); returns
    each member's share of the wall time in seconds.  ``screen = (epoch, keep)``: restarts'
    screening (stacked runs only, see :func:`slabbench.restarts.screen_starts`): after ``epoch`` epochs only
    the ``keep`` best starts of each run train on; every start's share counts the whole stack.
    ``checkpoint``: the job's; each stack (or run trained alone) is one of its phases, named by
    ``what`` and its position.  ``noise_rng``: the stacks' noise, per-run ``generators`` or
    ``counter`` (:class:`slabbench.layers.stacked.CounterNoise`); runs that train one after
    another draw from torch's global generator either way."""
    refusal = stack_refusal(members[0].method, members[0].model)
    seconds = [0.0] * len(members)
    kw = dict(epochs=epochs, batch_size=batch_size, lr=lr, task=task, noise_sd=noise_sd, stop_on_divergence=stop,
              graphs=graphs, compile_step=compile_step)
    if refusal is not None:
        if screen is not None:
            raise ValueError(f"{what}: screening restarts (restarts_keep) needs runs that train stacked; these do not "
                             f"({refusal})")
        log.info("%s: %d runs train one after another (not stacked: %s)", what, len(members), refusal)
        for i, m in enumerate(members):
            torch.manual_seed(m.noise_seed)
            phase = None if checkpoint is None else checkpoint.phase(f"{what}: run {i}")
            t0 = time.perf_counter()
            fit(m.model, m.method, xs[i], ys[i], generator=torch.Generator().manual_seed(int(data_seeds[i])),
                member=m, checkpoint=phase, **kw)
            _sync(device)
            seconds[i] = time.perf_counter() - t0 + (phase.prior_seconds if phase else 0.0)
        return seconds
    # a hooks_per_stack method's hooks run once per stack with the first run's instance, so runs
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
    if checkpoint is not None:
        chunks = checkpoint.plan(what, chunks)
    log.info("%s: %d runs train stacked in %d stack(s) of up to %d", what, len(members), len(chunks), max(map(len, chunks)))
    for k, chunk in enumerate(chunks):
        group = [members[i] for i in chunk]
        phase = None if checkpoint is None else checkpoint.phase(f"{what}: stack {k}")
        stacked = stack_modules([m.model for m in group])
        data = [(xs[i], ys[i]) for i in chunk]
        scr = None if screen is None else (screen[0], lambda model, ms, data=data: screen_starts(
            model, ms, data, screen[1], task=task, noise_sd=noise_sd, what=what, epoch=screen[0]))
        t0 = time.perf_counter()
        kept = fit_stacked(stacked, group, [d[0] for d in data], [d[1] for d in data],
                           data_gens=[torch.Generator().manual_seed(int(data_seeds[i])) for i in chunk],
                           noise_gens=run_noise(noise_rng, [m.noise_seed for m in group], device), screen=scr,
                           checkpoint=phase, **kw)
        _sync(device)
        share = (time.perf_counter() - t0 + (phase.prior_seconds if phase else 0.0)) / len(group)
        for i, m in zip(chunk, group):
            m.stack_runs = len(group)
            seconds[i] = share
        for j, pos in enumerate(kept):
            group[pos].model = unstack(stacked, j)
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _finetune_all(jobs: list[TargetSelection], spec: RunSpec, task: str, device, label: str,
                  checkpoint: JobCheckpoint | None = None) -> tuple[list[nn.Module], list[float]]:
    """Masked copies of the networks of the selections ``jobs``, fine-tuned with
    NLL only, Adam at ``lr * finetune_lr_factor`` for ``finetune_epochs`` epochs (the same for
    every method), all targets x seeds in one stack where the network stacks; also each one's
    share of the fine-tuning's wall time in seconds."""
    nets = [apply_masks(copy.deepcopy(j.net), j.masks) for j in jobs]
    epochs = int(spec.finetune_epochs)
    if epochs <= 0 or not jobs:
        return nets, [0.0] * len(nets)
    lr = spec.lr * spec.finetune_lr_factor
    members = []
    for net, job in zip(nets, jobs):
        seed, data = job.seed, job.data
        for p in net.parameters():
            p.requires_grad_(True)
        ctx = TrainContext(task=task, n_train=len(data["train"][1]), epochs=epochs, steps_per_epoch=0, lr=lr,
                           device=device, spec=None)
        members.append(Member(label=f"{label} seed={seed} (fine-tuning)", seed=seed, target=None,
                              method=Method(None, ctx), model=net))
    seconds = _train(members, [j.data["train"][0] for j in jobs], [j.data["train"][1] for j in jobs], epochs=epochs,
                     batch_size=spec.batch_size, lr=lr, task=task, noise_sd=spec.noise_sd, device=device,
                     data_seeds=[j.seed + 7919 for j in jobs], stop=spec.stops_on_divergence,
                     what=f"{label} fine-tuning", graphs=bool(spec.graphs), compile_step=bool(spec.compile),
                     noise_rng=spec.noise_rng, checkpoint=checkpoint)
    out = []
    for m, job in zip(members, jobs):
        with torch.no_grad():  # Adam moments may move masked weights; they never act, zero them
            apply_masks(m.model, job.masks)
        out.append(m.model)
    return out, seconds


def _load_data(spec: RunSpec, device: torch.device) -> tuple[Any, dict]:
    """(data set spec, {split: (x, y)}) of a run's data set on ``device``."""
    ds_cls = dataset_class(spec.dataset)
    dataset = ds_cls(make_params(ds_cls.Params, spec.dataset_params, f"dataset {spec.dataset!r}"), int(spec.seed))
    dataset.prepare()
    return dataset.spec(), {s: tuple(t.to(device) for t in dataset.load(s)) for s in ("train", "val", "test")}


def run_stack(specs: Sequence[Mapping[str, Any]], threads: int = 1, checkpoint: str | os.PathLike | None = None,
              checkpoint_seconds: float = 600.0) -> list[tuple[list[dict], dict[str, Any]]]:
    """Train and evaluate the runs ``specs`` (run specs of one experiment x method that differ
    in their seed only: :class:`slabbench.config.RunSpec`, see :func:`slabbench.config.run_specs`,
    or their dict form) in one process.  Returns, per spec, its records (one per target plus
    the natural selection) and its artefacts (scores, natural masks) for figures.

    Subnormal floats are flushed to zero on the CPU while it runs (``flush_denormal``, default
    true; switched off again at the end): long CPU runs otherwise slow down as weights decay
    into the subnormal range (magnitude on MNIST LeNet-300-100, epochs 3-12 of one thread: 4.77
    s of CPU per epoch without, 1.20 s with; docs/config.md, "flush_denormal").

    ``checkpoint``: a file for the job's training state (:mod:`slabbench.checkpoint`), written at
    the end of an epoch once ``checkpoint_seconds`` have passed since the last write; a job run
    again with the same specs and code goes on from it and gives the same records.  The caller
    removes it once it has written the records."""
    if not specs:
        return []
    specs = [RunSpec.of(s) for s in specs]
    flush = bool(specs[0].flush_denormal)
    applied = torch.set_flush_denormal(flush) and flush
    try:
        return _run_stack(specs, threads, applied, checkpoint, checkpoint_seconds)
    finally:
        torch.set_flush_denormal(False)


def _run_stack(specs: list[RunSpec], threads: int, flushed: bool, checkpoint_path: str | os.PathLike | None = None,
               checkpoint_seconds: float = 600.0) -> list[tuple[list[dict], dict[str, Any]]]:
    same = [{k: v for k, v in s.items() if k != "seed"} for s in specs]
    if any(s != same[0] for s in same):
        raise ValueError("run_stack: the specs of one job must differ in their seed only")
    spec = specs[0]  # the job's settings (every spec's but the seed)
    set_threads(threads)
    device = resolve_device(spec.device)
    # read before training: the commit whose code this process runs (a commit made while a long
    # job trains must not be named in its records)
    prov = dict(provenance(device), flush_denormal=flushed)
    m_cls = method_class(spec.plugin)
    m_params = make_params(m_cls.Params, spec.method_params, f"method {spec.method!r}")
    err = run_option_error(spec, int(spec.epochs))  # validate() checked it; run_stack is also called directly
    if err:
        raise ValueError(f"{spec.experiment}/{spec.method}: {err}")
    restarts, screen, stop = int(spec.restarts), spec.screen, spec.stops_on_divergence
    label = f"{spec.experiment}/{spec.method}"
    checkpoint = None
    if checkpoint_path is not None:
        identity = dict(specs=[s.to_dict() for s in specs], code=code_digest(m_cls, dataset_class(spec.dataset)),
                        **{k: prov[k] for k in ("torch", "python", "numpy", "device_name")})
        checkpoint = JobCheckpoint(checkpoint_path, checkpoint_seconds, identity)
        if checkpoint.resumed:  # (wall times then add up the processes that trained it)
            prov["resumed"] = checkpoint.resumed
    # a fixed split (the spec's promise, checked by the dataset contract test) is loaded once
    # and shared by every run; a simulation draws each seed's replicate
    loaded = [_load_data(specs[0], device)]
    for s in specs[1:]:
        loaded.append(_load_data(s, device) if loaded[0][0].replicate_per_seed else loaded[0])
    data_spec = loaded[0][0]
    task, noise_sd = data_spec.task, float(spec.noise_sd)
    n_train = len(loaded[0][1]["train"][1])
    targets = [float(s) for s in spec.sparsities]
    per_target = m_cls.trains_per_target(m_params)

    members, member_run = [], []
    for r, s in enumerate(specs):
        seed = int(s.seed)
        for train_target in (targets if per_target else [None]):
            for start in range(restarts):
                init = start_seed(seed, start)
                torch.manual_seed(init)
                arch = build_model(s.model, data_spec, s.model_params)
                ctx = TrainContext(task=task, n_train=n_train, epochs=int(s.epochs),
                                   steps_per_epoch=-(-n_train // int(s.batch_size)), lr=float(s.lr),
                                   device=device, spec=data_spec, target=train_target)
                method = m_cls(m_params, ctx)
                tag = (f"{label} seed={seed}" + (f" target={train_target}" if train_target is not None else "")
                       + (f" start={start}" if restarts > 1 else ""))
                member = Member(label=tag, seed=seed, target=train_target, method=method, start=start,
                                noise=noise_seed(init))
                member.model = method.build(arch).to(device)
                members.append(member)
                member_run.append(r)
    seconds = _train(members, [loaded[r][1]["train"][0] for r in member_run], [loaded[r][1]["train"][1] for r in member_run],
                     epochs=int(spec.epochs), batch_size=int(spec.batch_size), lr=float(spec.lr), task=task,
                     noise_sd=noise_sd, device=device, data_seeds=[m.seed for m in members],
                     stop=stop and restarts == 1, what=label, screen=screen,  # with restarts, a diverged start just loses
                     graphs=bool(spec.graphs), compile_step=bool(spec.compile), noise_rng=spec.noise_rng,
                     checkpoint=checkpoint)
    restart_info = [{"restarts": restarts}] * len(members)
    if restarts > 1:
        members, member_run, seconds, restart_info = choose_starts(
            members, member_run, seconds, [loaded[r][1]["train"] for r in member_run], task=task, noise_sd=noise_sd)
        for m in members:  # the kept start stopped at the screening: every start that went on diverged
            if m.screened_out and not m.diverged:
                m.diverged = "every start trained to the end diverged"
        lost = [m for m in members if m.diverged]  # the kept start diverged: so did every start of its run
        if lost and stop:
            which = f"every one of its {restarts} starts" if screen is None else "every start trained to the end"
            raise TrainingDiverged(f"{lost[0].label}: {which} diverged (start "
                                   f"{lost[0].start}: {lost[0].diverged}). {_divergence_advice(float(spec.lr))}")

    measure = Measure(data_spec=data_spec, task=task, noise_sd=noise_sd, device=device)
    results: list[tuple[list[dict], dict[str, Any]]] = [([], {}) for _ in specs]
    pending: list[TargetSelection] = []  # awaiting fine-tuning
    for m, r, secs, chosen in zip(members, member_run, seconds, restart_info):
        data = loaded[r][1]
        common = common_fields(specs[r], m, measure, data, prov, secs, chosen)
        pending += measure_run(m, r, spec.method, data, common, measure, targets, fine_tuned=bool(spec.finetune_epochs),
                               records=results[r][0], artefacts=results[r][1])
    tuned, tune_seconds = _finetune_all(pending, spec, task, device, label, checkpoint)
    for sel, net, secs in zip(pending, tuned, tune_seconds):
        results[sel.run][0].append(sel.record(net, secs, int(spec.finetune_epochs), measure, results[sel.run][1]))
    for (records, _), s in zip(results, specs):
        records.sort(key=lambda rec: (rec["selection"] != "natural", rec["target_sparsity"] or 0.0))
        log.info("%s seed=%s: %d records", label, s.seed, len(records))
    return results


def run(spec: Mapping[str, Any], threads: int = 1) -> tuple[list[dict], dict[str, Any]]:
    """Train and evaluate one run (a job of one seed); see :func:`run_stack`."""
    return run_stack([spec], threads)[0]


def _engine_switch(name: str) -> property:
    return property(lambda _module: getattr(engine, name), lambda _module, value: setattr(engine, name, value),
                    doc=f"slabbench.engine.{name}, read and set through this module as well")


class _Module(types.ModuleType):
    """This module, with the engine's switches readable and settable through it (their home
    before the engine had a module of its own): ``slabbench.train.SHARE_INPUTS = False`` still acts."""

    SHARE_INPUTS = _engine_switch("SHARE_INPUTS")
    GRAPH_BACKEND = _engine_switch("GRAPH_BACKEND")


sys.modules[__name__].__class__ = _Module
