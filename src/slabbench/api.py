"""Plugin contracts: the base classes that method and dataset files subclass.

A *method* file in ``methods/`` exposes ``Method``, a subclass of :class:`Method`; its
name is the file stem.  A *dataset* file in ``datasets/`` exposes ``Dataset``, a subclass
of :class:`Dataset`.  Both declare their options as a frozen dataclass ``Params`` with
defaults; unknown keys are an error (:func:`make_params`).

The core (:mod:`slabbench.train`) owns the loss convention

    loss = mean NLL over the minibatch + beta(t) * penalty / N_train,

the optimiser loop, masking, fine-tuning and every metric.  Metrics are measured on the
network returned by :meth:`Method.export`, never reported by the plugin.
"""

from __future__ import annotations

import dataclasses
import difflib
import operator
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

TASKS = ("classification", "regression")
SPLITS = ("train", "val", "test")


class PluginError(ValueError):
    """A plugin was given options it does not declare, or values it cannot use."""


class MethodOutputError(ValueError):
    """A method hook returned something the core cannot use (see :mod:`slabbench.outputs`)."""


@dataclass(frozen=True)
class NoParams:
    """A plugin without options."""


def _suggest(bad: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(bad, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_params(cls: type, options: Mapping[str, Any] | None, owner: str) -> Any:
    """Build the frozen dataclass ``cls`` from ``options``; unknown keys and bad types fail.

    ``owner`` names the plugin in the error message, e.g. ``"method 'magnitude'"``.
    """
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in options:
        if key not in fields:
            valid = sorted(fields)
            raise PluginError(
                f"unknown option {key!r} for {owner}{_suggest(key, valid)}; "
                f"valid options: {', '.join(valid) if valid else '(none)'}"
            )
    for key, value in options.items():
        _check_type(owner, key, value, fields[key].type)
    unset = [f.name for f in fields.values() if f.init and f.name not in options
             and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if unset:
        raise PluginError(f"{owner} needs option(s) {', '.join(map(repr, unset))}: its Params gives no default and the "
                          f"config sets none (a plugin gives every field of its Params a default)")
    return cls(**options)


_TYPE_NAMES = {"int": int, "float": (int, float), "bool": bool, "str": str}


def yaml_number_hint(value: Any) -> str:
    """For a string such as ``"1e-3"``, which YAML 1.1 reads as a string (its floats need a dot
    and a signed exponent), the hint " (YAML reads numbers like 1e-3 as strings; write 1.0e-3)"
    with ``value`` written as YAML's float; for another string that reads as a number, such as
    ``"300.0"``, a hint that Snakemake's ``--config`` passes values nested in a mapping as
    strings; else ""."""
    if not isinstance(value, str):
        return ""
    if re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", value):
        mantissa, exponent = f"{float(value):.1e}".split("e")
        return f" (YAML reads numbers like 1e-3 as strings; write {mantissa}e{int(exponent):+d})"
    try:
        float(value)
    except ValueError:
        return ""
    return (" (a number in quotes: Snakemake's --config passes a value nested in a mapping, such as "
            "method_params={m: {x: 1.5}}, as a string; set it in a --configfile instead)")


def _check_type(owner: str, key: str, value: Any, annotation: Any) -> None:
    # a string (annotations of a module with `from __future__ import annotations`), a class, or a
    # typing form (str() of Optional[int] is 'typing.Optional[int]', of int | None 'int | None')
    ann = annotation if isinstance(annotation, str) else annotation.__name__ if isinstance(annotation, type) else str(annotation)
    ann = re.sub(r"^(typing\.)?Optional\[(\w+)\]$", r"\2|None", ann.replace(" ", ""))  # Optional[int]: int | None
    allowed = ann.split("|")
    if value is None and "None" in allowed:
        return
    for name in allowed:
        if name == "None":
            continue  # None itself passed above
        expected = _TYPE_NAMES.get(name)
        if expected is None:
            return  # complex annotation: leave the check to the plugin
        if isinstance(value, bool) and name != "bool":
            continue
        if isinstance(value, expected):
            return
    hint = yaml_number_hint(value) if "float" in allowed else ""
    valid = " or ".join("null" if name == "None" else name for name in allowed)  # YAML writes None as null
    raise PluginError(f"option {key!r} of {owner} must be {valid}, got {value!r} ({type(value).__name__}){hint}")


def check_choice(owner: str, key: str, value: Any, valid: tuple) -> None:
    """Raise :class:`PluginError` unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise PluginError(f"option {key!r} of {owner} is {value!r}; valid values: {', '.join(map(str, valid))}")


def adam(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with coupled L2 ``weight_decay``; the fused kernel where torch has one for the
    parameters' device (same update, fewer kernel launches: small nets are launch-bound)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def adam_scaled(model, lr: float, names: tuple[str, ...], factor: float) -> torch.optim.Optimizer:
    """:func:`adam` over ``model``'s parameters, those whose attribute name (the last part of
    the dotted name) is in ``names`` at ``lr * factor``, the others at ``lr`` (e.g. spike_slab's
    slab scales ρ, l0's gates log α)."""
    scaled = [q for n, q in model.named_parameters() if n.rsplit(".", 1)[-1] in names]
    ids = {id(q) for q in scaled}
    rest = [q for q in model.parameters() if id(q) not in ids]
    return adam([{"params": rest}, {"params": scaled, "lr": lr * factor}], lr)


# --------------------------------------------------------------------------- datasets


def _as_index(value: Any) -> int | None:
    """``value`` as an int when it is an integer of Python or numpy (``operator.index`` takes it)
    and not a bool, else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a data set.

    ``input_shape`` excludes the batch dimension, e.g. ``(1, 28, 28)`` or ``(200,)``.
    ``outputs`` is the number of classes (classification) or 1 (regression).
    ``sizes`` maps each split ("train", "val", "test") to its number of examples.
    ``true_support`` holds the indices (0-based, into the flattened input) of the relevant
    input features when known (simulations), else ``None``; FNR / FPR are reported from it.
    ``feature_shape``: the input features as an image (e.g. ``(28, 28)``) for PIP maps, else
    ``None`` (one bar per feature).
    ``replicate_per_seed``: ``True`` when each run seed draws a new data set (a simulation's
    replicate); ``False`` (the default, real data) when every seed gets the same fixed splits.
    The dataset contract test (``tests/test_dataset_contract.py``) checks either promise.
    """

    name: str
    task: str
    input_shape: tuple[int, ...]
    outputs: int
    sizes: Mapping[str, int]
    true_support: tuple[int, ...] | None = None
    feature_shape: tuple[int, ...] | None = None
    replicate_per_seed: bool = False

    def __post_init__(self):
        # a support outside the inputs would only show at the end of training, as an FPR above 1
        if self.true_support is not None:
            n = self.n_features
            bad = [i for i in self.true_support if (j := _as_index(i)) is None or not 0 <= j < n]
            if bad:
                raise PluginError(f"data set {self.name!r}: true_support must hold integers that index the inputs 0..{n - 1} "
                                  f"(0-based, into the flattened input of shape {tuple(self.input_shape)}); these do not: "
                                  f"{', '.join(map(repr, bad))}")

    @property
    def n_features(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n


class Dataset:
    """Base class of a dataset plugin.

    Subclasses set ``Params`` and implement :meth:`spec` and :meth:`load`.  ``seed`` is
    the run seed: simulations draw a replicate data set from it (and declare
    ``replicate_per_seed=True`` in their spec); real data sets keep a fixed split and ignore it.
    """

    Params: ClassVar[type] = NoParams
    name: ClassVar[str] = ""

    def __init__(self, params: Any, seed: int = 0):
        self.params = params
        self.seed = seed

    def prepare(self) -> None:
        """Fetch or locate raw files once (optional).  Fail with a clear message if absent."""

    def spec(self) -> DatasetSpec:
        raise NotImplementedError

    def load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` for ``split`` in ``("train", "val", "test")``.

        ``x``: float32, shape ``(n, *input_shape)``.  ``y``: int64 class labels of shape
        ``(n,)`` (classification) or float32 targets of shape ``(n,)`` (regression).
        """
        raise NotImplementedError


# --------------------------------------------------------------------------- methods


@dataclass
class TrainContext:
    """Facts about a training run that a method may need (read-only for the method).

    ``n_train``: number of training points N (the penalty is divided by it).
    ``steps_per_epoch``: optimiser steps per epoch.  ``target``: the sparsity target the
    current training run aims at, for methods whose ``trains_per_target`` is true, else ``None``.
    """

    task: str
    n_train: int
    epochs: int
    steps_per_epoch: int
    lr: float
    device: torch.device
    spec: DatasetSpec
    target: float | None = None
    extras: dict = field(default_factory=dict)


class Method:
    """Base class of a method plugin.  The defaults describe plain (dense) training.

    Hooks, in the order the core calls them:

    * :meth:`build` turns the plain architecture (built from ``MaskedLinear`` /
      ``MaskedConv2d`` layers, see :mod:`slabbench.layers`) into the training-time model;
      keep the module names so scores line up with the exported network.
    * :meth:`optimizer` makes the optimiser (default Adam at the experiment's lr).
    * per epoch, the optimiser's learning rates are its initial ones times :meth:`lr_factor`;
      per minibatch: ``loss = mean NLL + beta(epoch) * penalty(model) / N``; then
      :meth:`after_step` (clamps, schedules, closed-form updates).
    * :meth:`export` returns the plain network that every metric is measured on.
    * :meth:`scores` gives one importance per prunable weight of that network (higher =
      keep); the core keeps the global top ``1 - s`` for each target ``s``.
    * :meth:`natural_mask` gives the method's own selection (Bayesian methods), or ``None``.
    * :meth:`sampled_predict` gives the method's own unmasked posterior-sampling predictor
      (reported beside the natural selection), or ``None``.
    """

    Params: ClassVar[type] = NoParams
    name: ClassVar[str] = ""
    #: "global" (one threshold over all prunable weights) or "layerwise".
    prune_scope: str = "global"
    #: ``True`` in a method's own class body (not inherited) when every hook works on a stacked
    #: model directly (the penalty a sum over runs, per-step hooks elementwise, no ``.item()``
    #: or branching on tensor values): the core then calls the hooks once per stack; else a
    #: method's per-step hooks run once per run on that run's view (see :mod:`slabbench.stack`;
    #: formerly ``stackable``, still read, deprecated).
    hooks_per_stack: ClassVar[bool] = False
    #: a ``hooks_per_stack`` method that trains per target (:meth:`trains_per_target`) sets this to
    #: ``True`` in its own class body when ``ctx.target`` reaches training only through the
    #: built model's buffers (e.g. a prior stored per layer), never through what a hook reads
    #: from the instance: the core then stacks runs of different targets together (their
    #: buffers stack per run) and calls the hooks once with the first run's instance.  Else
    #: every target trains in stacks of its own.
    target_in_model: ClassVar[bool] = False
    #: names of the instance attributes that hold per-run state while the hooks run once per
    #: stack: tensors, or lists / tuples / dicts of tensors (``None`` while unset), each with the
    #: run dimension first (e.g. l0's parameter averages, ``("_ema",)``).  When the core cuts a
    #: stack to some of its runs (restarts' screening) it calls :meth:`select_runs`, which cuts
    #: these; per-run state in the model's parameters and buffers is cut by the core itself.
    run_state: ClassVar[tuple[str, ...]] = ()
    #: ``True`` in a method's own class body when :meth:`after_step` does the same tensor work
    #: every step, in place: it reads neither its ``step`` and ``epoch`` nor any Python value that
    #: changes between steps, keeps no Python counter, reads no tensor value on the host
    #: (``.item()``, branching on values) and replaces no tensor.  The core may then run it as
    #: the last part of the training step itself (hooks per run: on each run's view, as between
    #: steps), where a CUDA graph captures and replays it with the step (no launches and no guard
    #: between steps).  Default: it runs after the step (and between replays).  A method whose
    #: options decide may make it a property of the instance (spike_slab: its hook does nothing
    #: unless φ is updated every few steps).
    after_step_in_step: ClassVar[bool] = False

    def __init__(self, params: Any, ctx: TrainContext):
        self.params = params
        self.ctx = ctx

    @classmethod
    def trains_per_target(cls, params: Any) -> bool:
        """True when training itself depends on the sparsity target (e.g. gradual pruning):
        the core then trains once per target and sets ``ctx.target``."""
        return False

    def build(self, model: nn.Module) -> nn.Module:
        return model

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return adam(model.parameters(), lr)

    def beta(self, epoch: int) -> float:
        """Weight of the penalty at ``epoch`` (0-based); KL warm-up lives here."""
        return 1.0

    def lr_factor(self, epoch: int) -> float:
        """Learning-rate multiplier at ``epoch`` (0-based): at the start of every epoch the core
        sets each of the optimiser's parameter groups to its initial lr times this (a schedule,
        e.g. sparse VD's official linear decay).  One value for every run of a stack: it may
        depend on the epoch and the method's options, not on the run.  Default 1 (constant)."""
        return 1.0

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """Penalty in nats for the whole model (KL or expected L0), or ``None``."""
        return None

    def after_step(self, model: nn.Module, step: int, epoch: int) -> None:
        """Called after every optimiser step (0-based global step)."""

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called after every epoch."""

    def export(self, model: nn.Module) -> nn.Module:
        """Return the plain network (masked layers only) to evaluate, prune and fine-tune."""
        return model

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Importance per prunable weight, keyed by the exported network's parameter names
        (``"fc1.weight"``), each of that weight's shape; ``None`` = the method never prunes.
        A value may be a pair ``(primary, tiebreak)`` of such tensors: the core then ranks
        lexicographically (ties in ``primary``, e.g. weights sharing a gate, by ``tiebreak``)."""
        return None

    def natural_mask(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The method's own keep-mask per prunable weight (``None`` if it has no natural rule),
        keyed ``"<layer>.weight"``; optionally also ``"<layer>.bias"`` (0/1 of the bias's shape)
        for biases that go with what the rule drops (a unit under a shared gate)."""
        return None

    def bma_predict(self, model: nn.Module, masks: dict[str, torch.Tensor] | None, x: torch.Tensor) -> torch.Tensor | None:
        """Bayesian model average restricted to ``masks`` (``None`` = no mask): class
        probabilities (n, C), or for regression the predictive means of every sampled network
        (n_samples, n) (an averaged mean (n,) also works, without an NLL).  ``None`` if the
        method has no posterior."""
        return None

    def sampled_predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The method's own predictor that averages networks sampled from its posterior over
        every weight, nothing masked (e.g. Bai et al.'s reported test RMSE): class
        probabilities (n, C) or predictive means (n,).  Called once per trained model, its
        metrics recorded beside the natural selection as ``*_sampled``.  ``None`` (the
        default): the method has none."""
        return None

    def extra_artifacts(self, model: nn.Module) -> dict[str, Any]:
        """Tensors worth saving for figures (e.g. inclusion probabilities)."""
        return {}

    def select_runs(self, idx: torch.Tensor) -> None:
        """Keep only the runs ``idx`` (positions in the stack, int64, in their new order) of the
        per-run state this instance holds for a stack: the core calls it when it cuts the stack
        (restarts' screening).  Default: every attribute named in :attr:`run_state`, cut by
        :func:`take_runs`.  Override it for state kept otherwise."""
        for name in self.run_state:
            setattr(self, name, take_runs(getattr(self, name), idx))


def take_runs(value: Any, idx: torch.Tensor) -> Any:
    """``value`` (a tensor with the run dimension first, a list / tuple / dict of such values, or
    ``None``) with only the runs ``idx``, in that order."""
    if value is None:
        return None
    if torch.is_tensor(value):
        return value.index_select(0, idx.to(value.device))
    if isinstance(value, (list, tuple)):
        return type(value)(take_runs(v, idx) for v in value)
    if isinstance(value, dict):
        return {k: take_runs(v, idx) for k, v in value.items()}
    raise TypeError(f"per-run state must be tensors (or lists, tuples, dicts of them), got {type(value).__name__}")
