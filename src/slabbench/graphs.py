"""A training step captured once as a CUDA graph and replayed (``graphs: true``, CUDA only).

A small net's step on a GPU is bound by kernel launches and Python, not arithmetic: replaying one
captured graph of the whole step (minibatch gather, forward with every run's noise, loss and
penalty, backward, Adam) costs a tenth of the eager step (``benchmarks/graph_replay.py``; on an
H200 0.15-0.77 ms against 1.8-7.4 ms for LeNet-300-100 at batch 128, S = 1-3 runs).

:class:`StepGraphs` runs the core's step function ``body(key)`` for a key (the minibatch size and
whether the penalty is on: the partial last batch and a KL warm-up's β = 0 epochs get graphs of
their own): the first ``warmup`` times eagerly (on a side stream: cuBLAS and the optimizer set
themselves up outside the capture), then captures it once and replays it.  The body reads only
tensors that stay in place between replays: the minibatch index buffer, the gather buffers, β and
the learning rates as device tensors, the parameters, buffers and optimizer state.  Each run's
noise generator is registered with the graph, so a replay advances every run's own stream
exactly as an eager step does (measured: parameters identical to eager training after the same
steps, every method and stack size); counter-based noise (``noise_rng: counter``) has no
generator to register: its stream positions are a device tensor that the captured step
advances in place.

Hooks (``after_step``, ``after_epoch``) run eagerly between replays and may change any tensor in
place (a new mask, a closed-form φ), except a per-step hook that its method declares the same
in-place tensor work every step (``after_step_in_step``, l0's clamp and averaging): that one is
part of the captured step.  A hook that *replaces* a tensor the graph reads (a new parameter,
buffer or cached tensor on a layer, a changed flag) would leave the graph reading the old one,
so after hooks between replays :meth:`StepGraphs.check` compares the identity of everything the
step can read with what it was at capture, and drops the graphs when anything moved (they are
captured again; the log counts it).  A capture that fails falls back to eager steps for the rest
of the training, and the log says why.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import nn

from slabbench.api import Method

log = logging.getLogger(__name__)

#: eager runs of a step key before it is captured
WARMUP = 2


class CudaGraphs:
    """Capture and replay with :class:`torch.cuda.CUDAGraph` (the production backend)."""

    def warm(self, fn: Callable[[], None]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, fn: Callable[[], None], generators: Sequence[torch.Generator]):
        graph = torch.cuda.CUDAGraph()
        for g in generators:
            if g.device.type == "cuda":
                graph.register_generator_state(g)
        with torch.cuda.graph(graph):
            fn()
        return graph


def _tracked(value: Any) -> bool:
    """Whether an identity follows ``value``: a tensor or a container (plain values are not)."""
    return torch.is_tensor(value) or isinstance(value, (tuple, list, dict))


def _identity(value: Any) -> Any:
    """What identifies ``value`` for :func:`state_entries`: a tensor's object and storage, a
    container's tensors' with where they sit (index or key), a plain value itself; ``None`` for
    anything else (not tracked)."""
    if torch.is_tensor(value):
        return (id(value), value.data_ptr() if value.layout == torch.strided else 0)
    if isinstance(value, (tuple, list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        inner = tuple((_place(k), _identity(v)) for k, v in items if _tracked(v))
        return inner or None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return ("value", value)
    return None


def _place(key: Any) -> Any:
    """A container key as part of an identity (a tensor key by its object: ``==`` would compare values)."""
    return key if isinstance(key, (str, int, float, bool)) or key is None else ("id", id(key))


_SKIP = {"_modules", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
         "_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
         "_state_dict_pre_hooks", "_non_persistent_buffers_set", "_forward_hooks_with_kwargs",
         "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs", "_is_full_backward_hook"}


def state_entries(model: nn.Module, opt: torch.optim.Optimizer, method: Any) -> list[tuple[Any, str, Any]]:
    """(owner, attribute, identity) of everything a captured step can read: every module's
    parameters and buffers (by name) and its other attributes (tensors, containers of tensors,
    plain values such as ``training`` or a layer's mode), the optimizer's state and learning
    rates, and, when the method has a penalty, the tensors the method instance holds (a plain
    number that a hook changes and the penalty reads must live in a tensor to be seen)."""
    entries = []
    for module in model.modules():
        for key, value in vars(module).items():
            if key in _SKIP:
                continue
            if key in ("_parameters", "_buffers"):
                for name, t in value.items():
                    entries.append((value, name, _identity(t)))
                continue
            ident = _identity(value)
            if ident is not None:
                entries.append((vars(module), key, ident))
    for p, state in opt.state.items():
        entries.append((opt.state, p, _identity(state)))
    for i, group in enumerate(opt.param_groups):
        entries.append((group, "lr", _identity(group["lr"])))
        entries.append((group, "params", tuple(id(p) for p in group["params"])))
    if type(method).penalty is not Method.penalty:  # its penalty is in the step: its tensors too
        for key, value in vars(method).items():
            if _tracked(value):
                ident = _identity(value)
                if ident is not None:
                    entries.append((vars(method), key, ident))
    return entries



def _value(owner: Any, key: Any) -> Any:
    """What ``owner[key]`` holds now (``owner``: a dict such as ``vars(module)``, or a list or
    tuple that an entry's value contains)."""
    if isinstance(owner, dict):
        return owner.get(key)
    return owner[key] if key < len(owner) else None


class _Probe:
    """One entry of :func:`state_entries`, checked fast.  The object it held at capture is kept,
    so the usual case costs an identity test (and a storage pointer for a tensor, the members'
    probes for a container); a replaced object is compared by :func:`_identity`, as at capture,
    and, if that is unchanged (a hook rebuilt a tuple of the same tensors), probed from then on.
    A container that stays the same object is compared through its members' probes as long as
    it keeps its keys and its other items (``None``, numbers) stay plain; else by
    :func:`_identity`.  A param group's ``params`` is compared by its parameters' ids."""

    __slots__ = ("owner", "key", "ident", "value", "ptr", "keys", "plain", "members", "params")

    def __init__(self, owner: Any, key: Any, ident: Any):
        self.owner, self.key, self.ident = owner, key, ident
        # ``key`` may be a tensor (the optimizer state is keyed by parameters): compared with a
        # string only when it is one (``tensor == str`` would dispatch an operator)
        self.params = (isinstance(owner, dict) and isinstance(key, str) and key == "params"
                       and isinstance(owner.get("params"), list) and "lr" in owner)  # a param group
        self._rebase(_value(owner, key))

    def _rebase(self, value: Any) -> None:
        self.value, self.ptr, self.keys, self.plain, self.members = value, None, None, None, None
        if torch.is_tensor(value):
            if value.layout == torch.strided:
                self.ptr = value.data_ptr()
        elif isinstance(value, (tuple, list, dict)) and not self.params:
            items = list(value.items() if isinstance(value, dict) else enumerate(value))
            self.keys = tuple(k for k, _ in items)
            self.plain = [k for k, v in items if not _tracked(v)]
            self.members = [_Probe(value, k, _identity(v)) for k, v in items if _tracked(v)]

    def moved(self) -> bool:
        value = _value(self.owner, self.key)
        if self.params:
            return not isinstance(value, list) or tuple(id(p) for p in value) != self.ident
        if value is self.value:
            if self.ptr is not None:
                return value.data_ptr() != self.ptr
            if self.members is None:  # a plain value, or a tensor without storage
                return False
            # keys by identity (a dict may be keyed by tensors: ``==`` would compare their values)
            same_keys = len(value) == len(self.keys) and (
                not isinstance(value, dict) or all(a is b for a, b in zip(value, self.keys)))
            if same_keys and not any(_tracked(value[k]) for k in self.plain):
                return any(m.moved() for m in self.members)
        if _identity(value) != self.ident:
            return True
        self._rebase(value)
        return False


class StepGraphs:
    """Runs ``body(key)`` as replays of one captured graph per key (see the module docstring).

    ``state()`` lists what the step reads (:func:`state_entries`); ``generators`` are the runs'
    noise generators; ``backend`` captures and replays (:class:`CudaGraphs`; tests pass a
    stand-in that calls the body).  ``prepare(key)`` runs before each capture (e.g. dropping the
    gradients so that the graph owns its own); ``before_replay(key)`` and ``after_replay(key)``
    around each replay (e.g. pointing ``.grad`` at the gradients that graph writes).
    """

    def __init__(self, body: Callable[[Hashable], None], *, state: Callable[[], list], generators: Sequence[torch.Generator],
                 label: str, backend: Any = None, warmup: int = WARMUP,
                 prepare: Callable[[Hashable], None] | None = None,
                 before_replay: Callable[[Hashable], None] | None = None,
                 after_replay: Callable[[Hashable], None] | None = None):
        self.body, self.state, self.generators, self.label = body, state, list(generators), label
        self.backend = backend if backend is not None else CudaGraphs()
        self.warmup = warmup
        self.prepare, self.before_replay, self.after_replay = prepare, before_replay, after_replay
        self.graphs: dict = {}
        self.seen: Counter = Counter()
        self.entries: list | None = None
        self.disabled: str | None = None
        self.captures = 0
        self.invalidations = 0

    def run(self, key: Hashable) -> None:
        """One training step of kind ``key``."""
        if self.disabled is not None:
            self.body(key)
            return
        graph = self.graphs.get(key)
        if graph is None:
            self.seen[key] += 1
            if self.seen[key] <= self.warmup:
                self.backend.warm(lambda: self.body(key))
                return
            graph = self._capture(key)
            if graph is None:
                self.body(key)
                return
        if self.before_replay is not None:
            self.before_replay(key)
        graph.replay()
        if self.after_replay is not None:
            self.after_replay(key)

    def _capture(self, key: Hashable):
        if self.prepare is not None:
            self.prepare(key)
        try:
            graph = self.backend.capture(lambda: self.body(key), self.generators)
        except Exception as err:  # noqa: BLE001 -- any capture failure: train on eagerly, say why
            self.disable(f"capture failed ({type(err).__name__}: {err})")
            return None
        self.graphs[key] = graph
        self.captures += 1
        self.entries = [_Probe(*entry) for entry in self.state()]
        return graph

    def disable(self, why: str) -> None:
        """Eager steps from now on (``why`` goes to the log)."""
        self.disabled = why
        self.graphs.clear()
        log.warning("%s: CUDA graphs off, eager steps from here: %s", self.label, why)

    def invalidate(self) -> None:
        """Drop every graph (the model's tensors were replaced, e.g. the stack was cut): each step
        kind warms up and is captured again."""
        if self.graphs:
            self.invalidations += 1
        self.graphs.clear()
        self.seen.clear()
        self.entries = None

    def check(self) -> None:
        """After hooks: drop the graphs if anything the step reads was replaced since capture."""
        if not self.graphs or self.entries is None:
            return
        for probe in self.entries:
            if probe.moved():
                log.info("%s: %r changed outside the captured step; capturing again", self.label, probe.key)
                self.invalidate()
                return

    def summary(self) -> str:
        if self.disabled is not None:
            return f"eager ({self.disabled})"
        return f"{self.captures} graph capture(s), {self.invalidations} invalidation(s)"
