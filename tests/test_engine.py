"""The training core in parts: the engine (step and epoch loop), the restarts policy and the
records, with slabbench.train still offering every name it offered before the split."""

import pytest

from slabbench import engine, records, restarts
from slabbench import train as T

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
