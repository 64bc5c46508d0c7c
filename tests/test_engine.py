"""The training core in parts: the engine (step and epoch loop), the restarts policy and the
records, with slabbench.train still offering every name it offered before the split; the
explicit contract for a method's per-run state (run_state, select_runs)."""

import logging

import pytest
import torch

from conftest import tiny_spec
from slabbench import engine, records, restarts
from slabbench import train as T
from slabbench.api import Method, take_runs
from slabbench.layers import MaskedLinear
from slabbench.registry import method_class
from slabbench.stack import handles_run_dim, hooks_per_stack, stack_modules, unstackable_modules

#: names importable from slabbench.train before the split, that code outside the package uses
MOVED = {"Member": engine, "TrainingDiverged": engine, "fit": engine, "fit_stacked": engine, "noise_seed": engine,
         "evaluate": records, "start_seed": restarts, "training_objective": restarts}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_names_stay_importable_from_train(name):
    assert getattr(T, name) is getattr(MOVED[name], name)


def test_the_engines_switches_are_read_and_set_through_train_too(monkeypatch):
    assert T.SHARE_INPUTS is engine.SHARE_INPUTS and T.GRAPH_BACKEND is engine.GRAPH_BACKEND
    monkeypatch.setattr(T, "SHARE_INPUTS", False)
    assert engine.SHARE_INPUTS is False
    monkeypatch.undo()
    assert engine.SHARE_INPUTS is True


# --------------------------------------------------------------------------- per-run state of a method

def test_take_runs_cuts_tensors_and_their_containers():
    idx = torch.tensor([2, 0])
    t = torch.arange(6.0).view(3, 2)
    got = take_runs({"a": [t, (t[:, 0],)], "b": None}, idx)
    assert torch.equal(got["a"][0], t[[2, 0]]) and torch.equal(got["a"][1][0], t[[2, 0], 0]) and got["b"] is None


def test_select_runs_cuts_exactly_the_declared_attributes():
    class Tracker(Method):
        run_state = ("_rows",)

    m = Tracker(None, None)
    m._rows, m._shared = torch.arange(3.0), torch.arange(3.0)
    m.select_runs(torch.tensor([1]))
    assert m._rows.tolist() == [1.0] and m._shared.tolist() == [0.0, 1.0, 2.0]


def test_a_stacks_cut_cuts_the_declared_run_state_and_names_undeclared_state(monkeypatch, caplog):
    """Restarts' screening cuts a stack of 3 starts to 1: the method instance's declared per-run
    tensor is cut with it (seen by the next step), an undeclared one is named in the log."""
    seen = []

    class Tracker(method_class("dense")):
        hooks_per_stack = True
        run_state = ("_rows",)

        def __init__(self, params, ctx):
            super().__init__(params, ctx)
            self._rows = None

        def after_step(self, model, step, epoch):
            if self._rows is not None:
                seen.append(self._rows.shape[0])
            w = next(model.parameters()).detach()
            self._rows = w.flatten(1).sum(1)  # one value per run
            self._undeclared = self._rows.clone()

    monkeypatch.setattr(T, "method_class", lambda name: Tracker)
    with caplog.at_level(logging.WARNING, logger="slabbench.engine"):
        T.run(tiny_spec("dense", restarts=3, restarts_keep=1, restarts_screen_epochs=1, finetune_epochs=0))
    assert seen == [3, 1, 1]  # 2 steps per epoch: the step after the cut sees 1 row, not 3
    assert "Tracker holds _undeclared with one row per run but does not name it in run_state" in caplog.text


# --------------------------------------------------------------------------- the two meanings of "stackable"


def test_layers_declare_handles_run_dim_and_methods_hooks_per_stack():
    assert handles_run_dim(MaskedLinear) and not hooks_per_stack(MaskedLinear)
    for name in ("dense", "spike_slab", "sparse_vd", "l0"):
        assert hooks_per_stack(method_class(name)) and not handles_run_dim(method_class(name))
    assert not hooks_per_stack(method_class("magnitude"))  # its schedules: hooks per run


def test_the_old_name_still_works_for_a_layer_and_a_method_and_warns_once_per_class(recwarn):
    class OldLayer(MaskedLinear):
        stackable = True

    class OldMethod(Method):
        stackable = True

    class Inherits(OldLayer):  # inherits nothing, old name or new
        pass

    for _ in range(3):
        assert handles_run_dim(OldLayer) and hooks_per_stack(OldMethod) and not handles_run_dim(Inherits)
    assert unstackable_modules(torch.nn.Sequential(OldLayer(3, 2))) == []
    assert stack_modules([torch.nn.Sequential(OldLayer(3, 2)) for _ in range(2)])[0].stack == 2
    messages = [str(w.message) for w in recwarn.list if issubclass(w.category, DeprecationWarning)]
    assert len(messages) == 2 and all("`stackable = True`, a deprecated name" in m for m in messages)
    assert any("OldLayer" in m for m in messages) and any("OldMethod" in m for m in messages)
    assert all("handles_run_dim = True" in m and "hooks_per_stack = True" in m for m in messages)


def test_a_job_logs_its_progress_epoch_time_left_and_each_runs_training_nll(monkeypatch, caplog):
    """Every PROGRESS_SECONDS (0 here: every epoch) the epoch loop logs the epoch reached of how
    many, the time left and each run's training NLL; the runs' NLL falls from epoch 1 to 3."""
    monkeypatch.setattr(engine, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="slabbench.engine"):
        T.run_stack([tiny_spec(seed=0, epochs=3, finetune_epochs=0), tiny_spec(seed=1, epochs=3, finetune_epochs=0)])
    lines = [r.getMessage() for r in caplog.records if "s per epoch" in r.getMessage()]
    assert [line.split(": epoch ")[1].split(",")[0] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(line.startswith("tiny/dense: ") and " left; training NLL per example: " in line for line in lines)
    first, last = ([float(v) for v in line.rsplit(": ", 1)[1].split(", ")] for line in (lines[0], lines[-1]))
    assert len(first) == len(last) == 2 and all(b < a for a, b in zip(first, last))
    assert "about 0 s left" in lines[-1]


def test_a_job_shorter_than_progress_seconds_logs_no_progress_line(caplog):
    """At the default PROGRESS_SECONDS (60 s) a sub-second job logs no progress line; the time
    left reads in the unit a person would use."""
    assert engine.PROGRESS_SECONDS == 60.0
    with caplog.at_level(logging.INFO, logger="slabbench.engine"):
        T.run_stack([tiny_spec(epochs=3, finetune_epochs=0)])
    assert not [r for r in caplog.records if "s per epoch" in r.getMessage()]
    assert engine._duration(45) == "45 s" and engine._duration(720) == "12 min" and engine._duration(3 * 3600 + 720) == "3.2 h"


def test_a_jobs_records_name_the_commit_read_before_it_trains(monkeypatch):
    """Provenance (git commit, dirty tree) is read when the job starts, not after training: a
    commit made while a long job trains is not the code it ran."""
    order = []
    real_prov, real_train = T.provenance, T._train
    monkeypatch.setattr(T, "provenance", lambda device: order.append("provenance") or dict(real_prov(device), git_commit="at-start"))
    monkeypatch.setattr(T, "_train", lambda *a, **k: order.append("train") or real_train(*a, **k))
    [(records, meta)] = T.run_stack([tiny_spec(finetune_epochs=0)])
    assert order[0] == "provenance" and "train" in order
    assert {r["provenance"]["git_commit"] for r in records} == {"at-start"}
