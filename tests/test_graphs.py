"""`graphs: true`: the training loop's capture-and-replay path (slabbench.engine, slabbench.graphs), run on the CPU
with two stand-ins for CUDA graphs: one whose "replay" calls the captured step (the loop's
plumbing: each step kind captured after its warm-up, the guard, the fallback), and one that, as
a CUDA graph does, records the step's tensor operations at capture and replays only those, on
the same tensors, without the step's Python (:class:`Recording`).  The second shows that the
step reads nothing that the loop changes outside it but in place: β and the learning rates as
tensors, static index and gather buffers, capturable fused Adam, gradients pointed at the
replaying graph's; a step that took β or a learning rate as a number keeps its capture's value
there and fails.  Whether a real CUDA graph replays the same numbers (memory pool, streams,
generator registration) is checked on a GPU (benchmarks/graph_replay.py, benchmarks/gpu_checks.sh)."""

import logging
from types import SimpleNamespace

import pytest
import torch

from conftest import TEST_DEVICE, tiny_spec
from slabbench import engine as E
from slabbench import train as T
from slabbench.graphs import WARMUP, StepGraphs, state_entries
from slabbench.layers import prunable_layers
from test_stacking import CASES, assert_records_close


def assert_stacks_close(got, want, rel: float = 1e-5) -> None:
    """Each run's records of two ``run_stack`` results equal to ``rel`` (their specs aside: one
    trained with graphs, the other without)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_records_close([dict(r, spec=None) for r in g[0]], [dict(r, spec=None) for r in w[0]], rel=rel)


class StandIn:
    """Captures by keeping the step function; a replay calls it."""

    def __init__(self):
        self.captures, self.warms = [], 0

    def warm(self, fn):
        self.warms += 1
        fn()

    def capture(self, fn, generators):
        self.captures.append(len(generators))
        return SimpleNamespace(replay=fn)


class Recording(StandIn):
    """Replays as a CUDA graph does: capture runs the step once under a dispatch mode that
    records every tensor operation with the tensors it read and wrote; a replay runs only
    those operations again on the same tensors (results copied into the tensors captured), no
    Python of the step.  So a value the step took from Python at capture (a float schedule, a
    host read, a tensor made anew each step) stays what it was at capture, as on a GPU, and
    records that still equal eager training show the step reads only what stays in place.
    The capture itself is the first step (a CUDA capture runs nothing): its first replay is
    skipped."""

    def capture(self, fn, generators):
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = []

        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                ops.append((func, args, kwargs, out))
                return out

        with Record():
            fn()
        self.captures.append(len(generators))
        return _Replay(ops)


def _tensors(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class _Replay:
    def __init__(self, ops):
        self.ops, self.first = ops, True
        # a CUDA graph reads and writes memory addresses, not tensor objects: each tensor the
        # step reads must keep its storage (the loop's guard recaptures where a hook moved one)
        self.memory = {id(t): (t, t.data_ptr()) for _, args, kwargs, _ in ops
                       for t in _tensors((args, kwargs)) if t.layout == torch.strided}

    def replay(self):
        if self.first:  # the capture ran this step
            self.first = False
            return
        for t, ptr in self.memory.values():
            assert t.data_ptr() == ptr, "a tensor the captured step reads moved to other memory since the capture"
        with torch._C._AutoDispatchBelowADInplaceOrView():  # kernels only, as the mode saw them
            for func, args, kwargs, out in self.ops:
                _into(out, func(*args, **kwargs))


def _into(captured, new):
    """Write an operation's new result into the tensor(s) it gave at capture."""
    if isinstance(captured, (list, tuple)):
        for c, n in zip(captured, new):
            _into(c, n)
    elif torch.is_tensor(captured) and torch.is_tensor(new) and captured is not new:
        if (new.data_ptr(), new.shape, new.stride()) != (captured.data_ptr(), captured.shape, captured.stride()):
            captured.copy_(new)  # (a view of the same memory is left alone)


@pytest.fixture
def stand_in(monkeypatch):
    backend = StandIn()
    monkeypatch.setattr(E, "GRAPH_BACKEND", backend)
    return backend


@pytest.fixture
def backend(request):
    """The stand-in on the CPU; real CUDA graphs when the runs train on CUDA
    (``SLABBENCH_TEST_DEVICE=cuda``, benchmarks/gpu_checks.sh)."""
    if TEST_DEVICE == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        return None
    return request.getfixturevalue("stand_in")


# batch 24 of 64 training points: two full batches and a partial one of 16 per epoch (two step
# kinds); 4 epochs, so every kind is captured after its two warm-up runs and replayed
SPEC = dict(batch_size=24, epochs=4)


CASE_IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items() if k != 'layer_sparsity') or 'default'}" for m, o in CASES]


# a KL weight that changes every epoch (β = 0, 1/3, 2/3, 1): a step that read β as a number
# would keep the β of its capture
RAMPS = [("spike_slab", {"kl_warmup_epochs": 3}), ("sparse_vd", {"kl_warmup_start": 0, "kl_warmup_end": 3})]


@pytest.mark.parametrize("name,options", CASES + RAMPS,
                         ids=CASE_IDS + [f"{m}-kl-ramp" for m, _ in RAMPS])
def test_replays_of_recorded_operations_give_the_records_of_eager_steps(name, options, monkeypatch, caplog):
    """The stand-in closest to a CUDA graph (:class:`Recording`: a replay re-runs the captured
    operations only): the same records as eager training, every method and option, and with a
    KL weight or a learning rate that changes between epochs."""
    backend = Recording()
    monkeypatch.setattr(E, "GRAPH_BACKEND", backend)
    specs = [tiny_spec(name, method_params=options, seed=s, **SPEC) for s in (0, 1, 2)]
    eager = T.run_stack([dict(s, graphs=False) for s in specs])
    with caplog.at_level(logging.INFO, logger="slabbench.engine"):
        graphed = T.run_stack(specs)
    assert backend.captures and "CUDA graphs off" not in caplog.text, "the graph path ran"
    assert_stacks_close(graphed, eager)


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
def test_graph_steps_give_the_records_of_eager_steps(name, options, backend, caplog):
    specs = [tiny_spec(name, method_params=options, seed=s, **SPEC) for s in (0, 1, 2)]
    eager = T.run_stack([dict(s, graphs=False) for s in specs])
    with caplog.at_level(logging.INFO, logger="slabbench.engine"):
        graphed = T.run_stack([dict(s, graphs=True) for s in specs])
    assert "graph capture(s)" in caplog.text and "CUDA graphs off" not in caplog.text, "the graph path ran"
    assert_stacks_close(graphed, eager)


def test_each_step_kind_is_warmed_up_then_captured_once(stand_in, caplog):
    spec = tiny_spec("spike_slab", seed=0, finetune_epochs=0, **SPEC)
    with caplog.at_level(logging.INFO, logger="slabbench.engine"):
        T.run_stack([dict(spec, graphs=True), dict(spec, seed=1, graphs=True)])
    # full and partial batches, penalty on (spike_slab has no warm-up of beta): two kinds
    assert stand_in.captures == [2, 2]  # each graph registers both runs' generators
    assert stand_in.warms == 2 * 2
    assert "2 graph capture(s), 0 invalidation(s)" in caplog.text


@pytest.mark.parametrize("kind", [StandIn, Recording])
def test_screened_restarts_capture_again_after_the_cut(kind, monkeypatch):
    stand_in = kind()
    monkeypatch.setattr(E, "GRAPH_BACKEND", stand_in)
    spec = tiny_spec("spike_slab", restarts=3, restarts_keep=1, restarts_screen_epochs=3, finetune_epochs=0,
                     **dict(SPEC, epochs=6))
    eager = T.run_stack([dict(spec, graphs=False)])
    graphed = T.run_stack([dict(spec, graphs=True)])
    # full and partial batches captured for the 3 starts, then again for the finalist alone
    assert stand_in.captures == [3, 3, 1, 1]
    assert_stacks_close(graphed, eager)


@pytest.mark.parametrize("kind", [StandIn, Recording])
def test_a_gradient_reading_method_under_graphs(kind, tmp_path, monkeypatch):
    """The README's plugin (hooks once per run, on views with their run's gradients) under
    graphs: its scores equal eager training's."""
    monkeypatch.setattr(E, "GRAPH_BACKEND", kind())
    from test_plugin_hooks import _readme_method
    cls = _readme_method(tmp_path, "# methods/taylor.py")
    monkeypatch.setattr(T, "method_class", lambda name: cls)
    specs = [tiny_spec("taylor", seed=s, **SPEC) for s in (0, 1)]
    eager = T.run_stack([dict(s, graphs=False) for s in specs])
    graphed = T.run_stack([dict(s, graphs=True) for s in specs])
    for e, g in zip(eager, graphed):
        for key in e[1]["scores"]:
            torch.testing.assert_close(g[1]["scores"][key], e[1]["scores"][key], rtol=1e-5, atol=1e-8)


def test_a_replaced_tensor_drops_the_graphs():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    calls = []
    graphs = StepGraphs(lambda key: calls.append(key), state=lambda: state_entries(model, opt, T.Method(None, None)),
                        generators=[], label="toy", backend=StandIn(), warmup=1)
    for _ in range(3):
        graphs.run("a")
    assert calls == ["a"] * 3 and graphs.captures == 1
    graphs.check()  # nothing moved
    assert graphs.graphs
    model[0].weight.data.mul_(2)  # in place: fine
    graphs.check()
    assert graphs.graphs
    model[0].weight = torch.nn.Parameter(torch.zeros(2, 3))  # replaced: the graph would read the old one
    graphs.check()
    assert not graphs.graphs and graphs.invalidations == 1
    graphs.run("a")  # warms up again, then captures again
    graphs.run("a")
    assert graphs.captures == 2
    model.training = False  # a plain attribute the forward may branch on
    graphs.check()
    assert not graphs.graphs


def test_the_guard_tells_a_replaced_tensor_from_a_rebuilt_container():
    """StepGraphs.check probes the objects held at capture: a tensor given new storage
    (``.data =``) is seen though the object is the same; a hook that rebuilds a tuple or dict of
    the same tensors (SpikeSlab's gate cache after a φ update) is not a change, and a tensor
    replaced inside the rebuilt container afterwards is; so are a new entry in the optimizer's
    state and a param group given other parameters."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    layer = model[0]
    cache = torch.zeros(2)
    layer.cache = (cache, 0, {"gate": torch.ones(2)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()

    def captured():
        graphs = StepGraphs(lambda key: None, state=lambda: state_entries(model, opt, T.Method(None, None)),
                            generators=[], label="toy", backend=StandIn(), warmup=0)
        graphs.run("a")
        return graphs

    graphs = captured()
    layer.cache = (cache, 1, dict(layer.cache[2]))  # rebuilt: same tensors, another plain value
    graphs.check()
    assert graphs.graphs and graphs.invalidations == 0
    layer.cache[2]["gate"] = torch.ones(2)  # a tensor replaced inside the rebuilt container
    graphs.check()
    assert graphs.invalidations == 1

    graphs = captured()
    layer.cache[2]["mask"] = None
    graphs.check()  # a plain item added: nothing the step reads moved
    assert graphs.invalidations == 0
    graphs = captured()
    layer.cache[2]["mask"] = torch.ones(2)  # a plain slot of the same dict now holds a tensor
    graphs.check()
    assert graphs.invalidations == 1

    layer.slots = [cache, None]
    graphs = captured()
    layer.slots[0], layer.slots[1] = None, cache  # the same tensor, in another place
    graphs.check()
    assert graphs.invalidations == 1

    graphs = captured()
    layer.weight.data = torch.zeros(2, 3)  # the same Parameter object, new storage
    graphs.check()
    assert graphs.invalidations == 1

    graphs = captured()
    opt.state[layer.bias]["exp_avg"] = torch.zeros(2)
    graphs.check()
    assert graphs.invalidations == 1

    graphs = captured()
    opt.param_groups[0]["params"] = [torch.nn.Parameter(torch.zeros(1))]
    graphs.check()
    assert graphs.invalidations == 1

    layer.params = [torch.zeros(1)]  # a module's own list named like a param group's: a plain container
    graphs = captured()
    graphs.check()
    assert graphs.invalidations == 0

    layer.by_tensor = {cache: torch.ones(1)}  # a dict keyed by tensors gains a key: no tensor compared by ==
    graphs = captured()
    layer.by_tensor[torch.zeros(2)] = None
    graphs.check()
    assert graphs.invalidations == 0
    layer.by_tensor[cache] = torch.ones(1)
    graphs.check()
    assert graphs.invalidations == 1

    graphs = captured()
    del opt.param_groups[0]["params"]
    graphs.check()
    assert graphs.invalidations == 1


def test_a_failing_capture_falls_back_to_eager_steps(caplog):
    class Failing(StandIn):
        def capture(self, fn, generators):
            raise RuntimeError("operation not permitted when stream is capturing")

    calls = []
    graphs = StepGraphs(lambda key: calls.append(key), state=list, generators=[], label="toy/l0", backend=Failing(),
                        warmup=1)
    with caplog.at_level(logging.WARNING, logger="slabbench.graphs"):
        for _ in range(4):
            graphs.run("k")
    assert calls == ["k"] * 4 and graphs.disabled
    assert "toy/l0: CUDA graphs off, eager steps from here: capture failed (RuntimeError: operation not permitted" in caplog.text


def test_graphs_are_off_on_the_cpu_without_a_backend():
    assert not E._use_graphs(True, torch.device("cpu"))
    assert not E._use_graphs(False, torch.device("cuda"))


# operators whose result the host must wait for (a CUDA graph cannot capture them)
SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::equal", "aten::is_nonzero",
           "aten::unique", "aten::_unique2", "aten::item"}


class CountingStandIn(StandIn):
    """Runs each captured step once more under a dispatch counter: which operators one step calls."""

    def __init__(self):
        super().__init__()
        self.ops: dict = {}

    def capture(self, fn, generators):
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = self.ops

        class Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func._schema.name
                ops[name] = ops.get(name, 0) + 1
                return func(*args, **(kwargs or {}))

        with Count():
            fn()
        return super().capture(fn, generators)


@pytest.mark.parametrize("name,options", CASES, ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items() if k != 'layer_sparsity') or 'default'}" for m, o in CASES])
def test_the_captured_step_never_waits_for_the_device(name, options, monkeypatch):
    counting = CountingStandIn()
    monkeypatch.setattr(E, "GRAPH_BACKEND", counting)
    T.run_stack([tiny_spec(name, method_params=options, seed=s, graphs=True, finetune_epochs=0, **SPEC) for s in (0, 1)])
    assert counting.ops, "a step was captured"
    assert not SYNCING & set(counting.ops), sorted(SYNCING & set(counting.ops))


def test_a_hook_declared_after_step_in_step_is_captured_with_the_step(monkeypatch):
    """l0 declares ``after_step_in_step``: under graphs its clamp and parameter averaging are
    the last part of the captured step, so the Python hook runs only in the eager warm-ups and
    the captures (2 + 1 per step kind), never between replays, and the records stay eager
    training's (test_replays_of_recorded_operations_give_the_records_of_eager_steps)."""
    backend = Recording()
    monkeypatch.setattr(E, "GRAPH_BACKEND", backend)
    cls = T.method_class("l0")
    calls = []
    original = cls.after_step
    monkeypatch.setattr(cls, "after_step", lambda self, model, step, epoch: calls.append(step) or original(self, model, step, epoch))
    spec = tiny_spec("l0", method_params={"ema": 0.9}, seed=0, finetune_epochs=0, **SPEC)
    T.run_stack([spec, dict(spec, seed=1)])
    kinds = len(backend.captures)  # full and partial batches
    assert kinds == 2 and len(calls) == kinds * (WARMUP + 1)
    eager_calls = len(calls)
    calls.clear()
    T.run_stack([dict(spec, graphs=False), dict(spec, seed=1, graphs=False)])
    assert len(calls) == SPEC["epochs"] * 3 > eager_calls  # every step: 2 full batches and a partial one


def test_a_method_trained_outside_a_stack_under_graphs(monkeypatch, caplog):
    """A plugin that overrides ``penalty`` without ``hooks_per_stack`` trains its seeds one
    after another, unstacked (engine.fit); under the recording stand-in its records equal eager
    training's."""
    class Lasso(T.Method):
        def penalty(self, model):
            return sum(p.abs().sum() for name, p in model.named_parameters() if name.endswith("weight"))

    backend = Recording()
    monkeypatch.setattr(E, "GRAPH_BACKEND", backend)
    monkeypatch.setattr(T, "method_class", lambda name: Lasso)
    specs = [tiny_spec("lasso", seed=s, finetune_epochs=0, **SPEC) for s in (0, 1)]
    eager = T.run_stack([dict(s, graphs=False) for s in specs])
    with caplog.at_level(logging.INFO):
        graphed = T.run_stack(specs)
    assert "2 runs train one after another (not stacked" in caplog.text
    assert backend.captures == [0, 0, 0, 0]  # two step kinds per seed; noise would come from the global generator
    assert_stacks_close(graphed, eager)


class _ScaleByEpoch(T.Method):
    """A penalty weighted by a Python number that a hook changes every epoch."""
    hooks_per_stack = True

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.scale = 1.0

    def penalty(self, model):
        return self.scale * sum(p.square().sum() for p in model.parameters())

    def after_epoch(self, model, epoch):
        self.scale = 1.0 + epoch


class _CountInStep(T.Method):
    """A per-step hook declared in the step that keeps a Python counter."""
    hooks_per_stack = True
    after_step_in_step = True

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.count = 0

    def after_step(self, model, step, epoch):
        self.count += 1
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.0 - 1e-3 * self.count)


@pytest.mark.parametrize("cls", [_ScaleByEpoch, _CountInStep], ids=["python-number-in-penalty", "python-counter-in-step"])
def test_the_recording_stand_in_keeps_what_python_gave_the_capture(cls, monkeypatch):
    """Negative controls: a step that reads a Python number which changes between steps (a
    float a hook sets, a counter in a hook declared in the step) trains as eager under the
    calling stand-in, which runs the step's Python at every replay, and differs under the
    recording one, which, like a CUDA graph, keeps the capture's value."""
    monkeypatch.setattr(T, "method_class", lambda name: cls)
    specs = [tiny_spec("toy", seed=s, finetune_epochs=0, **SPEC) for s in (0, 1)]
    eager = T.run_stack([dict(s, graphs=False) for s in specs])
    results = {}
    for kind in (StandIn, Recording):
        monkeypatch.setattr(E, "GRAPH_BACKEND", kind())
        results[kind] = T.run_stack(specs)
    assert_stacks_close(results[StandIn], eager)
    with pytest.raises(AssertionError):
        assert_stacks_close(results[Recording], eager)


def test_records_say_how_the_steps_ran(stand_in):
    """Where graphs were used a record's provenance says how (captures and invalidations, or
    eager and why); on the CPU without them it says nothing (CPU records stay as they were)."""
    spec = tiny_spec("spike_slab", seed=0, finetune_epochs=0, **SPEC)
    graphed = T.run_stack([spec, dict(spec, seed=1)])
    assert {r["provenance"]["step_graphs"] for recs, _ in graphed for r in recs} == {"2 graph capture(s), 0 invalidation(s)"}
    eager = T.run_stack([dict(spec, graphs=False)])
    assert all("step_graphs" not in r["provenance"] for r in eager[0][0])


def test_a_start_screened_out_says_how_its_steps_ran(stand_in, monkeypatch):
    """Screening cuts the stack; every start, kept or not, gets the training's summary (a start
    screened out becomes the chosen record where every finalist diverged)."""
    spec = tiny_spec("spike_slab", restarts=3, restarts_keep=1, restarts_screen_epochs=3, finetune_epochs=0,
                     **dict(SPEC, epochs=6))
    members = []
    original = T.fit_stacked

    def keep(model, group, *args, **kwargs):
        members.extend(group)
        return original(model, group, *args, **kwargs)

    monkeypatch.setattr(T, "fit_stacked", keep)
    T.run_stack([spec])
    assert len(members) == 3 and all(m.step_graphs == "4 graph capture(s), 1 invalidation(s)" for m in members)


def test_records_say_why_steps_ran_eagerly(stand_in, monkeypatch):
    monkeypatch.setattr(T.method_class("dense"), "optimizer", lambda self, model, lr: torch.optim.SGD(model.parameters(), lr=lr))
    recs, _ = T.run_stack([tiny_spec("dense", seed=0, finetune_epochs=0, **SPEC)])[0]
    assert recs[0]["provenance"]["step_graphs"].startswith("eager (its optimizer (SGD) is not Adam or AdamW")


@pytest.mark.parametrize("name,options,in_step", [
    ("spike_slab", {}, True), ("spike_slab", {"phi_every": 1}, False), ("spike_slab", {"phi_update": "lrt"}, True),
    ("magnitude", {}, True), ("magnitude", {"schedule": "gradual"}, False)])
def test_a_methods_options_decide_where_its_per_step_hook_runs(name, options, in_step, monkeypatch):
    """spike_slab's after_step does nothing unless φ is updated every ``phi_every`` steps, and
    magnitude's (once per run, on views) unless it prunes gradually: either is part of the
    captured step (no Python, no guard between replays) except then; the records equal eager
    training's either way (test_replays_of_recorded_operations_...)."""
    backend = Recording()
    monkeypatch.setattr(E, "GRAPH_BACKEND", backend)
    checks = []
    original = StepGraphs.check
    monkeypatch.setattr(StepGraphs, "check", lambda self: checks.append(1) or original(self))
    spec = tiny_spec(name, method_params=options, seed=0, finetune_epochs=0, **SPEC)
    T.run_stack([spec, dict(spec, seed=1)])
    steps = SPEC["epochs"] * 3
    cls = T.method_class(name)
    method = cls.__new__(cls)
    method.params = T.make_params(cls.Params, options, name)
    assert E._after_step_in_step(method) == in_step
    # (gradual pruning trains once per target, every target x seed in one stack: one training)
    assert len(checks) == (SPEC["epochs"] if in_step else SPEC["epochs"] + steps)  # each epoch; each step between replays


from test_stacking import CONV_MODELS, blobs, no_biases_before_batch_norm  # noqa: E402,F401  (fixtures)

CONV_METHODS = [("dense", {}), ("spike_slab", {}), ("spike_slab", {"phi_update": "lrt"}),
                ("sparse_vd", {"kl_warmup_start": 0, "kl_warmup_end": 3}), ("l0", {"ema": 0.9})]


@pytest.mark.parametrize("model,model_params", CONV_MODELS, ids=[m for m, _ in CONV_MODELS])
@pytest.mark.parametrize("name,options", CONV_METHODS, ids=["dense", "spike_slab", "spike_slab-lrt", "sparse_vd-kl-ramp", "l0-ema"])
def test_conv_nets_under_graphs(name, options, model, model_params, blobs, no_biases_before_batch_norm, monkeypatch):
    """LeNet-5 (grouped stacked convolutions) and a VGG-like net with batch norm (running
    statistics updated in place by every step): the replay that re-runs the recorded operations
    only gives the records of the replay that runs the step's Python, bit for bit; and eager
    steps with the optimizer that graphs use (as on CUDA, engine.CAPTURABLE_ADAM) give them to
    float rounding (rel 1e-5).  (With the CPU's own Adam instead, the rounding of the two
    optimizers alone moved LeNet-5 under spike_slab lrt by 0.8% in test NLL within 12 steps,
    measured once: docs/performance.md, "CUDA graphs".)"""
    specs = [tiny_spec(name, dataset="blobs", model=model, model_params=model_params, method_params=options,
                       batch_size=24, seed=s, epochs=4) for s in (0, 1, 2)]
    monkeypatch.setattr(E, "CAPTURABLE_ADAM", ("cpu", "cuda"))  # (also where the suite runs on CUDA)
    eager = T.run_stack([dict(s, graphs=False) for s in specs])
    graphed = {}
    for kind in (StandIn, Recording):
        backend = kind()
        monkeypatch.setattr(E, "GRAPH_BACKEND", backend)
        graphed[kind] = T.run_stack(specs)
        assert backend.captures
    assert_stacks_close(graphed[Recording], graphed[StandIn], rel=1e-12)
    assert_stacks_close(graphed[Recording], eager)
