"""The training engine: one stacked training step and the epoch loop around it.

:func:`fit_stacked` trains a model whose runs (seeds, starts, targets, fine-tunings) share one
stacked model (:mod:`slabbench.stack`), or an ordinary one, with the core's loss convention

    loss = sum over runs of [mean NLL_s + beta(epoch) * penalty_s / N_train]

one step at a time: gather each run's minibatch from the device-resident data, forward with
every run's own noise, loss and penalty, backward, the optimizer's step; then the method's
per-step and per-epoch hooks, and once per epoch (one host synchronisation) the finiteness of
every run.  On CUDA (``graphs: true``, the default) each kind of step is captured once and replayed
(:mod:`slabbench.graphs`).  Each run draws its data order and noise from its own seed only, so
what it learns does not depend on which runs share its stack.

What a job trains and with which seeds (:mod:`slabbench.train`), which starts of a run train on
(:mod:`slabbench.restarts`) and what is measured afterwards (:mod:`slabbench.records`) live
elsewhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from slabbench import metrics as M
from slabbench.api import Method
from slabbench.checkpoint import (NotResumable, Phase, cpu_copy, method_states, model_tensors, restore_method_states,
                                  restore_model_tensors)
from slabbench.graphs import StepGraphs, state_entries
from slabbench.layers.stacked import CounterNoise, RunGenerators, as_run_noise, run_generators, shared_input
from slabbench.stack import hooks_per_stack, run_views, select_runs, stacked_runs

log = logging.getLogger(__name__)

#: a training job logs its progress (epoch, time per epoch, time left, training NLL) at most this
#: often, in seconds of wall time, and at its last epoch if it logged before: a 200-epoch job on a
#: CPU says it is alive without flooding the log of a short one
PROGRESS_SECONDS = 60.0

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
    #: how its training steps ran where CUDA graphs were asked for and possible on its device:
    #: "N graph capture(s), M invalidation(s)", or "eager (why)"; None elsewhere (the CPU)
    step_graphs: str | None = None
    #: how its training steps ran where ``compile: true`` asked for a compiled step: "compiled
    #: (backend)", or "eager (why)" where compiling failed; None when not asked for
    step_compile: str | None = None
    screen_objective: float | None = None  #: restarts' screening: its training objective then (None: diverged)
    screened_out: bool = False  #: restarts' screening: it stopped there (its model is its state then)

    @property
    def noise_seed(self) -> int:
        return noise_seed(self.seed) if self.noise is None else self.noise




def noise_seed(seed: int) -> int:
    """Seed of a run's noise generator (layer noise, model averages), distinct from its data
    order's (``seed``) and fine-tuning's (``seed + 7919``) and a function of the seed only."""
    return (int(seed) * 1_000_003 + 104_729) % (2 ** 62)



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


def _log_progress(members: Sequence[Member], nll_sums: torch.Tensor, steps: int, epoch: int, epochs: int,
                  elapsed: float, first_epoch: int = 0) -> None:
    """One progress line: the epoch reached, wall time per epoch, the time left at that rate and
    each run's training NLL per example, the mean of the epoch's ``steps`` minibatch means
    (``nll_sums`` is read after :func:`_check_finite` has synchronised: no further wait).
    ``elapsed``: the wall time of epochs ``first_epoch`` to ``epoch`` (a resumed training's)."""
    per_epoch = elapsed / (epoch + 1 - first_epoch)
    left = per_epoch * (epochs - epoch - 1)
    nll = (nll_sums / steps).tolist()
    shown = ", ".join(f"{v:.4g}" for v in nll[:8]) + (f", ... ({len(nll)} runs)" if len(nll) > 8 else "")
    log.info("%s: epoch %d/%d, %.3g s per epoch, about %s left; training NLL per example: %s",
             members[0].label.split(" seed=")[0], epoch + 1, epochs, per_epoch, _duration(left), shown)


def _duration(seconds: float) -> str:
    """``seconds`` for a person: "45 s", "12 min", "3.2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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


def _cut_optimizer_state(opt: torch.optim.Optimizer, renamed: dict[int, nn.Parameter], idx: torch.Tensor) -> None:
    """The optimizer of a stack cut to the runs ``idx``: its groups hold the new parameters
    (``renamed``: {id(old parameter): new parameter}) and each parameter's state keeps the rows
    of the kept runs where it is shaped like the parameter (Adam's moments; an elementwise
    optimizer's state is per weight, so per run); other state (Adam's step count) stays."""
    state = {}
    for p, v in opt.state.items():
        state[renamed[id(p)]] = {k: t.index_select(0, idx.to(t.device)) if torch.is_tensor(t) and t.shape == p.shape else t
                                 for k, t in v.items()}
    for group in opt.param_groups:
        group["params"] = [renamed[id(p)] for p in group["params"]]
    opt.state.clear()
    opt.state.update(state)


def _undeclared_run_state(method: Method, runs: int) -> list[str]:
    """Attributes of a stack's method instance that look per run (a tensor, or a container of
    tensors, with ``runs`` rows) but are not in its ``run_state``: left as they are when the
    stack is cut (a plugin should declare them, or keep them in its model's buffers)."""
    def per_run(v) -> bool:
        if torch.is_tensor(v):
            return v.dim() > 0 and v.shape[0] == runs
        if isinstance(v, (list, tuple)):
            return any(per_run(u) for u in v)
        if isinstance(v, dict):
            return any(per_run(u) for u in v.values())
        return False

    return sorted(k for k, v in vars(method).items() if k not in type(method).run_state and per_run(v))


#: what a checkpoint saves of each run (:class:`Member`): what its training found out about it
_MEMBER_STATE = ("diverged", "screen_objective", "screened_out", "step_graphs", "step_compile")

#: screen(model, members) -> positions of the runs that train on, called once after the
#: screening epoch (restarts' successive halving, see :func:`fit_stacked`)
Screen = tuple[int, Callable[[nn.Module, Sequence["Member"]], Sequence[int]]]


class StackedStep:
    """One training step of a stack of runs (or of one ordinary model: S = 1, noise from torch's
    global generator) with the core's loss convention: gather each run's minibatch rows from the
    device-resident data, forward with every run's own noise, loss = sum over runs of
    [mean NLL_s + beta * penalty_s / N], backward, the optimizer's step; each run's mean NLL is
    added to :attr:`nll_sums` (the epoch's finiteness check reads it).

    ``x_all``, ``y_all``: every run's training data (:func:`_batches`; N rows per run);
    ``group_of``: each run's data group (runs of one group see the same rows: gathered once and
    fed to the stacked linear layers as one matmul per group).  A step reads only its ``idx``,
    ``beta`` (a number, or a device tensor under graphs) and tensors that stay in place, so it
    can be captured and replayed (:mod:`slabbench.graphs`)."""

    def __init__(self, model: nn.Module, method: Method, opt: torch.optim.Optimizer, x_all: torch.Tensor,
                 y_all: torch.Tensor, n: int, *, batch_size: int, task: str, noise_sd: float,
                 noise_gens: Sequence[torch.Generator] | RunGenerators | CounterNoise, group_of: Sequence[int],
                 compile_backend: str | None = None):
        self.model, self.method, self.opt = model, method, opt
        self.x_all, self.y_all, self.n = x_all, y_all, n
        self.task, self.noise_sd = task, noise_sd
        self.rows = min(batch_size, n)  # a minibatch's rows per run (the last one may have fewer)
        self.forward = model if stacked_runs(model) > 0 else (lambda xb: model(xb[0]).unsqueeze(0))
        # one buffer for every minibatch gather: a fresh (S·B, ...) tensor per step is, at S = 300
        # runs of the paper simulation, 120 MB that the allocator maps and unmaps every step (a
        # third of the CPU time went to the kernel); the graph that reads a batch is freed by
        # backward() before the next gather overwrites it
        self.x_buf = x_all.new_empty((len(group_of) * self.rows, *x_all.shape[1:]))
        self.xu_buf: torch.Tensor | None = None
        self.set_runs(noise_gens, group_of)
        #: ``compile_backend``: the step's loss (gather, forward, NLL, penalty) and its backward
        #: compiled by that torch.compile backend (:class:`CompiledLoss`); None: as written
        self.compiled = None if compile_backend is None else CompiledLoss(self._loss, compile_backend)

    def set_runs(self, noise_gens: Sequence[torch.Generator] | RunGenerators | CounterNoise,
                 group_of: Sequence[int]) -> None:
        """The runs the step trains: their noise generators (or counter-based noise) and data
        groups (at the start, and after the stack was cut to some of its runs)."""
        self.noise_gens = as_run_noise(noise_gens)
        self.runs = len(group_of)
        # runs that see the same rows (restarts' starts): gathered once per group, and the stacked
        # linear layers fed the batch run one matmul per group (layers.stacked.shared_input)
        self.per_group = _group_size(group_of)
        if self.per_group > 1 and self.xu_buf is None:  # (groups only shrink: once is enough)
            self.xu_buf = self.x_all.new_empty(((group_of[-1] + 1) * self.rows, *self.x_all.shape[1:]))
        self.nll_sums = torch.zeros(self.runs, device=self.x_all.device)

    def loss(self, idx: torch.Tensor, beta, with_penalty: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, each run's mean NLL (S,)) on the minibatch rows ``idx`` (groups x B): gather,
        forward, the NLLs and, ``with_penalty`` (not while beta = 0, a KL warm-up's first
        epochs), beta * penalty / N.  Compiled where asked for and possible."""
        if self.compiled is not None and self.compiled.fn is not None:
            out = self.compiled(idx, beta, with_penalty)
            if out is not None:
                return out
        return self._loss(idx, beta, with_penalty)

    def _loss(self, idx: torch.Tensor, beta, with_penalty: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x_all, y_all, s_runs, per_group = self.x_all, self.y_all, self.runs, self.per_group
        flat, b = idx.reshape(-1), idx.shape[1]
        # index_select, not x[idx]: the same rows, but advanced indexing's general kernel
        # takes ~6x longer on CPU (0.19 vs 0.03 ms for 500 x 200 floats)
        if per_group > 1:
            xu = torch.index_select(x_all, 0, flat, out=self.xu_buf[:flat.numel()]).view(-1, b, *x_all.shape[1:])
            xb = self.x_buf[:s_runs * b].view(xu.shape[0], per_group, *xu.shape[1:])
            xb.copy_(xu.unsqueeze(1).expand_as(xb))
            xb = xb.view(s_runs, *xu.shape[1:])
            yb = y_all.index_select(0, flat).view(-1, 1, b).expand(-1, per_group, b).reshape(s_runs, b)
            with run_generators(self.noise_gens), shared_input(xb, xu):
                out = self.forward(xb)
        else:
            xb = torch.index_select(x_all, 0, flat, out=self.x_buf[:flat.numel()]).view(s_runs, b, *x_all.shape[1:])
            yb = y_all.index_select(0, flat).view(s_runs, b)
            with run_generators(self.noise_gens):
                out = self.forward(xb)
        nll = _nll_per_run(out, yb, self.task, self.noise_sd)
        loss = nll.sum()
        if with_penalty:
            penalty = self.method.penalty(self.model)
            if penalty is not None:
                loss = loss + beta * penalty / self.n
        return loss, nll

    def __call__(self, idx: torch.Tensor, beta, with_penalty: bool, set_to_none: bool) -> None:
        """One step on the minibatch rows ``idx``: :meth:`loss`, backward, the optimizer's step."""
        self.noise_gens.begin_step()
        loss, nll = self.loss(idx, beta, with_penalty)
        self.opt.zero_grad(set_to_none=set_to_none)
        loss.backward()
        self.noise_gens.advance()  # (counter-based noise: after the backward, which may draw again)
        self.opt.step()
        self.nll_sums.add_(nll.detach())


def _compile_errors() -> tuple[type[BaseException], ...]:
    """What torch.compile raises when compiling fails: its own exceptions, those Dynamo lets
    through unwrapped (its internal assertions, data-dependent guards) and the C++ backend's.
    Caught only from a call that started a compile (:class:`CompiledLoss`)."""
    import torch._dynamo.exc
    import torch._inductor.exc
    from torch.fx.experimental.symbolic_shapes import ConstraintViolationError, GuardOnDataDependentSymNode
    from torch.fx.experimental.validator import ValidationException
    return (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit,
            torch._inductor.exc.CppCompileError, torch._inductor.exc.InvalidCxxCompiler,
            torch._inductor.exc.OperatorIssue, AssertionError, IndexError, ConstraintViolationError,
            GuardOnDataDependentSymNode, ValidationException)


def with_compile_settings(fn: Callable) -> Callable:
    """``fn`` (a compiled step) called under torch's compile settings of a compiled step:

    - the backward is lowered with the forward (not at the first backward), so that a failure
      to compile surfaces before anything of the step has run;
    - a recompile past the limit (16 kinds of step; a training has at most 8: two minibatch
      sizes, penalty on or off, before and after a screening cut) is an error, not a silent
      eager frame;
    - random operators of an unstacked model draw from torch's generator as in eager steps
      (Inductor's own random numbers would be other streams; stacked runs draw through
      ``slabbench::per_run_noise``, an opaque operator either way);
    - one compile thread: a job has one CPU;
    - the CPU's vector width is named (``cpp.simdlen``): Inductor's cache of compiled graphs
      keys on its settings, and without it a graph compiled with AVX-512 kernels was found
      again under ATEN_CPU_CAPABILITY=avx2 and trained to NaN within two steps (spike_slab
      lrt, torch 2.14.1), as one compiled on another CPU sharing the cache folder could be."""
    import torch._dynamo.config
    import torch._functorch.config
    import torch._inductor.config
    import torch._inductor.cpu_vec_isa
    isa = torch._inductor.cpu_vec_isa.pick_vec_isa()
    for settings in (torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=16),
                     torch._functorch.config.patch(force_non_lazy_backward_lowering=True),
                     torch._inductor.config.patch({"fallback_random": True, "compile_threads": 1,
                                                   "cpp.simdlen": isa.bit_width() if isa else None})):
        fn = settings(fn)  # (each patch, a decorator, applies around every call)
    return fn


class CompiledLoss:
    """A step's loss function compiled by ``torch.compile(fullgraph=True, dynamic=False)``
    (``compile: true``): Inductor, the default backend, fuses each layer's elementwise work into
    a few kernels (C++ on the CPU, Triton on CUDA) and compiles the backward with it.  Each
    kind of step (a minibatch size, penalty on or off, a stack cut to fewer runs) compiles the
    first time it comes, with :func:`with_compile_settings`.

    A call that starts a compile and fails with one of :func:`_compile_errors` has run nothing
    of the step (the backward is lowered with the forward): it returns None, compiling stops
    (:attr:`fn` None, :attr:`why` says why) and the caller runs the step as written on the same
    inputs, as every later step.  A kind of step that first comes later (the penalty after a
    KL warm-up, a stack cut by screening) compiles then, so a training can be compiled up to a
    step and as written after it: :attr:`summary` says from which step.  Compiled code lives in
    torch's per-function cache, so a new compiled loss clears it (``torch._dynamo.reset()``):
    one training compiles at a time."""

    def __init__(self, fn: Callable, backend: str):
        import torch._dynamo
        torch._dynamo.reset()
        self.compiles = 0  # compiles started (Dynamo's start callback), to tell a compile's failure
        torch._dynamo.callback_handler.register_start_callback(self._started)
        self.backend = backend
        self.fn: Callable | None = with_compile_settings(torch.compile(fn, fullgraph=True, dynamic=False,
                                                                       backend=backend))
        self.why: str | None = None
        self.calls = 0  # steps run compiled
        self.errors = _compile_errors()

    def _started(self, _args) -> None:
        self.compiles += 1

    def __call__(self, *args):
        before = self.compiles
        try:
            out = self.fn(*args)
        except self.errors as err:
            if self.compiles == before:  # not a compile's failure: the step's own
                raise
            self.fn = None
            self.why = " ".join(str(err).split())[:300] or type(err).__name__
            log.warning("compiling the training step failed, its steps run as written%s: %s",
                        f" from step {self.calls + 1}" if self.calls else "", self.why)
            return None
        self.calls += 1
        return out

    @property
    def summary(self) -> str:
        """How the steps ran: "compiled (backend)", "eager (compiling failed: why)", or, where a
        kind of step that came later failed to compile, "compiled (backend) for N step(s), then
        eager (compiling failed: why)"."""
        if self.fn is not None:
            return f"compiled ({self.backend})"
        eager = f"eager (compiling failed: {self.why})"
        return f"compiled ({self.backend}) for {self.calls} step(s), then {eager}" if self.calls else eager


def fit_stacked(model: nn.Module, members: Sequence[Member], xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], *,
                epochs: int, batch_size: int, lr: float, task: str, noise_sd: float,
                data_gens: Sequence[torch.Generator],
                noise_gens: Sequence[torch.Generator] | RunGenerators | CounterNoise,
                stop_on_divergence: bool = True, screen: Screen | None = None, graphs: bool = False,
                compile_step: bool = False, checkpoint: Phase | None = None) -> list[int]:
    """Train ``model`` with the core's loss convention: the sum over its runs of
    [mean NLL_s + beta * penalty_s / N].  ``model`` is stacked (S runs, see
    :mod:`slabbench.stack`) or an ordinary model (one run, S = 1, noise from torch's global
    generator).  Run ``s`` sees its own data ``xs[s]``, ``ys[s]`` in the order drawn from
    ``data_gens[s]`` and its layers' noise from ``noise_gens[s]`` (or, ``noise_gens`` a
    :class:`slabbench.layers.stacked.CounterNoise`, from run ``s``'s counter-based stream).  The method's hooks are called
    once on the model when it is ordinary or the method's class declares ``hooks_per_stack = True``,
    else ``after_step`` / ``after_epoch`` once per run on views of the run's slice (its own
    method instance, e.g. its own target).  NaN / inf is checked once per epoch.

    ``screen = (epoch, choose)`` (stacked models only): after that many epochs, ``choose(model,
    members)`` names the runs that train on and the stack is cut to them in place: every
    parameter and buffer (:func:`slabbench.stack.select_runs`), the optimizer's state and the
    per-run state the method's instance declares when its hooks run once per stack
    (:attr:`slabbench.api.Method.run_state`, :meth:`slabbench.api.Method.select_runs`; e.g. l0's
    parameter averages); the others stop there.  Returns the positions (in ``members``) of the runs the
    model holds at the end.

    ``graphs`` (CUDA): each kind of step is captured once as a CUDA graph and replayed
    (:mod:`slabbench.graphs`); β and the learning rates then live in device tensors and Adam is
    made capturable.  Eager otherwise, and wherever capture is not possible (the log says why).

    ``compile_step``: the step's loss and backward compiled (:class:`CompiledLoss`, backend
    :data:`COMPILE_BACKEND`; β then a device tensor, as under graphs); where compiling fails the
    steps run as written and the log says why.  Each member's ``step_compile`` says which.

    ``checkpoint`` (:mod:`slabbench.checkpoint`): the phase of a job's checkpoint this training
    is.  Training starts from its saved state if it has one (a finished phase: no epoch is
    trained again), and its state is saved at the end of an epoch when the checkpoint's interval
    has passed, and held at the end."""
    lead = members[0].method
    opt = lead.optimizer(model, lr)
    base_lrs = [g["lr"] for g in opt.param_groups]  # lr_factor scales these (one value for the stack)
    device = next(model.parameters()).device
    stacked = stacked_runs(model) > 0
    if screen is not None and not stacked:
        raise ValueError("fit_stacked: screening needs a stacked model")
    x_all, y_all, offsets = _batches(xs, ys)
    n, s_runs = len(ys[0]), len(members)
    group_of = _data_groups(xs, ys, data_gens) if SHARE_INPUTS and stacked else list(range(s_runs))
    order_gens = [data_gens[group_of.index(g)] for g in range(group_of[-1] + 1)]  # one data order per group
    members, kept, noise = list(members), list(range(s_runs)), as_run_noise(noise_gens)
    started_with = list(members)  # (screening cuts ``members``: a start screened out still gets its records)
    cls = type(lead)
    # hooks once per run (on views, with their run's gradients) only where they could tell runs
    # apart: a method that does not declare hooks_per_stack and overrides a per-step hook (e.g.
    # magnitude's gradual schedule, a plugin that reads gradients)
    per_run_hooks = stacked and not hooks_per_stack(cls) and (
        cls.after_step is not Method.after_step or cls.after_epoch is not Method.after_epoch)
    step_hooked = cls.after_step is not Method.after_step
    hooked = step_hooked or cls.after_epoch is not Method.after_epoch
    step_graphs, in_step = None, False
    use_graphs = _use_graphs(graphs, device)
    if use_graphs or device.type in CAPTURABLE_ADAM:
        opt, why = _capturable(opt, device)
    if use_graphs:
        if why is None:
            # a per-step hook that declares itself the same tensor work every step runs inside the
            # captured step (replayed with it); its step and epoch are those of the capture
            in_step = step_hooked and (hooks_per_stack(cls) or per_run_hooks) and _after_step_in_step(lead)

            def body(key):
                train_step(idx_bufs[key[0]], beta_t, key[1], False)
                if in_step:
                    step_hooks()

            # each graph writes gradients of its own (captured with none there): hooks read that
            # graph's, so .grad is pointed at them around every replay
            step_graphs = StepGraphs(body,
                                     state=lambda: state_entries(model, opt, lead), generators=noise.generators,
                                     label=members[0].label.split(" seed=")[0], backend=GRAPH_BACKEND,
                                     prepare=lambda key: opt.zero_grad(set_to_none=True),
                                     before_replay=lambda key: _point_grads(grads_of.get(key, ())),
                                     after_replay=lambda key: key in grads_of or grads_of.__setitem__(
                                         key, [(q, q.grad) for q in model.parameters()]))
        else:
            log.info("%s: CUDA graphs off: %s", members[0].label, why)
            for m in started_with:
                m.step_graphs = m.step_graphs or f"eager ({why})"
    train_step = StackedStep(model, lead, opt, x_all, y_all, n, batch_size=batch_size, task=task, noise_sd=noise_sd,
                             noise_gens=noise, group_of=group_of,
                             compile_backend=COMPILE_BACKEND if compile_step else None)
    # β as a device tensor written in place: what a captured graph reads, and a compiled step's
    # input (a number would be a constant of the compiled code: a recompile per value)
    beta_t = torch.zeros((), device=device) if step_graphs is not None or compile_step else None
    idx_bufs: dict[int, torch.Tensor] = {}  # minibatch size -> the index buffer a graph reads
    grads_of: dict = {}  # step kind -> (parameter, the gradient its graph writes)
    views = run_views(model) if per_run_hooks else None
    params = [p if stacked else p[None] for p in model.parameters()]  # leading run dimension
    # under graphs, what a hook replaced is looked for after each step only where a per-step hook
    # ran between replays (StepGraphs.check: tens of microseconds a step), after each epoch
    # where any hook did
    check_steps = step_graphs is not None and step_hooked and not in_step

    def step_hooks() -> None:
        """The method's per-step hook: once per run on its view, with its gradients, or once."""
        if per_run_hooks:
            views.share_grads()
            for m, view in zip(members, views):
                m.method.after_step(view, step, epoch)
        else:
            lead.after_step(model, step, epoch)

    def cut(keep: list[int]) -> None:
        """Cut the stack to the runs ``keep`` (positions among those it holds), in place."""
        nonlocal members, noise, kept, offsets, order_gens, group_of, s_runs, params, views
        idx = torch.tensor(keep, dtype=torch.long)
        _cut_optimizer_state(opt, select_runs(model, keep), idx)
        if not per_run_hooks:  # the stack's one method instance: its declared per-run state
            undeclared = _undeclared_run_state(lead, s_runs)
            if undeclared:
                log.warning("%s: %s holds %s with one row per run but does not name it in run_state: "
                            "not cut to the kept runs", members[0].label.split(" seed=")[0],
                            type(lead).__name__, ", ".join(undeclared))
            lead.select_runs(idx)
        members, kept, noise = [members[i] for i in keep], [kept[i] for i in keep], noise.select(keep)
        offsets = offsets[idx]
        groups = sorted(set(group_of[i] for i in keep))
        order_gens = [order_gens[g] for g in groups]
        group_of = [groups.index(group_of[i]) for i in keep]
        train_step.set_runs(noise, group_of)
        s_runs = len(keep)
        params = list(model.parameters())
        views = run_views(model) if per_run_hooks else None
        if step_graphs is not None:  # new tensors, fewer runs: every step kind is captured anew
            step_graphs.invalidate()
            step_graphs.generators = noise.generators
            idx_bufs.clear()
            grads_of.clear()

    def save(epochs_done: int) -> None:
        """Hold the training's state after ``epochs_done`` epochs in the checkpoint (written
        when its interval has passed)."""
        try:
            state = dict(epochs=epochs, epoch=epochs_done, step=step, kept=list(kept),
                         labels=[m.label for m in started_with],
                         methods=method_states([m.method for m in started_with], model))
        except NotResumable as err:
            checkpoint.off(str(err))
            return
        note_compiled()  # (saved with the runs' other fields)
        # a start that restarts' screening stopped keeps its own model (its state then)
        state.update(screened=[model_tensors(m.model) if m.screened_out else None for m in started_with])
        state.update(model=model_tensors(model), opt=cpu_copy(opt.state_dict()),
                     members=[{f: getattr(m, f) for f in _MEMBER_STATE} for m in started_with],
                     data_gens=[g.get_state() for g in data_gens], noise=noise.state(),
                     rng=torch.get_rng_state(),
                     cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                     seconds=checkpoint.prior_seconds + time.perf_counter() - phase_started)
        checkpoint.keep(state, write=True)

    def restore(state: dict) -> None:
        """Go on from a saved state: the stack cut as it was, then every tensor, generator and
        method attribute as saved."""
        nonlocal step
        if state["labels"] != [m.label for m in started_with]:
            raise NotResumable(f"it trained {len(state['labels'])} run(s) ({state['labels'][0]}, ...), this trains "
                               f"{len(started_with)} ({started_with[0].label}, ...)")
        if len(state["kept"]) < s_runs:
            cut(state["kept"])
        restore_model_tensors(model, state["model"], device)
        lrs = [g["lr"] for g in opt.param_groups]
        opt.load_state_dict(state["opt"])
        for g, lr_now in zip(opt.param_groups, lrs):  # (a device tensor under graphs stays that tensor)
            if torch.is_tensor(lr_now):
                g["lr"] = lr_now
        restore_method_states([m.method for m in started_with], state["methods"], model, device)
        for m, fields, screened in zip(started_with, state["members"], state["screened"]):
            for f, v in fields.items():
                setattr(m, f, v)
            if screened is not None:
                restore_model_tensors(m.model, screened, device)
        for g, st in zip(data_gens, state["data_gens"]):
            g.set_state(st)
        try:  # (the noise of the runs the stack held then, as it holds them again)
            noise.load_state(state["noise"])
        except ValueError as err:
            raise NotResumable(str(err)) from None
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step = state["step"]

    model.train()
    step, first_epoch = 0, 0
    phase_started = time.perf_counter()
    if checkpoint is not None and checkpoint.saved is not None:
        try:
            restore(checkpoint.saved)
        except NotResumable as err:  # (the same specs and code made it: not expected)
            raise RuntimeError(f"{members[0].label.split(' seed=')[0]}: the state saved in {checkpoint.job.path} "
                               f"does not fit this training ({err}); delete that file to train afresh") from None
        first_epoch = checkpoint.saved["epoch"]
    # how a resumed training's steps ran before it stopped (what its checkpoint says)
    compiled_before = [m.step_compile for m in started_with]

    def note_compiled() -> None:
        """Each run's ``step_compile``: how this process's steps ran, after what the process
        before it said where that differs (a resumed training)."""
        if train_step.compiled is None:
            return
        now = train_step.compiled.summary
        for m, before in zip(started_with, compiled_before):
            m.step_compile = now if before in (None, now) else f"{before}; after resuming: {now}"
    started = last_log = time.monotonic()
    for epoch in range(first_epoch, epochs):
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
        per_group = train_step.per_group
        perm = (perm + offsets[::per_group, None] if per_group > 1
                else perm[torch.tensor(group_of)] + offsets[:, None]).to(x_all.device)
        train_step.nll_sums.zero_()
        for start in range(0, n, batch_size):
            idx = perm[:, start:start + batch_size]
            if step_graphs is None:
                # per-run hooks read their run's slice of the gradients (views.share_grads): zeroed
                # in place, the gradient tensors stay the same and the slices are taken once
                train_step(idx, beta if beta_t is None else beta_t, beta != 0.0, not per_run_hooks)
            else:
                b = idx.shape[1]
                if b not in idx_bufs or idx_bufs[b].shape != idx.shape:
                    idx_bufs[b] = torch.empty_like(idx)
                idx_bufs[b].copy_(idx)
                step_graphs.run((b, beta != 0.0))
            if not in_step:  # (else part of the step)
                step_hooks()
            if check_steps:
                step_graphs.check()
            step += 1
        if per_run_hooks:
            if in_step:  # (shared in the step only at capture: the last replay's gradients now)
                views.share_grads()
            for m, view in zip(members, views):
                m.method.after_epoch(view, epoch)
        else:
            lead.after_epoch(model, epoch)
        if step_graphs is not None and hooked:
            step_graphs.check()
        _check_finite(members, train_step.nll_sums, params, epoch, epochs, lr, stop_on_divergence)
        now = time.monotonic()
        if now - last_log >= PROGRESS_SECONDS or (epoch + 1 == epochs and last_log > started):
            last_log = now
            _log_progress(members, train_step.nll_sums, -(-n // batch_size), epoch, epochs, now - started, first_epoch)
        if screen is not None and epoch + 1 == screen[0] and epoch + 1 < epochs:
            keep = sorted(set(screen[1](model, members)))
            if len(keep) < s_runs:
                cut(keep)
        if checkpoint is not None and (epoch + 1 == epochs or checkpoint.due()):
            save(epoch + 1)
    if train_step.compiled is not None:
        log.info("%s: steps %s", members[0].label.split(" seed=")[0], train_step.compiled.summary)
        note_compiled()
    if step_graphs is not None:
        log.info("%s: %s", members[0].label.split(" seed=")[0], step_graphs.summary())
        for m in started_with:  # (the training's; a later fine-tuning's members are others)
            m.step_graphs = m.step_graphs or step_graphs.summary()
    model.eval()
    return kept


#: devices where Adam is fused and capturable (learning rate a device tensor, bias corrections in
#: float32 on the device) with graphs or without, so that eager steps (``graphs: false``) and
#: replayed ones compute the same numbers: the two optimizers' rounding alone moved a small
#: LeNet-5's test NLL by 0.8% within 12 steps (measured on the CPU, docs/performance.md "CUDA
#: graphs").  Not the CPU, whose records predate graphs and stay as they were.
CAPTURABLE_ADAM = ("cuda",)

#: the torch.compile backend of ``compile: true`` (:class:`CompiledLoss`; tests set a cheaper one)
COMPILE_BACKEND = "inductor"

#: captures and replays the steps of ``graphs: true`` (None: :class:`slabbench.graphs.CudaGraphs`,
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


def _after_step_in_step(method: Method) -> bool:
    """Whether ``method`` declares, in its own class body, that its ``after_step`` may run inside
    the captured step (:attr:`slabbench.api.Method.after_step_in_step`: a bool, or a property
    that the instance's options decide)."""
    declared = type(method).__dict__.get("after_step_in_step", False)
    return bool(declared.__get__(method, type(method)) if isinstance(declared, property) else declared)


def _point_grads(pairs) -> None:
    """Each parameter's ``.grad`` is the tensor the graph just replayed writes (hooks read it)."""
    for p, g in pairs:
        if p.grad is not g:
            p.grad = g


def fit(model: nn.Module, method: Method, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int,
        lr: float, task: str, noise_sd: float, generator: torch.Generator, member: Member | None = None,
        stop_on_divergence: bool = True, graphs: bool = False, compile_step: bool = False,
        checkpoint: Phase | None = None) -> None:
    """Minibatch training of one ordinary (unstacked) model, see :func:`fit_stacked`; ``x``,
    ``y`` live on the model's device; shuffling draws from ``generator`` (CPU), noise from
    torch's global generator."""
    member = member or Member(label="run", seed=0, target=None, method=method)
    fit_stacked(model, [member], [x], [y], epochs=epochs, batch_size=batch_size, lr=lr, task=task, noise_sd=noise_sd,
                data_gens=[generator], noise_gens=[], stop_on_divergence=stop_on_divergence, graphs=graphs,
                compile_step=compile_step, checkpoint=checkpoint)
