"""Restarts (several starts of one run, the lowest training objective wins) and method
variants (one method file under several names with options of their own)."""

import copy
import math

import pytest
import torch
from torch import nn

from conftest import tiny_spec
from slabbench import restarts as R
from slabbench import train as T
from slabbench.api import Method, TrainContext
from slabbench.config import ConfigError, method_options, method_plugin, run_options, run_specs, validate
from slabbench.metrics import gaussian_nll
from slabbench.registry import method_class
from slabbench.train import run, run_stack, start_seed, training_objective
from test_stacking import assert_records_close


def test_start_zero_is_the_run_itself_and_later_starts_depend_on_seed_and_start_only():
    assert [start_seed(s, 0) for s in (0, 1, 7)] == [0, 1, 7]
    later = {start_seed(s, k) for s in range(5) for k in range(1, 5)}
    assert len(later) == 20 and not later & set(range(5))
    assert start_seed(3, 2) == 12659493112714039  # a fixed function of (seed, start): the same on every machine


def test_one_start_is_the_run_without_restarts():
    plain = run(tiny_spec("spike_slab"))[0]
    one = run(tiny_spec("spike_slab", restarts=1))[0]
    assert all(r.pop("spec")["restarts"] == 1 for r in one)
    assert_records_close(one, [{k: v for k, v in r.items() if k != "spec"} for r in plain])
    assert all(r["restarts"] == 1 and "restart_chosen" not in r for r in plain)


@pytest.mark.parametrize("name,options", [("spike_slab", {}), ("magnitude", {"schedule": "gradual"}), ("l0", {})])
def test_restarts_pick_the_lowest_training_objective_and_stack_like_runs_alone(name, options):
    specs = [tiny_spec(name, method_params=options, restarts=3, seed=s, epochs=3) for s in (0, 1, 2)]
    stacked = run_stack(specs)
    alone = run(specs[1])
    for a, b in zip(stacked[1][0], alone[0]):  # objectives to float tolerance, like every metric
        assert a.pop("restart_objectives") == pytest.approx(b.pop("restart_objectives"), rel=1e-4)
    assert_records_close(stacked[1][0], alone[0])
    stacked = run_stack(specs)
    for records, _ in stacked:
        for r in records:
            obj = r["restart_objectives"]
            assert r["restarts"] == 3 and len(obj) == 3 and all(math.isfinite(v) for v in obj)
            assert r["restart_chosen"] == min(range(3), key=lambda k: obj[k])
    # the starts differ: three different objectives per run
    assert all(len(set(recs[0]["restart_objectives"])) == 3 for recs, _ in stacked)


def test_start_zero_trains_exactly_the_plain_run(monkeypatch):
    """Start 0 of a run with restarts is the run without them (same initialisation, data order
    and noise): the same trained parameters."""
    vd = method_class("sparse_vd")
    exported, judged = [], []
    real_export, real_objective = vd.export, R.training_objective
    monkeypatch.setattr(vd, "export", lambda self, model: exported.append(copy.deepcopy(model)) or real_export(self, model))
    monkeypatch.setattr(R, "training_objective",
                        lambda model, *a, **k: judged.append(copy.deepcopy(model)) or real_objective(model, *a, **k))
    run(tiny_spec("sparse_vd"))
    run(tiny_spec("sparse_vd", restarts=2))
    plain, start0, start1 = exported[0], judged[0], judged[1]
    # equal to float tolerance: two stacked runs and one reduce in another order
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(plain.state_dict().values(), start0.state_dict().values()))
    assert not all(torch.allclose(a, b, rtol=1e-2) for a, b in zip(plain.state_dict().values(), start1.state_dict().values()))


def test_starts_share_the_runs_data_order_and_draw_their_own_initialisation_and_noise(monkeypatch):
    seen = {}
    real = T._train

    def spy(members, xs, ys, **kw):
        if not seen:  # the training (the later calls fine-tune)
                seen.update(data=list(kw["data_seeds"]), noise=[m.noise_seed for m in members], starts=[m.start for m in members],
                        first=[next(m.model.parameters()).detach().clone() for m in members])
        return real(members, xs, ys, **kw)

    monkeypatch.setattr(T, "_train", spy)
    run(tiny_spec("spike_slab", seed=4, restarts=3))
    assert seen["starts"] == [0, 1, 2] and seen["data"] == [4, 4, 4]
    assert seen["noise"][0] == T.noise_seed(4) and len(set(seen["noise"])) == 3
    assert not torch.equal(seen["first"][0], seen["first"][1]) and not torch.equal(seen["first"][1], seen["first"][2])


def test_a_diverged_start_loses_and_only_all_starts_diverging_stops_the_job(monkeypatch):
    cls = method_class("dense")
    real_build = cls.build

    def build(self, model):  # the core seeds torch with the start's seed before building
        model = real_build(self, model)
        if torch.initial_seed() != 0:  # every start but start 0 of seed 0 diverges
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return model

    monkeypatch.setattr(cls, "build", build)
    records, _ = run(tiny_spec("dense", seed=0, restarts=3))
    assert records[0]["restart_chosen"] == 0 and records[0]["restart_objectives"][1:] == [None, None]
    assert "diverged" not in records[0]
    with pytest.raises(T.TrainingDiverged, match="every one of its 3 starts diverged"):
        run(tiny_spec("dense", seed=5, restarts=3))  # every start's init seed is != 0
    records, _ = run(tiny_spec("dense", seed=5, restarts=3, on_divergence="record"))
    assert records[0]["diverged"] and records[0]["restart_objectives"] == [None, None, None]


def test_choice_follows_the_objective_and_counts_every_starts_seconds(monkeypatch):
    values = iter([3.0, 1.0, 2.0, math.nan, 5.0, 4.0])
    monkeypatch.setattr(R, "training_objective", lambda *a, **k: next(values))
    ctx = TrainContext("regression", 4, 1, 1, 1e-2, torch.device("cpu"), None)
    members = [T.Member(label=f"r{r} s{k}", seed=r, target=None, method=Method(None, ctx), model=nn.Linear(1, 1),
                        start=k) for r in (0, 1) for k in range(3)]
    data = [(torch.zeros(4, 1), torch.zeros(4))] * 6
    kept, runs, secs, info = R.choose_starts(members, [0, 0, 0, 1, 1, 1], [1.0, 2.0, 3.0, 10.0, 20.0, 30.0], data,
                                               task="regression", noise_sd=1.0)
    assert [m.start for m in kept] == [1, 2] and runs == [0, 1] and secs == [6.0, 60.0]
    assert info[0] == {"restarts": 3, "restart_chosen": 1, "restart_objectives": [3.0, 1.0, 2.0]}
    assert info[1]["restart_chosen"] == 2 and info[1]["restart_objectives"] == [None, 5.0, 4.0]  # NaN never wins


def test_training_objective_by_hand_for_a_deterministic_net():
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0]]))
        net.bias.fill_(0.5)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    y = torch.tensor([1.0, -1.0, 0.0])
    # predictions 1.5, -1.5, 0.5; squared errors 0.25, 0.25, 0.25 at sd 2
    expected = 0.5 * math.log(2 * math.pi * 4) + 0.25 / (2 * 4)
    ctx = TrainContext("regression", 3, 1, 1, 1e-2, torch.device("cpu"), None)
    assert training_objective(net, Method(None, ctx), x, y, task="regression", noise_sd=2.0) == pytest.approx(expected)

    class Penalised(Method):
        def penalty(self, model):
            return torch.tensor(6.0)

    assert training_objective(net, Penalised(None, ctx), x, y, task="regression", noise_sd=2.0) == pytest.approx(expected + 2.0)


def test_training_objective_averages_sampled_networks_and_restores_batch_norm():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(1)

        def forward(self, x):
            return self.bn(x) + (torch.randn(len(x), 1) if self.training else 0.0)

    torch.manual_seed(0)
    net = Noisy().eval()
    x, y = torch.randn(50, 1), torch.randn(50)
    ctx = TrainContext("regression", 50, 1, 1, 1e-2, torch.device("cpu"), None)
    torch.manual_seed(3)
    value = training_objective(net, Method(None, ctx), x, y, task="regression", noise_sd=1.0, samples=4)
    torch.manual_seed(3)
    by_hand = []
    with torch.no_grad():
        for _ in range(4):
            mean = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5) + torch.randn(50, 1)
            by_hand.append(gaussian_nll(mean.squeeze(1), y, 1.0).mean().item())
    assert value == pytest.approx(sum(by_hand) / 4, rel=1e-5)
    assert not net.training and torch.equal(net.bn.running_mean, torch.zeros(1)) and int(net.bn.num_batches_tracked) == 0


# --------------------------------------------------------------------------- configuration


def test_a_variant_is_its_base_method_with_options_of_its_own(default_config):
    cfg = default_config
    cfg["methods"] = ["dense", "sparse_vd", "sparse_vd_clip", "spike_slab_k4"]
    cfg["method_params"]["sparse_vd_clip"] = {"method": "sparse_vd", "train_clip": True}
    cfg["method_params"]["spike_slab_k4"] = {"method": "spike_slab", "restarts": 4}
    cfg = validate(cfg)
    # the base's options (the global ones, then mnist5k's own kl_warmup_end), then the variant's
    assert method_options(cfg, "mnist5k", "sparse_vd_clip") == dict(method_options(cfg, "mnist5k", "sparse_vd"), train_clip=True)
    assert method_options(cfg, "mnist5k", "sparse_vd_clip")["kl_warmup_end"] == 30
    assert run_options(cfg, "digits", "spike_slab_k4") == {"restarts": 4, "restarts_keep": None, "restarts_screen_epochs": None}
    assert "restarts" not in method_options(cfg, "digits", "spike_slab_k4")
    specs = {(s["experiment"], s["method"]): s for s in run_specs(cfg)}
    s = specs[("digits", "spike_slab_k4")]
    assert s["variant_of"] == "spike_slab" and s["restarts"] == 4 and method_plugin(s) == "spike_slab"
    assert "variant_of" not in specs[("digits", "sparse_vd")] and "restarts" not in specs[("digits", "sparse_vd")]


def test_experiment_restarts_apply_to_its_methods_and_a_methods_own_wins(default_config):
    default_config["experiments"]["digits"]["restarts"] = 3
    default_config["method_params"]["dense"]["restarts"] = 2
    specs = run_specs(validate(default_config))
    got = {(s["experiment"], s["method"]): s.get("restarts", 1) for s in specs}
    assert got[("digits", "l0")] == 3 and got[("digits", "dense")] == 2 and got[("simulation", "l0")] == 1


@pytest.mark.parametrize("change,fragment", [
    (lambda c: c["method_params"].update(ss_x={"method": "spike_slap"}), "unknown base method 'spike_slap' (did you mean 'spike_slab'?)"),
    (lambda c: c["method_params"].update(l0={"method": "dense"}), "'l0' is a method file"),
    (lambda c: c["method_params"].update({"Spike-K": {"method": "spike_slab"}}), "bad variant name 'Spike-K'"),
    (lambda c: c["methods"].append("spike_slab_k9"), "unknown method 'spike_slab_k9'"),
    (lambda c: c["method_params"].update(ss_k={"method": "spike_slab", "phi_updat": "gumbel"}) or c["methods"].append("ss_k"),
     "config.method_params.ss_k: unknown option 'phi_updat' for method 'ss_k' (a variant of 'spike_slab') (did you mean 'phi_update'?)"),
    (lambda c: c["method_params"]["spike_slab"].update(restarts=0), "option 'restarts' is 0; expected an integer >= 1"),
    (lambda c: c["experiments"]["mnist5k"]["method_params"]["sparse_vd"].update(method="l0"), "variants are declared in the global"),
    (lambda c: c["experiments"]["digits"].update(restarts=0), "config.experiments.digits.restarts is 0"),
    (lambda c: c["method_params"].update(a_x={"method": "spike_slab"}, b_x={"method": "a_x"}), "'a_x' is itself a variant"),
    (lambda c: c["method_params"].update(unused={"method": "l0", "bogus": 1}), "config.method_params.unused: unknown option 'bogus'"),
    (lambda c: c["method_params"]["l0"].update(restart=2), "(did you mean 'restarts'?)"),
])
def test_bad_variants_and_restarts_fail_before_any_work_naming_the_value(default_config, change, fragment):
    change(default_config)
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    assert fragment in str(info.value)


@pytest.mark.parametrize("where", ["global", "experiment"])
def test_a_bad_base_option_is_reported_once_not_again_for_its_variants(default_config, where):
    default_config["method_params"]["spike_slab_k2"] = {"method": "spike_slab", "restarts": 2}
    default_config["methods"].append("spike_slab_k2")
    if where == "global":
        default_config["method_params"]["spike_slab"]["phi_update"] = "bogus"
    else:
        default_config["experiments"]["digits"]["method_params"] = {"spike_slab": {"phi_update": "bogus"}}
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    lines = [l for l in str(info.value).splitlines() if "bogus" in l]
    assert len(lines) == 1, lines
    assert lines[0].strip().startswith("config.method_params.spike_slab: " if where == "global"
                                       else "config.experiments.digits.method_params.spike_slab: ")


def test_a_rejected_variant_is_not_reported_again_as_an_unknown_method(default_config):
    default_config["method_params"]["a_x"] = {"method": "spike_slab"}
    default_config["method_params"]["b_x"] = {"method": "a_x"}
    default_config["methods"].append("b_x")
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    assert "b_x" in str(info.value) and "unknown method 'b_x'" not in str(info.value)


def test_each_config_error_is_printed_once(default_config):
    exp = default_config["experiments"]["digits"]
    for key in ("dataset", "model", "epochs", "batch_size"):
        del exp[key]
    exp["lr"] = -1
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == len(set(lines)) == 2, lines
    assert "missing key(s) 'dataset', 'model', 'epochs', 'batch_size'" in lines[0] and "lr is -1" in lines[1]


def test_prior_aimed_at_the_target_trains_once_per_target_with_lambda_one_minus_target(monkeypatch):
    from slabbench.api import make_params

    cls = method_class("spike_slab")
    params = make_params(cls.Params, {"prior_from_target": True}, "spike_slab")
    assert cls.trains_per_target(params) and not cls.trains_per_target(make_params(cls.Params, {}, "spike_slab"))
    ctx = TrainContext("regression", 10, 1, 1, 1e-2, torch.device("cpu"), None, target=0.9)
    assert cls(params, ctx).prior_inclusion == pytest.approx(0.1)
    with pytest.raises(Exception, match="prior_from_target.*leave 'prior_inclusion' null"):
        cls(make_params(cls.Params, {"prior_from_target": True, "prior_inclusion": 0.5}, "spike_slab"), ctx)
    # both targets train in one stack, each run under its own λ: every layer of the stacked
    # model the penalty sees holds λ per run (prior_logit, (S,)), in the members' target order
    seen = []
    real = cls.penalty

    def spy(self, model):
        seen.append({tuple(round(v, 6) for v in torch.sigmoid(layer.prior_logit).tolist())
                     for layer in model.modules() if "prior_logit" in layer._buffers})
        return real(self, model)

    monkeypatch.setattr(cls, "penalty", spy)
    records, _ = run(tiny_spec("spike_slab", method_params={"prior_from_target": True}))
    assert [r["target_sparsity"] for r in records] == [0.5, 0.9] and all(r["selection"] == "target" for r in records)
    assert seen and all(s == {(0.5, 0.1)} for s in seen)
    assert {r["stack_runs"] for r in records} == {2}


def test_variants_sort_beside_their_base_and_keep_their_colour_across_figures():
    import matplotlib.colors as mc

    from slabbench.plotting import METHOD_COLOURS, method_colour, method_linestyle, method_order

    assert method_order(["l0", "spike_slab_k4", "dense", "spike_slab", "mine"]) == ["dense", "spike_slab", "spike_slab_k4", "l0", "mine"]
    one = ["dense", "spike_slab", "spike_slab_k4"]
    two = ["dense", "spike_slab", "spike_slab_k4", "l0", "mine", "l0_x", "sparse_vd_clip"]
    # the same colour in every figure unless another variant of its base in the figure chose it too
    assert method_colour("spike_slab_k4", one) == method_colour("spike_slab_k4", two) == method_colour("spike_slab_k4")
    three = two + ["spike_slab_gumbel", "spike_slab_target"]
    rgb = {m: mc.to_rgb(method_colour(m, three)) for m in three}
    assert len(set(rgb.values())) == len(three)  # distinct within a figure
    # a variant is a darker shade of its base: the same hue, every channel scaled by one factor < 1
    base, var = mc.to_rgb(METHOD_COLOURS["spike_slab"]), rgb["spike_slab_k4"]
    ratios = {round(v / b, 6) for v, b in zip(var, base) if b > 0}
    assert len(ratios) == 1 and 0 < ratios.pop() < 1
    assert method_linestyle("spike_slab_k4") != method_linestyle("spike_slab") == method_linestyle("mine")


def test_target_records_carry_their_fine_tunings_seconds():
    tuned, _ = run(tiny_spec("magnitude"))
    plain, _ = run(tiny_spec("magnitude", finetune_epochs=0))
    assert all(r["finetune_seconds"] > 0 for r in tuned if r["selection"] == "target")
    assert all(r["finetune_seconds"] == 0 for r in plain if r["selection"] == "target")
    assert all("finetune_seconds" not in r for r in tuned if r["selection"] == "natural")


@pytest.mark.parametrize("name,options", [("spike_slab", {}), ("l0", {"ema": 0.9}), ("magnitude", {"schedule": "gradual"})])
def test_screened_starts_continue_exactly_as_without_the_screening(name, options):
    """restarts_keep / restarts_screen_epochs: after the screening epoch the stack is cut to the
    best starts of each run, and those train on exactly as they would have (parameters, Adam
    state, data order, noise, a stackable method's per-run state such as l0's averages, a
    per-run hook method's own instances): their final objectives equal those of the same
    starts trained without the screening."""
    base = dict(method_params=options, restarts=4, epochs=4)
    plain = run_stack([tiny_spec(name, seed=s, **base) for s in (0, 1)])
    screened = run_stack([tiny_spec(name, seed=s, restarts_keep=2, restarts_screen_epochs=2, **base) for s in (0, 1)])
    for (p_recs, _), (s_recs, _) in zip(plain, screened):
        for p, s in zip(p_recs, s_recs):
            screen = s["restart_screen_objectives"]
            assert len(screen) == 4 and all(math.isfinite(v) for v in screen)
            finalists = sorted(sorted(range(4), key=lambda k: (screen[k], k))[:2])
            assert s["restart_finalists"] == finalists
            final = s["restart_objectives"]
            assert [k for k in range(4) if final[k] is not None] == finalists
            assert [final[k] for k in finalists] == pytest.approx([p["restart_objectives"][k] for k in finalists], rel=1e-4)
            assert s["restart_chosen"] == min(finalists, key=lambda k: final[k])
            assert "restart_finalists" not in p and p["restarts"] == s["restarts"] == 4
    # the screening's values are the starts' objectives after 2 of the 4 epochs: not the final ones
    assert screened[0][0][0]["restart_screen_objectives"] != screened[0][0][0]["restart_objectives"]


@pytest.mark.parametrize("change,fragment", [
    (dict(restarts=4, restarts_keep=2), "'restarts_keep' (2) and 'restarts_screen_epochs' (None) go together"),
    (dict(restarts=4, restarts_keep=4, restarts_screen_epochs=1), "'restarts_keep' is 4; expected an integer from 1 to restarts - 1 = 3"),
    (dict(restarts=4, restarts_keep=2, restarts_screen_epochs=999), "'restarts_screen_epochs' is 999; expected an integer from 1 to epochs - 1"),
    (dict(restarts=4, restarts_kep=2), "(did you mean 'restarts_keep'?)"),
])
def test_bad_screening_options_fail_before_any_work_naming_the_value(default_config, change, fragment):
    default_config["method_params"]["spike_slab"].update(change)
    with pytest.raises(ConfigError) as info:
        validate(default_config)
    assert fragment in str(info.value)
    assert str(info.value).count(fragment) == 1


def test_screening_options_reach_the_spec_from_a_variant_or_an_experiment(default_config):
    default_config["method_params"]["spike_slab_s"] = {"method": "spike_slab", "restarts": 6, "restarts_keep": 2,
                                                       "restarts_screen_epochs": 1}
    default_config["experiments"]["simulation"]["methods"].append("spike_slab_s")
    default_config["experiments"]["digits"].update(restarts=3, restarts_keep=1, restarts_screen_epochs=1)
    specs = run_specs(validate(default_config))
    got = {(s["experiment"], s["method"]): (s.get("restarts"), s.get("restarts_keep"), s.get("restarts_screen_epochs"))
           for s in specs}
    assert got[("simulation", "spike_slab_s")] == (6, 2, 1)
    assert got[("digits", "l0")] == (3, 1, 1) and got[("simulation", "l0")] == (None, None, None)


def test_a_stack_too_large_is_split_between_runs_never_inside_a_runs_starts(monkeypatch):
    """Under memory pressure the screening still compares all of a run's starts: the split is
    between runs, and the result is the one of the unsplit stack."""
    specs = [tiny_spec("spike_slab", seed=s, restarts=4, restarts_keep=2, restarts_screen_epochs=1, epochs=3) for s in (0, 1)]
    whole = run_stack(specs)
    stacks = []
    real = T.fit_stacked
    monkeypatch.setattr(T, "plan_chunks", lambda n, per, free, fraction=0.5: [range(i, min(i + 1, n)) for i in range(n)])
    monkeypatch.setattr(T, "fit_stacked", lambda model, members, *a, **k: stacks.append(len(members)) or real(model, members, *a, **k))
    split = run_stack(specs)
    assert stacks[:2] == [4, 4]  # one run (4 starts) per stack
    for (a, _), (b, _) in zip(whole, split):
        assert a[0]["restart_finalists"] == b[0]["restart_finalists"] and len(b[0]["restart_finalists"]) == 2
        fin = a[0]["restart_finalists"]
        assert [b[0]["restart_objectives"][k] for k in fin] == pytest.approx([a[0]["restart_objectives"][k] for k in fin], rel=1e-4)
