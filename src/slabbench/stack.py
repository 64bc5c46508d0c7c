"""Many runs, one model: stack S built models of one architecture along a leading run dimension.

Small networks are bound by per-step overhead, not arithmetic, so the core trains the runs of
one experiment x method (seeds, per-target trainings, fine-tunings) as one stacked model: every
parameter and buffer gains a leading dimension S, layers run one batched matmul for all runs
(:mod:`slabbench.layers.stacked`), the loss is the sum of the runs' losses (each run's gradient
is its own: no term couples runs) and Adam, being elementwise, updates each run exactly as it
would alone.

A model stacks when every module in it is a type that declares ``handles_run_dim = True`` in its
own class body (the built-in Linear and Conv2d layers, the architectures' batch norm and pooling
in :mod:`slabbench.layers.basic`), or a parameter-free container / activation listed in
:data:`NEUTRAL`.  Anything else (a plugin's own layer, torch's own pooling or batch norm, dropout)
trains run by run.

Plugins stay unaware of stacking: hooks that read or write parameters after training (export,
scores, natural masks, the model average, artefacts) are called on each run's own unstacked
copy (:func:`unstack`); per-step hooks of a method that does not declare ``hooks_per_stack =
True`` get each run's view (:func:`run_views`), gradients included.

Both declarations were once one name, ``stackable = True``, for a layer and for a method alike;
it still works as either (:func:`declares`), with a :class:`DeprecationWarning` once per class.
"""

from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch
from torch import nn

#: parameter-free modules that act elementwise or on the trailing dimensions
NEUTRAL = (nn.Sequential, nn.ReLU, nn.Tanh, nn.Identity, nn.Flatten)


#: a layer class that declares this ``True`` in its own body takes and returns ``(S, B, ...)``
#: when its ``stack`` is S > 0, run s reading slice s of every tensor (see the README)
LAYER_DECLARATION = "handles_run_dim"
#: a method class that declares this ``True`` in its own body has hooks that work on the stacked
#: model directly, so the core calls them once per stack (penalties summed over runs, per-step
#: hooks elementwise); else per-step hooks run once per run on its view
METHOD_DECLARATION = "hooks_per_stack"
#: the one name both declarations once had (deprecated)
DEPRECATED_DECLARATION = "stackable"
_warned: set[type] = set()


def declares(cls: type, name: str) -> bool:
    """Whether the class itself sets ``name`` (:data:`LAYER_DECLARATION` or
    :data:`METHOD_DECLARATION`) true, or, deprecated, ``stackable = True`` (warned once per
    class).  Inherited declarations do not count: a subclass may change what its parent's
    forward or hooks assume."""
    own = cls.__dict__
    if name in own:
        return bool(own[name])
    if DEPRECATED_DECLARATION in own:
        if cls not in _warned:
            _warned.add(cls)
            warnings.warn(f"{cls.__module__}.{cls.__qualname__} declares `stackable = True`, a deprecated name: a layer "
                          f"that handles the run dimension declares `{LAYER_DECLARATION} = True`, a method whose hooks "
                          f"run once per stack `{METHOD_DECLARATION} = True`", DeprecationWarning, stacklevel=3)
        return bool(own[DEPRECATED_DECLARATION])
    return False


def handles_run_dim(cls: type) -> bool:
    """Whether the layer class ``cls`` declares that it handles the run dimension."""
    return declares(cls, LAYER_DECLARATION)


def hooks_per_stack(cls: type) -> bool:
    """Whether the method class ``cls`` declares that its hooks run once per stack."""
    return declares(cls, METHOD_DECLARATION)


def unstackable_modules(model: nn.Module) -> list[str]:
    """Names of the module types in ``model`` that cannot be stacked (empty: it stacks)."""
    bad = set()
    for module in model.modules():
        kind = type(module)
        if kind in NEUTRAL or handles_run_dim(kind):
            continue
        bad.add(kind.__name__)
    return sorted(bad)


def _restack(model: nn.Module, stack: int, flatten_shift: int) -> None:
    for module in model.modules():
        if isinstance(module, nn.Flatten):
            module.start_dim += flatten_shift
        elif hasattr(module, "restack"):
            module.restack(stack)
        elif handles_run_dim(type(module)) or "stack" in vars(module):
            module.stack = stack


def _tensors(model: nn.Module):
    """(module, kind, name, tensor) of every parameter and buffer held directly by a module."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                yield module, "p", name, p
        for name, b in module._buffers.items():
            if b is not None:
                yield module, "b", name, b


def stack_modules(models: Sequence[nn.Module]) -> nn.Module:
    """One model holding ``models`` (same architecture, e.g. one per seed) along a leading run
    dimension S = len(models).  Input ``(S, B, ...)``, output ``(S, B, ...)``.  The models are
    not changed; the stacked model owns copies of their tensors."""
    if not models:
        raise ValueError("stack_modules needs at least one model")
    bad = unstackable_modules(models[0])
    if bad:
        raise TypeError(f"cannot stack modules of type {', '.join(bad)}")
    memo: dict[int, torch.Tensor] = {}
    per_model = [list(_tensors(m)) for m in models]
    for entries in zip(*per_model, strict=True):
        _, kind, name, first = entries[0]
        if any(e[2] != name or e[3].shape != first.shape for e in entries):
            raise ValueError(f"models differ at {name!r}: cannot stack")
        data = torch.stack([e[3].detach() for e in entries])
        memo[id(first)] = nn.Parameter(data, requires_grad=first.requires_grad) if kind == "p" else data
    stacked = copy.deepcopy(models[0], memo)
    _restack(stacked, len(models), +1)
    return stacked


def _copy_run(stacked: nn.Module, s: int, share: bool) -> nn.Module:
    memo: dict[int, torch.Tensor] = {}
    for _, kind, _, t in _tensors(stacked):
        part = t.detach()[s] if share else t.detach()[s].clone()
        memo[id(t)] = nn.Parameter(part, requires_grad=t.requires_grad) if kind == "p" else part
    single = copy.deepcopy(stacked, memo)
    _restack(single, 0, -1)
    return single


def unstack(stacked: nn.Module, s: int) -> nn.Module:
    """Run ``s`` of a stacked model as an ordinary model with its own copies of the tensors."""
    return _copy_run(stacked, s, share=False)


class RunViews(list):
    """One ordinary model per run of a stacked model (a list, in run order), whose tensors share
    storage with the stacked model's slices: an in-place change through a view (a clamp, a new
    mask) changes that run in the stack.  After :meth:`share_grads`, each view parameter's
    ``.grad`` is its run's slice of the stacked parameter's gradient, so a hook that reads
    ``layer.weight.grad`` sees what it would see training alone."""

    def __init__(self, stacked: nn.Module):
        params = [t for _, kind, _, t in _tensors(stacked) if kind == "p"]
        n = params[0].shape[0] if params else next(t for _, _, _, t in _tensors(stacked)).shape[0]
        super().__init__(_copy_run(stacked, s, share=True) for s in range(n))
        # (stacked parameter, its view in every run): both walks visit the same modules in order
        per_view = [[t for _, kind, _, t in _tensors(v) if kind == "p"] for v in self]
        self._pairs = [(p, [vp[i] for vp in per_view]) for i, p in enumerate(params)]
        self._seen: list = [None] * len(params)

    def share_grads(self) -> None:
        """Point every view parameter's ``.grad`` at its run's slice of the stacked gradient
        (``None`` where the stacked parameter has none).  Cheap when the stacked gradients are
        the same tensors as at the last call (zeroed in place, not set to ``None``): nothing
        is redone then."""
        for i, (p, per_run) in enumerate(self._pairs):
            g = p.grad
            if g is self._seen[i]:
                continue
            self._seen[i] = g
            for s, vp in enumerate(per_run):
                vp.grad = None if g is None else g[s]


def run_views(stacked: nn.Module) -> RunViews:
    """:class:`RunViews` of ``stacked``: one ordinary model per run sharing the stack's storage,
    for hooks that change state in place or read gradients (after :meth:`RunViews.share_grads`)."""
    return RunViews(stacked)


@torch.no_grad()
def select_runs(stacked: nn.Module, keep: Sequence[int]) -> dict[int, nn.Parameter]:
    """Cut a stacked model to its runs ``keep`` (positions, in that order), in place: every
    parameter and buffer is replaced by its kept slices (new parameters: autograd ties a
    parameter to its shape) and the layers learn their new S (``restack``).  Returns
    {id(old parameter): new parameter}, for an optimizer that holds the old ones."""
    idx = torch.tensor(list(keep), dtype=torch.long)
    new: dict[int, torch.Tensor] = {}
    for module, kind, name, t in list(_tensors(stacked)):
        if id(t) not in new:  # a tensor shared by two modules is cut once
            part = t.detach().index_select(0, idx.to(t.device))
            new[id(t)] = nn.Parameter(part, requires_grad=t.requires_grad) if kind == "p" else part
        (module._parameters if kind == "p" else module._buffers)[name] = new[id(t)]
    _restack(stacked, len(idx), 0)
    return {k: v for k, v in new.items() if isinstance(v, nn.Parameter)}


def stacked_runs(model: nn.Module) -> int:
    """S for a stacked model, 0 for an ordinary one."""
    return max((getattr(m, "stack", 0) for m in model.modules()), default=0)
