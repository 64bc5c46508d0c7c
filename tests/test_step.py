"""The engine's training step (slabbench.engine.StackedStep) on the CPU: what it dispatches, whether
the host waits for the device inside an epoch, and whether it traces as one graph.

(a) A dispatch counter on the real training loop finds no operator that makes the host wait
    for the device inside an epoch (steps and per-step hooks; the once-per-epoch finiteness
    check and per-epoch hooks are outside); on an mlp, one step's operator count is a + b·S in
    the stack size S with b exactly the number of noise draws per step (the per-run generators
    make each draw one operator per run), so dense and magnitude do not grow with S at all
    (counts per method: benchmarks/dispatch_counts.py).
(b) torch.compile(fullgraph=True, backend="eager") of the step's gather, forward, loss, penalty
    and backward: one graph for every method and option, with the eager step's loss and
    gradients (each per-run noise draw is one opaque operator that reads the runs'
    generators when it runs).  The optimizer's step itself breaks a graph by torch's design.
(c) Seed s in a stack equals seed s alone, every method and option: tests/test_stacking.py
    (test_seed_in_a_stack_equals_seed_alone, mlp and conv nets), tests/test_restarts.py
    (start 0 of restarts is the plain run; screened starts end as unscreened ones)."""

import importlib.util
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import ROOT, tiny_spec
from slabbench import engine as E
from slabbench import train as T
from slabbench.registry import method_class
from test_stacking import CASES

_spec = importlib.util.spec_from_file_location("dispatch_counts", ROOT / "benchmarks" / "dispatch_counts.py")
DC = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(DC)
IDS = [DC.label(m, o).replace(" ", "-") for m, o in DC.METHODS]


class PausableCount(TorchDispatchMode):
    """Counts operators, except while ``paused`` > 0."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


def _paused(counter: dict, real):
    def call(*args, **kwargs):
        counter["mode"].paused += 1
        try:
            return real(*args, **kwargs)
        finally:
            counter["mode"].paused -= 1
    return call


@pytest.mark.parametrize("name,options", CASES, ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items() if k != 'layer_sparsity') or 'default'}" for m, o in CASES])
def test_no_host_synchronisation_inside_an_epoch(name, options, monkeypatch):
    """The whole training of a stack of two runs under a dispatch counter; outside the count:
    the setup before the first epoch (data groups compare generator states on the host), the
    once-per-epoch finiteness check and per-epoch hooks."""
    counter: dict = {}
    real_fit = E.fit_stacked

    def fit(*args, **kwargs):
        with PausableCount() as mode:
            counter["mode"] = mode
            return real_fit(*args, **kwargs)

    monkeypatch.setattr(T, "fit_stacked", fit)
    monkeypatch.setattr(E, "_check_finite", _paused(counter, E._check_finite))
    monkeypatch.setattr(E, "_data_groups", _paused(counter, E._data_groups))
    cls = method_class(name)
    monkeypatch.setattr(cls, "after_epoch", _paused(counter, cls.after_epoch))
    T.run_stack([tiny_spec(name, method_params=options, seed=s, finetune_epochs=0) for s in (0, 1)])
    ops = counter["mode"].ops
    assert ops["aten::addmm"] + ops["aten::baddbmm"] + ops["aten::bmm"] + ops["aten::mm"] > 0, "the steps were counted"
    assert not DC.SYNCING & set(ops), sorted(DC.SYNCING & set(ops))


@pytest.mark.parametrize("name,options", DC.METHODS, ids=IDS)
def test_operators_per_step_grow_with_the_stack_only_by_the_noise_draws(name, options):
    counts = {s: DC.count_step(name, options, s) for s in (1, 2, 3)}
    draws = {s: sum(c[op] for op in DC.NOISE) for s, c in counts.items()}
    b = draws[1]  # noise draws per step: one operator per run and draw
    assert all(draws[s] == b * s for s in counts), draws
    totals = {s: sum(c.values()) for s, c in counts.items()}
    a = totals[1] - b
    assert all(totals[s] == a + b * s for s in counts), (totals, b)
    assert b == 0 if name in ("dense", "magnitude") else b > 0
    # everything else is the same operators, independent of S
    rest = {s: Counter({k: v for k, v in c.items() if k not in DC.NOISE}) for s, c in counts.items()}
    assert rest[1] == rest[2] == rest[3]
    assert not DC.SYNCING & set(counts[3])


def _loss_and_gradients(step, idx, fn):
    """(loss, gradients) of ``fn`` (the step's loss and backward) with fresh gradients."""
    for p in step.model.parameters():
        p.grad = None
    loss = fn()
    return loss.detach().clone(), [None if p.grad is None else p.grad.clone() for p in step.model.parameters()]


@pytest.mark.parametrize("name,options", DC.METHODS, ids=IDS)
def test_loss_and_gradients_of_the_step_trace_as_one_graph_with_the_eager_steps_noise(name, options):
    """Gather, forward (every per-run noise draw: one opaque operator,
    slabbench.layers.stacked._per_run_noise), loss, penalty and backward compile as one graph
    (fullgraph: a graph break raises), and the traced step gives the eager step's loss and
    gradients from the same generator states (the loss bit for bit; a gradient to within a
    float rounding, 1e-6 relative: AOT autograd may sum a parameter's gradient contributions in
    another order, measured one ulp under lrt): the runs' noise streams are consumed as in
    eager training, where other noise moves the gradients by tens of percent.  Not restoring the states changes them (the comparison
    sees the noise), for every method that draws any."""
    torch._dynamo.reset()
    step, idx = DC.stacked_step(name, options, 3)
    step(idx, 1.0, True, False)  # Adam's state and the layers' caches exist, as in training

    def loss_and_gradients():
        loss, _ = step.loss(idx, 1.0, True)
        loss.backward()
        return loss.detach()

    states = [g.get_state() for g in step.noise_gens]
    eager = _loss_and_gradients(step, idx, loss_and_gradients)
    for g, st in zip(step.noise_gens, states):
        g.set_state(st)
    with torch._dynamo.config.patch(trace_autograd_ops=True):  # backward() inside the graph
        compiled = torch.compile(loss_and_gradients, fullgraph=True, backend="eager")
        traced = _loss_and_gradients(step, idx, compiled)
        again = _loss_and_gradients(step, idx, compiled)  # the generators moved on: other noise
    assert torch.equal(traced[0], eager[0])
    for a, b in zip(traced[1], eager[1]):
        assert (a is None) == (b is None)
        if a is not None:  # AOT autograd may add a gradient's parts in another order (lrt: one ulp)
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    noisy = name not in ("dense", "magnitude")
    assert (not torch.equal(again[0], eager[0])) == noisy


def test_the_optimizers_step_breaks_a_graph_by_torchs_design():
    """Optimizer.zero_grad is skipped by Dynamo and Optimizer.step breaks the graph on purpose
    (torch/optim/optimizer.py, _use_grad: torch._dynamo.graph_break() around every step, so that
    AOT sees the update under no_grad); a whole step can be one graph only with an optimizer
    written outside torch.optim."""
    torch._dynamo.reset()
    step, idx = DC.stacked_step("dense", {}, 3)
    step(idx, 1.0, True, False)
    with pytest.raises(Exception, match="Optimizer.zero_grad|graph_break"):
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            torch.compile(lambda: step(idx, 1.0, True, False), fullgraph=True, backend="eager")()


def test_the_benchmark_prints_a_row_per_method_with_its_slope(capsys):
    DC.main(["--stacks", "1", "2", "--methods", "dense", "l0"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "S = 1" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["dense", "l0", "l0 gates=weight"]
    assert "+ 0·S | 0 | none |" in rows[0] and all("does not fit" not in r and r.endswith("| none |") for r in rows)
