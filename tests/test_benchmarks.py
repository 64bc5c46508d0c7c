"""The benchmark scripts run and report what they measure (tiny sizes; no timing asserted)."""

import importlib.util

import pandas as pd
import pytest

from conftest import ROOT
from slabbench.registry import available


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_time_prints_a_ratio_per_method(capsys):
    load("step_time").main(["--device", "cpu", "--batch", "8", "--steps", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms/step" not in line]
    methods = {row.split("|")[1].strip() for row in rows}
    assert methods == set(available("method")) & {"dense", "magnitude", "spike_slab", "sparse_vd", "l0"}
    dense = next(r for r in rows if r.startswith("| dense "))
    assert dense.rstrip(" |").endswith("1.00")  # dense relative to itself


def test_published_prints_the_comparison_from_a_run_table(tmp_path, capsys):
    runs = pd.DataFrame([
        {"experiment": "m", "dataset": "mnist", "model": "mlp", "method": "sparse_vd", "seed": 0, "task": "classification", "selection": "natural",
         "target_sparsity": None, "test_accuracy": 0.9808, "sparsity": 0.985, "nodes_kept": "250-60", "epochs": 200},
    ])
    runs.to_csv(tmp_path / "runs.csv", index=False)
    load("published").main(["--runs", str(tmp_path / "runs.csv")])
    line = next(l for l in capsys.readouterr().out.splitlines() if "sparse_vd" in l)
    assert "1.92 (natural, 1 seeds)" in line  # ours: 100 * (1 - 0.9808) = 1.92, and published 1.92
    assert "1.50%" in line and "Molchanov" in line


def test_reproducibility_reports_zero_difference_on_cpu(capsys):
    worst = load("reproducibility").main(["--config", str(ROOT / ".test" / "config.yaml"), "--experiment", "sim-tiny",
                                          "--method", "spike_slab", "--epochs", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert worst == 0.0 and "largest absolute difference: 0" in out
    assert "| natural | None | test_rmse |" in out


def test_stacking_times_lenet5_per_run(capsys):
    load("stacking").main(["--device", "cpu", "--stacks", "1", "2", "--workloads", "lenet5", "--lenet5-n", "8",
                           "--lenet5-batch", "4", "--methods", "dense", "l0"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "S = 1" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["dense", "l0"]
    assert all(r.split("|")[2].strip().endswith("(1.00x)") for r in rows)  # S = 1 relative to itself


def test_stacking_compares_shared_batches_of_restarts_with_per_start_ones(capsys):
    from slabbench import engine

    load("stacking").main(["--device", "cpu", "--stacks", "1", "2", "--workloads", "simulation", "--sim-epochs", "1",
                           "--methods", "spike_slab", "--starts", "2"])
    out = capsys.readouterr().out
    assert "runs of 2 starts" in out and engine.SHARE_INPUTS  # switched back on afterwards
    table = out[out.index("runs of 2 starts"):]
    rows = [line for line in table.splitlines() if line.startswith("| spike_slab")]
    assert len(rows) == 3  # closed form, lrt, gumbel
    assert all(len(r.split("|")[2:-1]) == 2 and all(" vs " in c and c.strip().endswith("x)") for c in r.split("|")[2:-1])
               for r in rows)


def test_per_target_prints_cpu_time_per_epoch_of_a_job(capsys):
    load("per_target").main([str(ROOT / ".test" / "config.yaml"), "--experiment", "sim-tiny", "--method", "spike_slab",
                             "--seeds", "2", "--epochs", "1", "2"])
    out = capsys.readouterr().out
    assert out.startswith("sim-tiny/spike_slab: 2 seeds x ") and "stacks of [2] runs" in out and "ms per epoch" in out


def test_grid_time_schedules_longest_first():
    makespan = load("grid_time").makespan
    assert makespan([5, 4, 3, 3], 2) == 8  # lanes 5+3 and 4+3: the last 3 joins the shorter lane (7) -> 8, 7
    assert makespan([5, 4, 3, 3], 1) == 15 and makespan([5, 4, 3, 3], 8) == 5


def test_grid_time_lengthens_a_timing_until_the_epochs_show():
    """A job of fixed cost 30 s and 0.01 s per epoch: 6 epochs add 0.06 s (noise); the second
    timing grows 6 -> 24 -> 96 -> 384 -> 1536 epochs until it adds at least 15 s, never past the
    config's length."""
    grown = load("grid_time").grown
    calls = []

    def measure(n):
        calls.append(n)
        return 30.0 + 0.01 * n

    t, n = grown(measure, 30.02, 6, 2000, 15.0)
    assert calls == [6, 24, 96, 384, 1536] and n == 1536 and t == pytest.approx(45.36)
    calls.clear()
    assert grown(measure, 30.02, 6, 100, 15.0)[1] == 100 and calls == [6, 24, 96, 100]  # capped


def test_grid_time_extrapolates_each_job_of_a_config(tmp_path, capsys):
    load("grid_time").main([str(ROOT / ".test" / "config.yaml"), "--experiments", "sim-tiny", "--methods", "dense",
                            "magnitude", "--epochs", "1", "2", "--repeat", "1", "--device", "cpu", "--out",
                            str(tmp_path / "rows.csv")])
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert list(rows["method"]) == ["dense", "magnitude"] and (rows["runs"] == 2).all()
    # T = rest + epochs x per epoch + fine-tuning epochs x per fine-tuning epoch, at the config's length (5 + 1)
    expect = rows["rest_s"] + 5 * rows["s_per_epoch"] + 1 * rows["s_per_finetune_epoch"]
    assert (rows["job_s"] - expect).abs().max() < 1e-9
    out = capsys.readouterr().out
    assert "| sim-tiny | magnitude | 2 | 5 + 1 | 1, " in out and "one job after another" in out
    assert ((rows["timed_epochs"] >= 2) & (rows["timed_epochs"] <= 5)).all()
    # dense fine-tunes nothing (no scores, no targets): timed at one fine-tuning epoch only, reported as
    # 0 fine-tuning epochs at 0 s each;
    # magnitude fine-tunes its targets: timed at the config's one fine-tuning epoch
    by = rows.set_index("method")
    assert by.loc["dense", "timed_finetune_epochs"] == 0 and by.loc["dense", "s_per_finetune_epoch"] == 0
    assert by.loc["magnitude", "timed_finetune_epochs"] == 1
    assert "| sim-tiny | dense | 2 | 5 + 1 | 1, " in out and " + 0 |" in out


def test_noise_rng_times_the_generators_and_the_counter_based_draw():
    """Each size and draw timed as per-run generators and as the counter-based draw (the
    compiled draw left out: Inductor takes seconds to compile; compiled draws are checked in
    tests/test_counter_noise.py, with the draws' distribution)."""
    bench = load("noise_rng")
    rows = bench.main(["--sizes", "3x100", "--reps", "1", "--no-compile"])
    assert [(r["S"], r["n"], r["draw"]) for r in rows] == [(3, 100, "uniform"), (3, 100, "normal")]
    assert all(r["per_run_ms"] > 0 and r["counter_ms"] > 0 and "compiled_ms" not in r for r in rows)


def test_graph_guard_times_the_check_per_method_and_against_another_version(capsys, tmp_path):
    old = tmp_path / "old_graphs.py"
    old.write_text((ROOT / "src" / "slabbench" / "graphs.py").read_text())
    load("graph_guard").main(["--methods", "dense", "l0", "--runs", "2", "--number", "3", "--repeat", "1",
                              "--against", str(old)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["dense", "l0"]
    assert all(r.rstrip().endswith("x |") and int(r.split("|")[2]) > 10 for r in rows)  # entries, and a ratio


def test_graph_replay_compiled_twins_on_the_cpu_stand_in():
    """graph_replay.py's plumbing on the CPU (its capture stands in by calling the step): the
    replayed stack equals the eager one after the same steps, the compiled twins ran through the
    backend (Dynamo's eager backend here: the same operators, so compiled equals as written), and
    a step that does not compile is reported in its row, the uncompiled columns still measured."""
    import torch

    graph_replay = load("graph_replay")
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    row = graph_replay.probe("l0", {}, 1, 2, torch.device("cpu"), backend=counting)
    assert len(graphs) >= 2  # one graph per compiled twin
    assert row["max_abs_diff"] == 0 and row["compiled_max_abs_diff"] == 0 and row["compiled_vs_written"] == 0
    assert row["compile_s"] > 0 and row["compiled_graph_ms"] > 0 and "compile_error" not in row

    def failing(gm, example_inputs):
        raise RuntimeError("no kernels today")

    row = graph_replay.probe("dense", {}, 1, 2, torch.device("cpu"), backend=failing)
    assert "no kernels today" in row["compile_error"] and row["graph_ms"] > 0 and row["max_abs_diff"] == 0
    assert "compiled_graph_ms" not in row

    # counter-based noise (one draw for the stack): replay, compiled and as written agree, as with generators
    row = graph_replay.probe("spike_slab", {"phi_update": "lrt"}, 2, 2, torch.device("cpu"), backend=counting,
                             noise_rng="counter")
    assert row["noise_rng"] == "counter" and "compile_error" not in row
    # (as written against compiled: rounding, the traced graph's backward sums in another order; 4.8e-7 measured)
    assert row["max_abs_diff"] == 0 and row["compiled_max_abs_diff"] == 0 and row["compiled_vs_written"] < 1e-5


def test_compile_gain_times_each_job_both_ways(tmp_path, capsys):
    """Each job as written and compiled (Dynamo's aot_eager backend here: traced, the same
    operators run), a ratio per job, and the compiled records' distance from those as written."""
    rows = load("compile_gain").main([str(ROOT / ".test" / "config.yaml"), "--experiments", "sim-tiny", "--methods",
                                      "dense", "spike_slab", "--epochs", "1", "2", "--repeat", "1", "--device", "cpu",
                                      "--backend", "aot_eager", "--counter", "--out", str(tmp_path / "rows.csv")])
    assert [r["method"] for r in rows] == ["dense", "spike_slab"]
    # --counter: a third arm, other noise than as written (spike_slab's records move; dense draws none)
    assert [r["counter_test_nll_rel_diff"] > 1e-4 for r in rows] == [False, True]
    assert all(r["step"] == "compiled (aot_eager)" for r in rows)
    assert all(r["compile_s"] > 0 for r in rows)  # (the tiny net's epochs are too short to time reliably)
    assert all(r["test_nll_rel_diff"] < 1e-5 for r in rows)  # the same operators: rounding at most
    out = capsys.readouterr().out
    assert "| sim-tiny | spike_slab | 2 | " in out and "compiled (aot_eager) |" in out and "one job after another" in out
    assert "| compiled + counter | ratio |" in out and "compiled with counter-based noise" in out
    assert len(pd.read_csv(tmp_path / "rows.csv")) == 2
