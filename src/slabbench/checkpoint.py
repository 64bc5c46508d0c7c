"""Resumable training jobs: a job's training state saved at the end of an epoch every so often,
so that a job stopped by a time limit, a signal or a crash goes on from there when it is run
again, and gives the records it would have given had it never stopped.

A job (:func:`slabbench.train.run_stack`) trains in phases, one per call of
:func:`slabbench.engine.fit_stacked`: its stacks, then their fine-tuning.  Each phase's state at
the end of an epoch is everything its next epoch reads: the (stacked) model's parameters and
buffers, the optimizer's state, the state each method instance keeps in its attributes, every
random generator the phase draws from (data orders, per-run noise, torch's global one), the runs
a screening kept, what it recorded about them and the state of those it stopped, the epoch and
step; and per job, how its runs were split between stacks (which depends on the memory free
when it starts).  A finished phase keeps its final state, so a resumed job skips it; what the
job computes between phases (measuring, pruning) is recomputed from those states,
deterministically.

The file is written atomically (never half-written) and flushed to the disk, and only at the
end of an epoch once ``every`` seconds have passed since the last write (or the start): a short
job writes none.  It is used only by a process whose job is the same: the same run specs, the
same source code (slabbench and the plugin folders, by content), the same torch, Python and
numpy, the same device; otherwise it is set aside with a warning that says what differs and the
job starts afresh.  It is a pickle: load only your own.  The caller removes it once the job's
outputs are written (and flushed to the disk as well)."""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from slabbench._plugins import plugin_dir
from slabbench.io import save_tensors

log = logging.getLogger(__name__)

#: the layout of a checkpoint file; a file of another layout is set aside
FORMAT = 1

#: attributes of a method instance that its constructor sets from the job and never change
#: (restored by construction, not from the file)
_FIXED = ("params", "ctx")


def code_digest(*classes: type) -> str:
    """sha256 of the source that trains a job: every ``.py`` file of the slabbench package and
    of the plugin folders (``methods/``, ``datasets/``: a plugin may import another), and the
    files that define ``classes`` and the classes they derive from (a method and a data set
    defined elsewhere)."""
    root = Path(__file__).resolve().parent
    files = sorted(root.rglob("*.py"))
    for kind in ("methods", "datasets"):
        folder = plugin_dir(kind)
        files += sorted(Path(folder).resolve().glob("*.py")) if folder else []
    for cls in classes:
        for base in cls.__mro__:
            if base.__module__ in ("builtins", "abc", "typing"):
                continue
            try:
                f = Path(inspect.getsourcefile(base)).resolve()
            except (TypeError, OSError):  # a class defined in an interactive session: its name only
                f = Path(f"<{base.__module__}.{base.__qualname__}>")
            if f not in files:
                files.append(f)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes() if f.is_file() else b"")
    return h.hexdigest()


class NotResumable(RuntimeError):
    """A phase's state cannot be saved so that it is restored as it was (the message says why)."""


def walk(value: Any, leaf: Callable[[Any, str], Any], where: str = "") -> Any:
    """``value`` with ``leaf(item, where)`` in place of every item that is not a list, tuple or
    dict, containers walked and rebuilt as their own type (a namedtuple stays one, a
    defaultdict keeps its default, a Counter its counts); ``where``: the item's path, for
    messages.  A container that cannot be rebuilt so, or whose default cannot be saved (a
    lambda), raises :class:`NotResumable` naming it."""
    if not isinstance(value, (dict, list, tuple)):
        return leaf(value, where)
    if isinstance(value, dict):
        items = [(k, walk(v, leaf, f"{where}[{k!r}]")) for k, v in value.items()]
    else:
        items = [walk(v, leaf, f"{where}[{i}]") for i, v in enumerate(value)]
    try:
        return _rebuild(value, items)
    except Exception as err:  # noqa: BLE001 (whatever a subclass's constructor raises)
        raise NotResumable(f"{where or 'a value'} is a {type(value).__name__} that cannot be rebuilt or saved "
                           f"({type(err).__name__}: {err})") from err


def _rebuild(value: dict | list | tuple, items: list) -> Any:
    """A container of ``value``'s type holding ``items`` (key-value pairs for a dict)."""
    if type(value) in (dict, list, tuple):
        return type(value)(items)
    if isinstance(value, tuple):
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    out = copy.copy(value)  # its type and attributes (a defaultdict's default_factory), then the
    if isinstance(value, dict):  # items set as they were: the plain methods, not the subclass's
        dict.clear(out)  # (Counter.update adds counts)
        dict.update(out, items)
    else:
        list.clear(out)
        list.extend(out, items)
    factory = getattr(value, "default_factory", None)
    if factory is not None:
        pickle.dumps(factory)  # it is written with the state: fail here, naming the attribute
    return out


def _cpu(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` on the CPU that later training does not change."""
    return t.detach().to("cpu", copy=True)


class _Ref:
    """A method attribute's reference to one of the model's parameters, buffers or modules,
    saved by name and resolved against the model it is restored into."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name


class _Saving:
    """What :func:`method_state` has seen: the model's objects (saved as references), and each
    tensor it copied (one copy per tensor, so that two attributes holding one tensor hold one
    again when restored) by identity and by memory."""

    def __init__(self, model: nn.Module):
        self.refs: dict[int, _Ref] = {}
        for name, m in model.named_modules():
            self.refs.setdefault(id(m), _Ref("module", name))
        for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            self.refs.setdefault(id(t), _Ref("tensor", name))
        self.model_memory = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()] if t.numel()}
        self.copies: dict[int, torch.Tensor] = {}  # id of a method's tensor -> its copy
        self.memory: dict[int, int] = {}  # storage address -> id of the tensor copied from it

    def value(self, value: Any, where: str) -> Any:
        """``value`` with the model's own objects as :class:`_Ref` and other tensors copied to
        the CPU (containers walked)."""
        return walk(value, self._item, where)

    def _item(self, value: Any, where: str) -> Any:
        if id(value) in self.refs:
            return self.refs[id(value)]
        if isinstance(value, torch.Tensor):
            if id(value) in self.copies:
                return self.copies[id(value)]
            memory = value.untyped_storage().data_ptr() if value.numel() else None
            if memory in self.model_memory:
                raise NotResumable(f"{where} is a view of the model's tensors that is not one of its parameters or buffers")
            if memory is not None and self.memory.setdefault(memory, id(value)) != id(value):
                raise NotResumable(f"{where} shares memory with another tensor the method holds (a view)")
            self.copies[id(value)] = _cpu(value)
            return self.copies[id(value)]
        if isinstance(value, nn.Module):
            raise NotResumable(f"{where} is a module that is not part of the model")
        return value


def _load_value(value: Any, model: nn.Module, device: torch.device, loaded: dict[int, torch.Tensor]) -> Any:
    def item(v: Any, _where: str) -> Any:
        if isinstance(v, _Ref):
            return model.get_submodule(v.name) if v.kind == "module" else _named_tensor(model, v.name)
        if isinstance(v, torch.Tensor):  # (one tensor where one was saved)
            return loaded.setdefault(id(v), v.to(device, copy=True))
        return v

    return walk(value, item)


def _named_tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner), attr)


def method_states(methods: list[Any], model: nn.Module) -> list[dict[str, Any]]:
    """The state each method instance keeps in its attributes (all but its options and
    context), with its references to ``model``'s parameters, buffers and modules kept as
    references and a tensor that several attributes (or instances) hold saved once.
    :class:`NotResumable` names an attribute that cannot be restored as it is."""
    saving = _Saving(model)
    return [{k: saving.value(v, f"{type(m).__name__}.{k}") for k, v in vars(m).items() if k not in _FIXED}
            for m in methods]


def unpicklable_attribute(states: list[dict[str, Any]]) -> str | None:
    """The first method attribute of ``states`` (:func:`method_states`) that pickle cannot
    write, named with its run and the error; None when every one can."""
    for run, state in enumerate(states):
        for key, value in state.items():
            try:
                pickle.dumps(value)
            except Exception as err:  # noqa: BLE001 (pickle raises many kinds)
                return (f"attribute {key!r} of the method of run {run} is a {type(value).__name__} that cannot be "
                        f"saved ({type(err).__name__}: {err}); keep plain values, tensors and containers of them")
    return None


def restore_method_states(methods: list[Any], states: list[dict[str, Any]], model: nn.Module,
                          device: torch.device) -> None:
    loaded: dict[int, torch.Tensor] = {}
    for m, state in zip(methods, states):
        vars(m).update({k: _load_value(v, model, device, loaded) for k, v in state.items()})


def _tables(model: nn.Module):
    """(name, kind, table, key) of every parameter and buffer slot of ``model`` (a buffer may be
    None, and non-persistent: ``state_dict`` would miss it)."""
    for mname, m in model.named_modules():
        for kind, table in (("parameter", m._parameters), ("buffer", m._buffers)):
            for key in table:
                yield (f"{mname}.{key}" if mname else key), kind, table, key


def model_tensors(model: nn.Module) -> dict[str, tuple[str, torch.Tensor | None]]:
    """CPU copies of every parameter and buffer of ``model`` by name, with their kind."""
    return {name: (kind, None if table[key] is None else _cpu(table[key]))
            for name, kind, table, key in _tables(model)}


def restore_model_tensors(model: nn.Module, saved: dict[str, tuple[str, torch.Tensor | None]], device: torch.device) -> None:
    """Put :func:`model_tensors`' ``saved`` back into ``model``: parameters in place (the
    optimizer holds them), buffers in place where their shape is the same, else rebound.
    Checked whole before anything changes (:class:`NotResumable` names what does not fit)."""
    slots = list(_tables(model))
    names = {name for name, *_ in slots}
    if names != set(saved):
        extra, missing = sorted(set(saved) - names), sorted(names - set(saved))
        raise NotResumable(f"the model's tensors are not the checkpoint's (only in the checkpoint: {extra[:3]}; "
                           f"only in the model: {missing[:3]})")
    for name, kind, table, key in slots:
        live, (saved_kind, value) = table[key], saved[name]
        if kind == "parameter" and (saved_kind != kind or live is None or value is None or live.shape != value.shape
                                    or live.dtype != value.dtype):
            what = lambda t: None if t is None else f"{tuple(t.shape)} {t.dtype}"  # noqa: E731
            raise NotResumable(f"parameter {name}: {what(live)} in the model, {what(value)} in the checkpoint")
    with torch.no_grad():
        for name, kind, table, key in slots:
            live, value = table[key], saved[name][1]
            if live is not None and value is not None and live.shape == value.shape and live.dtype == value.dtype:
                live.copy_(value)
            else:
                table[key] = None if value is None else value.to(device)


def cpu_copy(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU (containers walked): a snapshot that later
    training does not change."""
    return walk(value, lambda v, _: _cpu(v) if isinstance(v, torch.Tensor) else v)


class Phase:
    """One phase (one :func:`slabbench.engine.fit_stacked` call) of a job's checkpoint: its
    saved state, if any, and what the phase saves."""

    def __init__(self, job: "JobCheckpoint", name: str):
        self.job, self.name = job, name
        self.saved = job.state(name)
        self.checked = False  # whether the methods' attributes were tried with pickle (first keep)
        #: wall time the phase trained before this process (in earlier processes)
        self.prior_seconds = float(self.saved["seconds"]) if self.saved else 0.0

    def keep(self, state: dict[str, Any], write: bool) -> None:
        """Hold ``state`` as the phase's latest; write the file when ``write`` and the interval
        has passed.  The first state held is tried at once for method attributes that cannot be
        saved (a lambda, an open file): checkpoints go off then, naming the attribute, not at the
        first write, which a short job never reaches."""
        if not self.checked:
            self.checked = True
            bad = unpicklable_attribute(state.get("methods") or [])
            if bad:
                self.off(bad)
                return
        self.job.keep(self.name, state)
        if write and self.job.due():
            self.job.write(f"{self.name}: after epoch {state['epoch']} of {state['epochs']}")

    def due(self) -> bool:
        return self.job.due()

    def off(self, why: str) -> None:
        self.job.off(why)


class JobCheckpoint:
    """The checkpoint file of one training job at ``path``, written at the end of an epoch once
    ``every`` seconds have passed since the last write (0: every epoch).  ``identity``: what must
    be equal for a saved state to be resumed (run specs, code digest, versions, device); a file
    with another identity, another layout or that cannot be read is set aside (the log says
    why) and the job starts afresh."""

    def __init__(self, path: str | os.PathLike, every: float, identity: dict[str, Any]):
        if not every >= 0:
            raise ValueError(f"checkpoint interval: {every!r} seconds; it must be a number >= 0")
        self.path, self.every, self.identity = Path(path), float(every), identity
        self.phases: dict[str, dict[str, Any]] = {}  #: phase name -> its last saved state
        #: what -> the job's runs (positions) in each of its stacks, as first planned: how runs
        #: are split between stacks depends on the memory free when the job starts, and a resumed
        #: job must split them as the job it goes on from did
        self.plans: dict[str, list[list[int]]] = {}
        self.resumed = 0  #: how many times this job was resumed from the file (0: a fresh start)
        self.last_write = time.monotonic()
        # a write cut short by a kill leaves its temporary file (atomic_path's) behind
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
        self._read()

    def _read(self) -> None:
        if not self.path.exists():
            return
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 (any damage: start afresh)
            log.warning("checkpoint %s cannot be read (%s): the job starts afresh", self.path, err)
            return
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            log.warning("checkpoint %s has another layout (format %r, this code writes %d): the job starts afresh",
                        self.path, data.get("format") if isinstance(data, dict) else None, FORMAT)
            return
        saved = data.get("identity", {})
        differs = sorted(k for k in set(saved) | set(self.identity) if saved.get(k) != self.identity.get(k))
        if differs:
            log.warning("checkpoint %s was written by another job or code (its %s differ): the job starts afresh",
                        self.path, ", ".join(differs))
            return
        self.phases, self.plans, self.resumed = data["phases"], data["plans"], int(data["resumed"]) + 1
        done = [n for n, s in self.phases.items() if s["epoch"] == s["epochs"]]
        going = {n: s["epoch"] for n, s in self.phases.items() if s["epoch"] < s["epochs"]}
        log.info("resuming from checkpoint %s (resumed %d time(s) now): %s", self.path, self.resumed,
                 "; ".join([f"{n}: done" for n in done] + [f"{n}: from epoch {e}" for n, e in going.items()]))

    def phase(self, name: str) -> Phase:
        return Phase(self, name)

    def plan(self, what: str, chunks: list[list[int]]) -> list[list[int]]:
        """The stacks of ``what``: as saved, if the job went that far before, else ``chunks``."""
        saved = self.plans.setdefault(what, [list(c) for c in chunks])
        if saved != chunks:
            log.info("%s: runs split into stacks as in the checkpoint (%d stack(s); %d planned now)",
                     what, len(saved), len(chunks))
        return saved

    def off(self, why: str) -> None:
        """Write no more (a phase's state cannot be saved faithfully): say so once."""
        if self.every != float("inf"):
            log.warning("checkpoints off for this job (%s): if it stops, it starts afresh", why)
        self.every = float("inf")
        self.path.unlink(missing_ok=True)

    def state(self, phase: str) -> dict[str, Any] | None:
        """The saved state of ``phase``, if any."""
        return self.phases.get(phase)

    def due(self) -> bool:
        return time.monotonic() - self.last_write >= self.every

    def keep(self, phase: str, state: dict[str, Any]) -> None:
        """Hold ``state`` (a CPU snapshot) as ``phase``'s latest; written with the next :meth:`write`."""
        self.phases[phase] = state

    def write(self, what: str = "") -> None:
        """Write every phase's latest state, atomically (a state that cannot be pickled, e.g. a
        plugin's attribute, switches checkpoints off for the job instead); ``what``: the log's
        words for the state written."""
        try:
            save_tensors({"format": FORMAT, "identity": self.identity, "resumed": self.resumed,
                          "plans": self.plans, "phases": self.phases}, self.path, durable=True)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            self.off(f"its state cannot be written: {err}")
            return
        except OSError as err:  # (a full disk, a file system that cannot flush): the job trains on
            self.off(f"the file cannot be written: {err}")
            return
        self.last_write = time.monotonic()
        log.info("checkpoint written: %s%s", self.path, f" ({what})" if what else "")
