"""`noise_rng: counter`: every stacked run's noise from a counter-based stream
(slabbench.layers.stacked.CounterNoise), one draw for the whole stack.

The draws are checked against the formula written out here on Python integers, for their
distribution (mean, variance, uniformity, no correlation across runs, draws or neighbouring
elements), and for what the engine needs of them: a run's draws depend on its seed alone (seed 1
in a stack equals seed 1 alone, every method that draws noise), a stack cut to some of its runs
draws on each run's stream, a step's operator count does not grow with the stack, a compiled
step with them gives the records of the step as written, a captured step replays them, and
a job stopped and resumed draws on where it stopped."""

import logging
import math

import pytest
import torch

from conftest import tiny_spec
from slabbench import engine as E
from slabbench import train as T
from slabbench.config import RunSpec, run_specs, validate
from slabbench.layers.stacked import CounterNoise, counter_noise, rand_like, randn_like, run_generators, run_noise
from test_compile import aot_eager  # noqa: F401 (a fixture)
from test_graphs import Recording, assert_stacks_close
from test_stacking import assert_records_close, records_alone
from test_step import DC

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF


def mix32(x: int) -> int:
    """The 32-bit xor-shift-multiply mixer (Feistel round function), on a Python int."""
    x = ((x ^ (x >> 16)) * 0x21F0AAAD) & M32
    x = ((x ^ (x >> 15)) * 0x735A2D97) & M32
    return x ^ (x >> 15)


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def key_words(seed: int) -> list[int]:
    """SplitMix64 of the seed, then of that: four 32-bit words."""
    a = splitmix64(seed)
    b = splitmix64(a)
    return [a & M32, a >> 32, b & M32, b >> 32]


def words(key: list[int], pos: int) -> tuple[int, int]:
    """Four Feistel rounds on the position's (high, low) halves."""
    left, right = pos >> 32, pos & M32
    for r in range(4):
        left, right = right, left ^ mix32(right ^ key[r])
    return left, right


def test_the_draws_are_the_documented_formula_on_every_position():
    """Uniforms ``((w >> 9) + 1/2) 2**-23`` of the second word and Box-Muller normals of both
    words of positions counter + i, the positions across 2**32 (the high half in use: four
    Feistel rounds permute the whole 64-bit position; a first construction that hashed the low
    half keyed by the high half repeated its first 2**32 words, reordered, in every later block,
    which at 532,400 draws per step comes after about 8,000 steps of LeNet-300-100)."""
    seeds = [3, 2 ** 40 + 7]
    noise = CounterNoise(seeds)
    noise.counters.fill_(2 ** 32 - 2)
    with run_generators(noise):
        u = rand_like(torch.empty(2, 2, 2), 2)
        z = randn_like(torch.empty(2, 4), 2)
    assert noise.counters.tolist() == [2 ** 32 - 2] * 2 and noise.drawn == 8  # (moved after a step's backward)
    counters = noise.counters
    noise.advance()
    assert noise.counters is counters and counters.tolist() == [2 ** 32 + 6] * 2 and noise.drawn == 0
    for s, seed in enumerate(seeds):
        key = key_words(seed)
        for i in range(4):
            pos = 2 ** 32 - 2 + i
            assert u[s].flatten()[i].item() == ((words(key, pos)[1] >> 9) + 0.5) * 2.0 ** -23
            v, w = words(key, pos + 4)
            u1, u2 = ((w >> 9) + 0.5) * 2.0 ** -23, (v >> 8) * 2.0 ** -24
            assert z[s, i].item() == pytest.approx(math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2), rel=1e-5, abs=1e-6)


def test_uniforms_and_normals_have_their_distribution():
    """10 runs x 100,000 draws each: per run, the mean and variance within 5 standard errors of
    U(0, 1)'s and N(0, 1)'s (and the normals' fourth moment, 3); the uniforms' 20-bin histogram
    passes a chi-square test at 1e-4; no correlation between runs, between one draw and the next
    (steps), or between neighbouring elements beyond 5 / sqrt(n)."""
    runs, n = 10, 100_000
    noise = CounterNoise(list(range(runs)))
    with run_generators(noise):
        u = rand_like(torch.empty(runs, n, dtype=torch.float64), runs)
        z = randn_like(torch.empty(runs, n, dtype=torch.float64), runs)
        z_next = randn_like(torch.empty(runs, n, dtype=torch.float64), runs)
    se = 5 / math.sqrt(n)
    assert 0 < u.min() and u.max() < 1
    assert (u.mean(1) - 0.5).abs().max() < se * math.sqrt(1 / 12)
    assert (u.var(1) - 1 / 12).abs().max() < se * math.sqrt(1 / 180)  # var of (U - 1/2)^2 is 1/180
    assert z.mean(1).abs().max() < se
    assert (z.var(1) - 1).abs().max() < se * math.sqrt(2)
    assert ((z ** 4).mean(1) - 3).abs().max() < se * math.sqrt(96)  # var of Z^4 is 105 - 9
    counts = torch.histc(u[0], bins=20, min=0, max=1)
    chi2 = ((counts - n / 20) ** 2 / (n / 20)).sum().item()
    assert chi2 < 51.2  # the chi-square (19 degrees of freedom) quantile at 1 - 1e-4 is 51.2
    for x in (u, z):
        c = torch.corrcoef(x) - torch.eye(runs, dtype=x.dtype)
        assert c.abs().max() < se
        assert (torch.corrcoef(torch.stack([x[:, :-1].flatten(), x[:, 1:].flatten()]))[0, 1]).abs() < se
    assert (torch.corrcoef(torch.stack([z.flatten(), z_next.flatten()]))[0, 1]).abs() < se


def test_a_runs_draws_depend_on_its_seed_alone_and_a_cut_stack_draws_on():
    together = CounterNoise([11, 12, 13])
    alone = CounterNoise([12])
    with run_generators(together):
        a = randn_like(torch.empty(3, 5, 7), 3)
    with run_generators(alone):
        b = randn_like(torch.empty(1, 5, 7), 1)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    together.advance()
    alone.advance()
    kept = together.select([1, 2])
    with run_generators(kept):
        c = rand_like(torch.empty(2, 9), 2)
    with run_generators(alone):
        d = rand_like(torch.empty(1, 9), 1)
    assert torch.equal(c[0], d[0])
    with pytest.raises(RuntimeError, match="counter noise for 2 runs drawn for a stack of 3 runs"):
        with run_generators(kept):
            randn_like(torch.empty(3, 4), 3)


def test_compiled_draws_are_the_draws_as_written():
    """A compiled function that draws twice, twice, the positions advanced in between: the
    draws those of the function as written to float rounding (the uniforms' bits exactly)."""
    def draw(noise):
        def f(x):
            with run_generators(noise):
                return x * randn_like(x, 3), rand_like(x, 3)
        return f

    x = torch.ones(3, 1000)
    eager_noise, compiled_noise = CounterNoise([1, 2, 3]), CounterNoise([1, 2, 3])
    compiled = torch.compile(draw(compiled_noise), fullgraph=True, backend="aot_eager")
    for _ in range(2):
        (z, u), (z_want, u_want) = compiled(x), draw(eager_noise)(x)
        torch.testing.assert_close(z, z_want, rtol=1e-6, atol=1e-6)
        assert torch.equal(u, u_want) and compiled_noise.drawn == 2000
        for noise in (eager_noise, compiled_noise):
            noise.advance()
    assert compiled_noise.counters.tolist() == [4000] * 3


CASES = [
    ("spike_slab", {}),
    ("spike_slab", {"phi_update": "lrt"}),
    ("spike_slab", {"phi_update": "gumbel", "prior_from_target": True}),
    ("sparse_vd", {}),
    ("l0", {}),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for m, o in CASES]


def _specs(name, options, seeds=(0, 1, 2), **over):
    return [tiny_spec(name, method_params=options, seed=s, noise_rng="counter", **over) for s in seeds]


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_seed_in_a_stack_equals_seed_alone(name, options):
    specs = _specs(name, options)
    stacked = T.run_stack(specs)
    alone = records_alone(specs[1], options.get("prior_from_target", False))
    assert {r["stack_runs"] for r in alone} == {1} and stacked[1][0][0]["stack_runs"] > 1
    assert_records_close(stacked[1][0], alone)
    assert len({round(r[0][-1]["test_rmse"], 9) for r in stacked}) == 3
    assert all(r["spec"]["noise_rng"] == "counter" for recs, _ in stacked for r in recs)


def test_counter_noise_is_other_noise_and_the_same_again():
    """The same job twice gives the same records; per-run generators give other ones."""
    specs = _specs("spike_slab", {"phi_update": "lrt"}, seeds=(0, 1), finetune_epochs=0)
    first, again = T.run_stack(specs), T.run_stack(specs)
    assert_records_close(first[0][0], again[0][0], rel=0)
    generators = T.run_stack([{k: v for k, v in s.items() if k != "noise_rng"} for s in specs])
    assert first[0][0][0]["test_rmse"] != generators[0][0][0]["test_rmse"]


@pytest.mark.parametrize("name,options", [c for c in DC.METHODS if c[0] not in ("dense", "magnitude")],
                         ids=[DC.label(m, o).replace(" ", "-") for m, o in DC.METHODS if m not in ("dense", "magnitude")])
def test_operators_per_step_do_not_grow_with_the_stack(name, options):
    """With per-run generators a step dispatches one operator per run and draw; with counter
    noise the same operators whatever the stack size (benchmarks/dispatch_counts.py --noise-rng
    counter), and none that waits for the device."""
    counts = {s: DC.count_step(name, options, s, noise_rng="counter") for s in (1, 2, 3)}
    assert counts[1] == counts[2] == counts[3]
    assert not set(counts[3]) & DC.NOISE and not set(counts[3]) & DC.SYNCING


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_compiled_steps_with_counter_noise_give_the_records_of_steps_as_written(name, options, aot_eager, caplog):
    specs = _specs(name, options, seeds=(0, 1), batch_size=24, epochs=3)
    plain = T.run_stack(specs)
    with caplog.at_level(logging.INFO, logger="slabbench.engine"):
        compiled = T.run_stack([dict(s, compile=True) for s in specs])
    assert "compiling the training step failed" not in caplog.text
    assert {r["provenance"]["step_compile"] for recs, _ in compiled for r in recs} == {"compiled (aot_eager)"}
    assert_stacks_close(compiled, plain)


def test_inductor_compiled_steps_with_counter_noise():
    """Inductor itself (C++ kernels, the draws' integer work and Box-Muller compiled with the step):
    the records of the steps as written to float rounding.  Vectorised log and cos round the
    normals differently in the last bit, which can flip which of two weights with PIPs one
    rounding apart is pruned at a target: nodes kept (and so the physical network's weights) may
    differ by one per layer (measured here: one record of six, nodes [4, 3] as written against
    [4, 2] compiled, physical weights 24 against 25, every other field equal)."""
    specs = _specs("spike_slab", {"phi_update": "lrt"}, seeds=(0, 1), batch_size=24, epochs=2, finetune_epochs=0)
    plain = T.run_stack(specs)
    compiled = T.run_stack([dict(s, compile=True) for s in specs])
    assert {r["provenance"]["step_compile"] for recs, _ in compiled for r in recs} == {"compiled (inductor)"}
    for (got, _), (want, _) in zip(compiled, plain):
        for g, w in zip(got, want):
            assert all(abs(a - b) <= 1 for a, b in zip(g.pop("nodes_kept"), w.pop("nodes_kept")))
            g.pop("physical_weights"), w.pop("physical_weights")
        assert_records_close([dict(r, spec=None) for r in got], [dict(r, spec=None) for r in want], rel=1e-4)


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_replays_of_recorded_operations_give_the_records_of_eager_steps(name, options, monkeypatch):
    """The stand-in closest to a CUDA graph (a replay re-runs the captured operations on the
    same tensors, none of the step's Python): the counters advance in the replays as in eager
    steps."""
    backend = Recording()
    monkeypatch.setattr(E, "GRAPH_BACKEND", backend)
    specs = _specs(name, options, batch_size=24, epochs=4)
    eager = T.run_stack([dict(s, graphs=False) for s in specs])
    graphed = T.run_stack(specs)
    assert backend.captures
    assert_stacks_close(graphed, eager)


def test_screened_starts_draw_on_their_own_streams(monkeypatch):
    """A stack cut by restarts' screening: the starts kept train on exactly as without the
    screening (their final objectives equal), so each draws on its own stream after the cut;
    under the recording stand-in too, which captures the cut stack anew (Adam fused and
    capturable in both, as graphs make it: CPU Adam's rounding moved one start's objective by
    2e-9 relative here, which a list holding None cannot be compared within)."""
    monkeypatch.setattr(E, "CAPTURABLE_ADAM", ("cuda", "cpu"))
    base = dict(restarts=4, epochs=4, finetune_epochs=0, noise_rng="counter", batch_size=24)
    plain = T.run_stack([tiny_spec("spike_slab", **base)])[0][0][0]
    spec = tiny_spec("spike_slab", restarts_keep=2, restarts_screen_epochs=2, **base)
    screened = T.run_stack([spec])
    rec = screened[0][0][0]
    finalists = rec["restart_finalists"]
    assert len(finalists) == 2
    assert [rec["restart_objectives"][k] for k in finalists] == pytest.approx(
        [plain["restart_objectives"][k] for k in finalists], rel=1e-4)
    monkeypatch.setattr(E, "GRAPH_BACKEND", Recording())
    assert_stacks_close(T.run_stack([dict(spec, graphs=True)]), screened)


def test_a_job_with_counter_noise_resumes_to_the_same_records(tmp_path, monkeypatch):
    from test_checkpoint import SPEC, assert_same_records, resumed
    specs = _specs("spike_slab", {"kl_warmup_epochs": 3}, seeds=(0, 1), **SPEC)
    want = T.run_stack(specs)
    assert_same_records(resumed(specs, tmp_path / "job.pt", monkeypatch, 2), want)


def test_screened_restarts_with_counter_noise_resume_after_the_cut(tmp_path, monkeypatch):
    """Stopped after the screening cut the stack: the resumed job cuts its fresh stack the same
    way and loads the kept starts' stream positions into it."""
    from test_checkpoint import SPEC, assert_same_records, resumed
    specs = [tiny_spec("spike_slab", restarts=3, restarts_keep=1, restarts_screen_epochs=2, seed=s,
                       noise_rng="counter", **dict(SPEC, epochs=5)) for s in (0, 1)]
    want = T.run_stack(specs)
    assert_same_records(resumed(specs, tmp_path / "job.pt", monkeypatch, 3), want)


def test_the_option_enters_the_spec_only_when_counter_and_a_bad_value_is_named(default_config):
    from slabbench.config import ConfigError

    assert all("noise_rng" not in s and s.noise_rng == "generators" for s in run_specs(default_config))
    first = next(iter(default_config["experiments"]))
    cfg = validate(dict(default_config, experiments=dict(
        default_config["experiments"], **{first: dict(default_config["experiments"][first], noise_rng="counter")})))
    specs = run_specs(cfg)
    assert {s["noise_rng"] for s in specs if s.experiment == first} == {"counter"}
    assert all("noise_rng" not in s for s in specs if s.experiment != first)
    assert RunSpec.of(specs[0].to_dict()) == specs[0]
    with pytest.raises(ConfigError, match=r"philox.*generators.*counter|generators.*counter.*philox"):
        validate(dict(default_config, noise_rng="philox"))


def test_the_engines_interface_of_both_kinds_of_noise():
    """What fit_stacked calls on a stack's noise, for generators and counter-based noise alike:
    the generators a CUDA graph registers, select, state / load_state (a mismatch named),
    begin_step (a step that failed half-way left nothing drawn) and advance."""
    gens = run_noise("generators", [1, 2, 3])
    noise = run_noise("counter", [1, 2, 3])
    assert len(gens.generators) == 3 and noise.generators == []
    assert gens.select([2])[0] is gens[2] and noise.select([0, 2]).keys.tolist() == noise.keys[[0, 2]].tolist()
    with run_generators(noise):
        randn_like(torch.empty(3, 10), 3)
    saved = noise.state()
    assert noise.drawn == 10 and saved["counters"].tolist() == [0, 0, 0]
    noise.begin_step()
    assert noise.drawn == 0
    with run_generators(noise):
        randn_like(torch.empty(3, 10), 3)
    noise.advance()
    assert noise.counters.tolist() == [10] * 3 and saved["counters"].tolist() == [0] * 3  # (a copy)
    noise.load_state(saved)
    assert noise.counters.tolist() == [0] * 3
    with pytest.raises(ValueError, match="not the stream positions of 3 runs"):
        noise.load_state(gens.state())
    with pytest.raises(ValueError, match="not the states of 3 run generators"):
        gens.load_state(saved)
    with pytest.raises(ValueError, match="noise_rng 'philox': expected one of generators, counter"):
        run_noise("philox", [1])


def test_counter_noise_of_a_float64_tensor_keeps_its_dtype_and_uniforms_are_exact():
    noise = CounterNoise([5])
    out = counter_noise(noise.keys, noise.counters, (1, 3), torch.float64, normal=False)
    assert out.dtype == torch.float64
    # a uniform is an odd multiple of 2**-24: exact in float32 and float64 alike
    assert all(((v * 2 ** 24) % 2) == 1 for v in out.flatten().tolist())
