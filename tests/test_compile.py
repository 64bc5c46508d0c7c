"""`compile: true`: the training step's loss and backward compiled by torch.compile
(slabbench.engine.CompiledLoss), on the CPU.

Most tests compile with the ``aot_eager`` backend: it traces the step as Inductor would (Dynamo,
then AOT autograd's joint forward-backward graph) but runs the traced ATen operations instead of
generating code, so it checks in seconds what compiling does to the training (β and the partial
batch as inputs, the penalty switched on after a KL warm-up, fine-tuning, a stack cut by
screening, a step that cannot be compiled) and gives eager training's numbers to rounding.  One
test compiles with Inductor itself (C++ kernels; about 15 s on a 2-core machine).  What the
compiled step costs against the step as written: benchmarks/compile_gain.py."""

import dataclasses
import logging

import pytest
import torch

from conftest import tiny_spec
from slabbench import engine as E
from slabbench import train as T
from slabbench.config import RunSpec, load_yaml, run_specs, validate
from test_graphs import assert_stacks_close, stand_in  # noqa: F401 (a fixture)

# every kind of step work a compiled step must carry: noise per run (closed form, lrt, gumbel,
# hard concrete), per-step hooks (magnitude's gradual pruning between steps, φ every step, l0's
# clamp and averages), a KL weight ramped from 0 (the penalty switched on, β an input)
CASES = [
    ("dense", {}),
    ("magnitude", {"schedule": "gradual"}),
    ("spike_slab", {"phi_every": 1, "kl_warmup_epochs": 2}),
    ("spike_slab", {"phi_update": "lrt", "granularity": "node"}),
    ("spike_slab", {"phi_update": "gumbel", "prior_from_target": True}),
    ("sparse_vd", {"kl_warmup_start": 0, "kl_warmup_end": 2}),
    ("l0", {"ema": 0.9}),
]
# batch 24 of 64 training points: two full batches and a partial one per epoch (two step kinds)
SPEC = dict(batch_size=24, epochs=3)


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(E, "COMPILE_BACKEND", "aot_eager")


def _specs(name, options, **over):
    return [tiny_spec(name, method_params=options, seed=s, **dict(SPEC, **over)) for s in (0, 1)]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{m}-{'-'.join(map(str, o)) or 'default'}" for m, o in CASES])
def test_compiled_steps_give_the_records_of_steps_as_written(name, options, aot_eager, caplog):
    specs = _specs(name, options)
    plain = T.run_stack(specs)
    with caplog.at_level(logging.INFO, logger="slabbench.engine"):
        compiled = T.run_stack([dict(s, compile=True) for s in specs])
    assert "compiling the training step failed" not in caplog.text
    # training and fine-tuning (dense has no targets to fine-tune): each its own compiled step
    assert caplog.text.count("steps compiled (aot_eager)") == (1 if name == "dense" else 2)
    assert {r["provenance"]["step_compile"] for recs, _ in compiled for r in recs} == {"compiled (aot_eager)"}
    assert all("step_compile" not in r["provenance"] for recs, _ in plain for r in recs)
    assert all(r["spec"]["compile"] is True for recs, _ in compiled for r in recs)
    assert_stacks_close(compiled, plain)


def test_the_compiled_step_reads_beta_as_an_input(aot_eager, monkeypatch):
    """A KL weight that changes every epoch (0, 1/3, 2/3, 1) is read by the compiled step as a
    tensor: it compiles once per kind of step, not once per value, and trains as the step as
    written does (a β baked into the compiled code would keep its first value)."""
    compiles = []
    real = torch.compile

    def counting(fn, **kw):
        compiled = real(fn, **kw)

        def call(*args):
            before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            out = compiled(*args)
            if torch._dynamo.utils.counters["stats"]["unique_graphs"] > before:
                compiles.append((tuple(args[0].shape), args[2]))
            return out
        return call

    monkeypatch.setattr(torch, "compile", counting)
    specs = _specs("sparse_vd", {"kl_warmup_start": 0, "kl_warmup_end": 3}, epochs=4, finetune_epochs=0)
    plain = T.run_stack(specs)
    compiled = T.run_stack([dict(s, compile=True) for s in specs])
    assert_stacks_close(compiled, plain)
    # full and partial batch, penalty off (β = 0) and on: four kinds, each compiled once
    assert sorted(compiles) == [((2, 16), False), ((2, 16), True), ((2, 24), False), ((2, 24), True)]


def test_screened_restarts_compile_again_after_the_cut(aot_eager):
    spec = tiny_spec("spike_slab", seed=0, restarts=4, restarts_keep=2, restarts_screen_epochs=1, finetune_epochs=0,
                     **SPEC)
    plain = T.run_stack([spec])
    compiled = T.run_stack([dict(spec, compile=True)])
    assert compiled[0][0][0]["provenance"]["step_compile"] == "compiled (aot_eager)"
    assert_stacks_close(compiled, plain)


def _penalty_read_on_the_host(monkeypatch, name: str) -> None:
    """Method ``name``'s penalty, the same value, after reading it on the host (a graph break,
    which fullgraph refuses)."""
    from slabbench.registry import method_class

    cls = method_class(name)
    real_penalty = cls.penalty

    def penalty(self, model):
        value = real_penalty(self, model)
        return value * 1.0 if float(value.detach().sum()) == float(value.detach().sum()) else value

    monkeypatch.setattr(cls, "penalty", penalty)


def test_a_step_that_cannot_be_compiled_runs_as_written(aot_eager, monkeypatch, caplog):
    """A method whose penalty reads a tensor's value on the host (a graph break, which
    fullgraph refuses) trains as written: the log and the records say why, and nothing of the
    failed attempt (a noise draw, a buffer update) touched the training: its records equal
    those of training without compile, exactly."""
    _penalty_read_on_the_host(monkeypatch, "l0")  # (its penalty is on from the first step: the first compile fails)
    specs = _specs("l0", {}, finetune_epochs=0)
    plain = T.run_stack(specs)
    with caplog.at_level(logging.WARNING, logger="slabbench.engine"):
        compiled = T.run_stack([dict(s, compile=True) for s in specs])
    assert "compiling the training step failed, its steps run as written" in caplog.text
    why = {r["provenance"]["step_compile"] for recs, _ in compiled for r in recs}
    assert len(why) == 1 and why.pop().startswith("eager (compiling failed: "), why
    for got, want in zip(compiled, plain):
        for g, w in zip(got[0], want[0]):
            assert {k: v for k, v in g.items() if k not in ("spec", "provenance", "train_seconds")} == \
                   {k: v for k, v in w.items() if k not in ("spec", "provenance", "train_seconds")}


def test_a_kind_of_step_that_fails_to_compile_later_says_from_which_step(aot_eager, monkeypatch, caplog):
    """The penalty is off during a KL warm-up (β = 0) and on after it: the step with it first
    compiles then.  If that fails, the steps before it stay compiled and those after it run as
    written, and the records say so (not merely "eager")."""
    _penalty_read_on_the_host(monkeypatch, "sparse_vd")
    specs = _specs("sparse_vd", {"kl_warmup_start": 1, "kl_warmup_end": 2}, finetune_epochs=0)
    with caplog.at_level(logging.WARNING, logger="slabbench.engine"):
        compiled = T.run_stack([dict(s, compile=True) for s in specs])
    # epochs 1 and 2 (β = 0, the warm-up ramps from epoch 1 to 2): six steps compiled; the first
    # step with the penalty fails to compile
    assert "its steps run as written from step 7:" in caplog.text
    how = {r["provenance"]["step_compile"] for recs, _ in compiled for r in recs}
    assert len(how) == 1 and how.pop().startswith("compiled (aot_eager) for 6 step(s), then eager (compiling failed: ")


def test_inductor_compiles_the_step_and_trains_reproducibly():
    """The default backend: Inductor's C++ kernels on the CPU.  The compiled training gives the
    records of steps as written to float rounding (1e-4 relative: fused kernels round
    differently), and the same records again when run again (same config and seed)."""
    specs = _specs("spike_slab", {"phi_update": "lrt"}, finetune_epochs=0)
    plain = T.run_stack(specs)
    first = T.run_stack([dict(s, compile=True) for s in specs])
    again = T.run_stack([dict(s, compile=True) for s in specs])
    assert {r["provenance"]["step_compile"] for recs, _ in first for r in recs} == {"compiled (inductor)"}
    assert_stacks_close(first, plain, rel=1e-4)
    for got, want in zip(again, first):
        for g, w in zip(got[0], want[0]):
            assert {k: v for k, v in g.items() if k not in ("provenance", "train_seconds")} == \
                   {k: v for k, v in w.items() if k not in ("provenance", "train_seconds")}


def test_compile_enters_the_run_spec_only_when_true(default_config):
    assert all("compile" not in s and s.compile is False for s in run_specs(default_config))
    cfg = validate(dict(default_config, compile="True"))  # as `snakemake --config compile=True` hands it over
    specs = run_specs(cfg)
    assert all(s["compile"] is True and s.compile is True for s in specs)
    first = next(iter(cfg["experiments"]))
    cfg = validate(dict(default_config, experiments=dict(
        default_config["experiments"], **{first: dict(default_config["experiments"][first], compile=True)})))
    assert {s.experiment for s in run_specs(cfg) if s.compile} == {first}
    assert dataclasses.replace(RunSpec.of(tiny_spec()), compile=True)["compile"] is True


def test_a_compile_option_that_is_not_a_boolean_is_refused(default_config):
    from slabbench.config import ConfigError

    with pytest.raises(ConfigError, match="compile"):
        validate(dict(default_config, compile="fast"))


def test_a_compiled_step_under_graphs(aot_eager, stand_in, caplog):
    """`compile: true` with `graphs: true`: the compiled step is what each kind of step warms
    up, captures and replays (on the CPU with the stand-in of tests/test_graphs.py whose replay
    calls the step; its recording stand-in cannot serve: torch.compile runs nothing compiled
    under a dispatch mode), and trains as the step as written does.  Whether a CUDA graph
    replays Inductor's kernels: benchmarks/gpu_checks.sh."""
    backend = stand_in
    specs = _specs("spike_slab", {"phi_every": 1, "kl_warmup_epochs": 2}, epochs=4)
    plain = T.run_stack([dict(s, graphs=False) for s in specs])
    with caplog.at_level(logging.INFO, logger="slabbench.engine"):
        both = T.run_stack([dict(s, compile=True) for s in specs])
    assert backend.captures and "CUDA graphs off" not in caplog.text, "the graph path ran"
    assert {r["provenance"]["step_compile"] for recs, _ in both for r in recs} == {"compiled (aot_eager)"}
    assert_stacks_close(both, plain)


def test_the_compiled_step_names_the_cpus_vector_width_in_inductors_settings():
    """Inductor's cache of compiled graphs keys on its settings, not on the vector instructions
    its kernels were generated for: a graph compiled with AVX-512 kernels, found again in the
    same cache under ATEN_CPU_CAPABILITY=avx2, trained spike_slab lrt to NaN within two steps
    (torch 2.14.1).  With the width in the settings, each instruction set has its own entries:
    the width of the kernels ATen runs here (ATEN_CPU_CAPABILITY picks them)."""
    import torch._inductor.config as inductor

    width = {"AVX512": 512, "AVX2": 256}.get(torch.backends.cpu.get_cpu_capability())
    if width is None:
        pytest.skip(f"an x86 vector width is expected here, this CPU's kernels are "
                    f"{torch.backends.cpu.get_cpu_capability()}")
    assert E.with_compile_settings(lambda: inductor.cpp.simdlen)() == width
