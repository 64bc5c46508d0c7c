"""Resumable jobs (slabbench.checkpoint): a job stopped after any epoch and run again goes on
from its checkpoint and gives, bit for bit, the records of the job that never stopped; a
checkpoint of another job or code, or a damaged one, is set aside; a finished job leaves none."""

import logging
from collections import Counter, OrderedDict, defaultdict, namedtuple

import pytest
import torch

from conftest import record_fsyncs, tiny_spec
from slabbench import checkpoint as C
from slabbench import train as T
from test_stacking import SKIP, _ForeignConv, blobs  # noqa: F401 (a fixture)

SPEC = dict(batch_size=24, epochs=4)


class Stopped(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


def stop_after(monkeypatch, writes: int) -> list[int]:
    """Make the ``writes``-th checkpoint write (counting from 1) stop the job right after it."""
    real, count = C.JobCheckpoint.write, [0]

    def write(self, *args):
        real(self, *args)
        count[0] += 1
        if count[0] == writes:
            raise Stopped

    monkeypatch.setattr(C.JobCheckpoint, "write", write)
    return count


def assert_same_records(got, want) -> None:
    """Every record of two ``run_stack`` results equal, value for value (wall times and
    provenance aside)."""
    assert len(got) == len(want)
    for (g, _), (w, _) in zip(got, want):  # (by repr: a diverged run's NaN equals a NaN)
        assert repr([{k: v for k, v in r.items() if k not in SKIP} for r in g]) == \
               repr([{k: v for k, v in r.items() if k not in SKIP} for r in w])


def trained_epochs(monkeypatch) -> list[int]:
    """The number of epochs each training (phase) of the jobs that follow trains itself: its
    epochs less those restored from a checkpoint."""
    epochs, real = [], T.fit_stacked

    def counting(*args, **kwargs):
        phase = kwargs.get("checkpoint")
        epochs.append(kwargs["epochs"] - (phase.saved["epoch"] if phase is not None and phase.saved else 0))
        return real(*args, **kwargs)

    from slabbench import engine as E
    monkeypatch.setattr(T, "fit_stacked", counting)
    monkeypatch.setattr(E, "fit_stacked", counting)  # (engine.fit's, for runs trained one after another)
    return epochs


def resumed(specs, path, monkeypatch, writes: int):
    """The records of ``specs`` trained with a checkpoint at ``path`` (written every epoch),
    stopped after its ``writes``-th write and run again; checks that the second process went on
    from the checkpoint (it trained fewer epochs than the whole job, its records say so)."""
    with monkeypatch.context() as m:
        stop_after(m, writes)
        with pytest.raises(Stopped):
            T.run_stack(specs, checkpoint=path, checkpoint_seconds=0)
    assert path.exists()
    with monkeypatch.context() as m:
        full = trained_epochs(m)
        T.run_stack(specs)
    with monkeypatch.context() as m:
        epochs = trained_epochs(m)
        got = T.run_stack(specs, checkpoint=path, checkpoint_seconds=0)
    assert sum(epochs) < sum(full), "the job went on from its checkpoint"
    assert all(r["provenance"]["resumed"] == 1 for records, _ in got for r in records)
    return got


# every method, with the options whose state lives outside the parameters: magnitude's masks
# and schedules, l0's parameter averages (a method attribute) and clamp, spike_slab's φ and
# KL warm-up, sparse_vd's KL warm-up and learning-rate schedule, per-target training
CASES = [
    ("dense", {}), ("magnitude", {}), ("magnitude", {"schedule": "gradual"}),
    ("magnitude", {"schedule": "iterative", "rounds": 2, "begin_frac": 0.25, "end_frac": 0.75}),
    ("spike_slab", {"kl_warmup_epochs": 3}), ("spike_slab", {"phi_update": "lrt", "phi_every": 1}),
    ("spike_slab", {"phi_update": "gumbel"}), ("spike_slab", {"prior_from_target": True}),
    ("sparse_vd", {"kl_warmup_start": 0, "kl_warmup_end": 3, "lr_schedule": "linear_to0"}),
    ("l0", {"ema": 0.9}),
]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{m}-{'-'.join(map(str, o.values())) or 'default'}"
                                                      for m, o in CASES])
def test_a_job_stopped_mid_training_resumes_to_the_same_records(name, options, tmp_path, monkeypatch):
    specs = [tiny_spec(name, method_params=options, seed=s, **SPEC) for s in (0, 1)]
    want = T.run_stack(specs)
    # after epoch 2 of 4 (training), and after the training's last epoch (fine-tuning next)
    for writes in (2, 4):
        path = tmp_path / f"stopped-{writes}.pt"
        assert_same_records(resumed(specs, path, monkeypatch, writes), want)


def test_a_job_stopped_in_its_fine_tuning_skips_its_training(tmp_path, monkeypatch, caplog):
    specs = [tiny_spec("spike_slab", seed=s, **dict(SPEC, finetune_epochs=2)) for s in (0, 1)]
    want = T.run_stack(specs)
    path = tmp_path / "job.pt"
    with monkeypatch.context() as m:
        stop_after(m, 5)  # 4 training epochs, then the first fine-tuning epoch
        with pytest.raises(Stopped):
            T.run_stack(specs, checkpoint=path, checkpoint_seconds=0)
    epochs = trained_epochs(monkeypatch)
    with caplog.at_level(logging.INFO, logger="slabbench.checkpoint"):
        got = T.run_stack(specs, checkpoint=path, checkpoint_seconds=0)
    assert epochs == [0, 1]  # the training is not repeated; one fine-tuning epoch is left
    assert "tiny/spike_slab: stack 0: done" in caplog.text
    assert "tiny/spike_slab fine-tuning: stack 0: from epoch 1" in caplog.text
    assert_same_records(got, want)
    assert all(r["provenance"]["resumed"] == 1 for records, _ in got for r in records)
    assert all("resumed" not in r["provenance"] for records, _ in want for r in records)


def test_screened_restarts_resume_after_the_cut(tmp_path, monkeypatch):
    """Stopped after the screening cut the stack to its best start: the resumed job cuts its
    fresh stack the same way and goes on with the kept start."""
    specs = [tiny_spec("spike_slab", restarts=3, restarts_keep=1, restarts_screen_epochs=2, seed=s,
                       **dict(SPEC, epochs=5)) for s in (0, 1)]
    want = T.run_stack(specs)
    assert_same_records(resumed(specs, tmp_path / "job.pt", monkeypatch, 3), want)


def test_diverged_runs_stay_diverged_when_their_job_resumes(tmp_path, monkeypatch):
    """``on_divergence: record``: runs that diverged before the stop are still recorded as
    diverged, at the epoch they diverged, after the resume."""
    specs = [tiny_spec("dense", seed=s, on_divergence="record", lr=1e8, **SPEC) for s in (0, 1)]
    want = T.run_stack(specs)
    assert all(r["diverged"].startswith("epoch 1") for records, _ in want for r in records)
    assert_same_records(resumed(specs, tmp_path / "job.pt", monkeypatch, 3), want)


def test_screened_out_starts_keep_their_state_at_the_screening(tmp_path, monkeypatch):
    """A start the screening stopped keeps its model as it was then (measured if every start
    trained to the end diverges): restored as such, not as a fresh start."""
    specs = [tiny_spec("spike_slab", restarts=3, restarts_keep=1, restarts_screen_epochs=2, seed=0,
                       **dict(SPEC, epochs=5))]
    seen, real = [], T.choose_starts

    def spy(members, *args, **kwargs):
        seen.append([(m.start, m.screened_out, [p.detach().clone() for p in m.model.parameters()]) for m in members])
        return real(members, *args, **kwargs)

    monkeypatch.setattr(T, "choose_starts", spy)
    T.run_stack(specs)
    resumed(specs, tmp_path / "job.pt", monkeypatch, 3)
    want, got = seen[0], seen[-1]
    assert [s[:2] for s in got] == [s[:2] for s in want] and sum(s[1] for s in got) == 2
    for (_, _, a), (_, _, b) in zip(got, want):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_resumed_job_splits_its_runs_between_stacks_as_before(tmp_path, monkeypatch):
    """How a job splits its runs between stacks depends on the memory free when it starts: a
    resumed job splits them as the job it goes on from did."""
    specs = [tiny_spec("spike_slab", seed=s, **SPEC) for s in (0, 1)]
    monkeypatch.setattr(T, "_free_bytes", lambda device: 1)  # one run per stack
    want = T.run_stack(specs)
    path = tmp_path / "job.pt"
    with monkeypatch.context() as m:
        stop_after(m, 6)  # in the second stack's training
        with pytest.raises(Stopped):
            T.run_stack(specs, checkpoint=path, checkpoint_seconds=0)
    monkeypatch.setattr(T, "_free_bytes", lambda device: 1 << 40)  # both runs would share a stack now
    got = T.run_stack(specs, checkpoint=path, checkpoint_seconds=0)
    assert_same_records(got, want)
    assert [r["stack_runs"] for records, _ in got for r in records] == [r["stack_runs"] for records, _ in want for r in records]


class _NoisyForeign(_ForeignConv):
    """A model that does not stack, and a penalty that draws from torch's global generator."""

    def penalty(self, model):
        return (1.0 + torch.rand(())) * sum(p.square().sum() for p in model.parameters())


def test_runs_trained_one_after_another_resume(tmp_path, monkeypatch, blobs):
    """A method whose model does not stack: each run is a phase of its own, and torch's global
    generator (its noise) is restored with it."""
    monkeypatch.setattr(T, "method_class", lambda name: _NoisyForeign)
    specs = [tiny_spec("foreign", dataset="blobs", model="lenet5", model_params={}, batch_size=16, seed=s, epochs=3)
             for s in (0, 1)]
    want = T.run_stack(specs)
    # in the second run's training
    assert_same_records(resumed(specs, tmp_path / "job.pt", monkeypatch, 5), want)


def test_a_checkpoint_is_written_only_when_its_interval_has_passed(tmp_path, monkeypatch):
    count = stop_after(monkeypatch, 0)
    specs = [tiny_spec("spike_slab", seed=0, **SPEC)]
    T.run_stack(specs, checkpoint=tmp_path / "job.pt", checkpoint_seconds=3600)
    assert count[0] == 0 and not (tmp_path / "job.pt").exists()
    T.run_stack(specs, checkpoint=tmp_path / "job.pt", checkpoint_seconds=0)
    assert count[0] == SPEC["epochs"] + 1  # every training and fine-tuning epoch


def test_a_checkpoint_of_other_specs_or_damaged_is_set_aside(tmp_path, monkeypatch, caplog):
    specs = [tiny_spec("dense", seed=0, **SPEC)]
    path = tmp_path / "job.pt"
    with monkeypatch.context() as m:
        stop_after(m, 2)
        with pytest.raises(Stopped):
            T.run_stack(specs, checkpoint=path, checkpoint_seconds=0)
    want = T.run_stack([dict(specs[0], lr=0.02)])
    with caplog.at_level(logging.WARNING, logger="slabbench.checkpoint"):
        got = T.run_stack([dict(specs[0], lr=0.02)], checkpoint=path, checkpoint_seconds=3600)
    assert "was written by another job or code (its specs differ): the job starts afresh" in caplog.text
    assert_same_records(got, want)
    caplog.clear()
    path.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="slabbench.checkpoint"):
        got = T.run_stack([dict(specs[0], lr=0.02)], checkpoint=path, checkpoint_seconds=3600)
    assert f"checkpoint {path} cannot be read" in caplog.text
    assert_same_records(got, want)


def test_the_code_digest_follows_the_plugin_source(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    for f, body in ((a, "x = 1\n"), (b, "x = 2\n")):
        f.write_text("class P:\n    pass\n" + body)
    import importlib.util

    def load(f):
        spec = importlib.util.spec_from_file_location(f.stem, f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.P

    assert C.code_digest(load(a)) == C.code_digest(load(a))
    assert C.code_digest(load(a)) != C.code_digest(load(b))


def test_method_state_keeps_references_to_the_model(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))

    class Holder:
        pass

    h = Holder()
    h.params, h.ctx = "options", "context"
    h.weight, h.layer, h.own = model[0].weight, model[0], [torch.ones(2), None, 3]
    h.same = h.own[0]  # one tensor, two attributes
    [state] = C.method_states([h], model)
    assert set(state) == {"weight", "layer", "own", "same"}
    fresh = torch.nn.Sequential(torch.nn.Linear(2, 2))
    h2 = Holder()
    C.restore_method_states([h2], [state], fresh, torch.device("cpu"))
    assert h2.weight is fresh[0].weight and h2.layer is fresh[0]
    assert torch.equal(h2.own[0], torch.ones(2)) and h2.own[1:] == [None, 3]
    assert h2.same is h2.own[0] and h2.same is not h.own[0]
    h.view = model[0].weight[0]
    with pytest.raises(C.NotResumable, match=r"Holder.view is a view of the model's tensors"):
        C.method_states([h], model)
    del h.view
    h.part = h.own[0][:1]
    with pytest.raises(C.NotResumable, match=r"Holder.part shares memory with another tensor the method holds"):
        C.method_states([h], model)


Pair = namedtuple("Pair", "low high")


def test_method_state_containers_come_back_as_their_own_types(tmp_path):
    """A plugin's defaultdict keeps its default, a namedtuple its fields, an OrderedDict and a
    Counter their types and values, through the file (pickled) and back; the tensors inside are
    copies on the CPU."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))

    class Holder:
        pass

    h = Holder()
    h.params, h.ctx = "options", "context"
    h.history = defaultdict(list, {"loss": [torch.tensor(1.5)]})
    h.bounds = Pair(torch.zeros(2), model[0].weight)
    h.ordered = OrderedDict([("b", 2), ("a", (1, [3]))])
    h.counts = Counter(a=3, b=1)
    [state] = C.method_states([h], model)
    assert state["history"]["loss"][0] is not h.history["loss"][0]
    torch.save(state, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    fresh, h2 = torch.nn.Sequential(torch.nn.Linear(2, 2)), Holder()
    C.restore_method_states([h2], [state], fresh, torch.device("cpu"))
    assert type(h2.history) is defaultdict and h2.history["new"] == [] and h2.history["loss"][0].item() == 1.5
    assert type(h2.bounds) is Pair and h2.bounds.high is fresh[0].weight and torch.equal(h2.bounds.low, torch.zeros(2))
    assert type(h2.ordered) is OrderedDict and list(h2.ordered.items()) == [("b", 2), ("a", (1, [3]))]
    assert type(h2.counts) is Counter and h2.counts == {"a": 3, "b": 1}
    live = torch.ones(1)
    snap = C.cpu_copy({"pair": Pair(1, live), "counts": Counter(a=3)})
    live.add_(1)  # training goes on: the snapshot does not change
    assert type(snap["pair"]) is Pair and snap["pair"].low == 1 and snap["pair"].high.item() == 1.0
    assert type(snap["counts"]) is Counter and snap["counts"] == {"a": 3}


class Span(tuple):
    """A tuple subclass whose constructor does not take one iterable."""

    def __new__(cls, low, high):
        return super().__new__(cls, (low, high))


def test_method_state_that_cannot_be_rebuilt_or_saved_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))

    class Holder:
        pass

    for attr, value in (("span", Span(1, 2)), ("seen", defaultdict(lambda: 0))):
        h = Holder()
        setattr(h, attr, value)
        with pytest.raises(C.NotResumable, match=rf"Holder.{attr} is a {type(value).__name__} that cannot be rebuilt"):
            C.method_states([h], model)


def test_a_checkpoint_that_cannot_be_written_to_the_disk_switches_checkpoints_off(tmp_path, monkeypatch, caplog):
    import slabbench.io as io

    def failing(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "_fsync", failing)
    specs = [tiny_spec("dense", seed=0, **SPEC)]
    path = tmp_path / "job.pt"
    with caplog.at_level(logging.WARNING, logger="slabbench.checkpoint"):
        got = T.run_stack(specs, checkpoint=path, checkpoint_seconds=0)
    assert "checkpoints off for this job (the file cannot be written: [Errno 28] No space left" in caplog.text
    assert caplog.text.count("checkpoints off") == 1 and not path.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert_same_records(got, T.run_stack(specs))


@pytest.mark.parametrize("every", [0, 3600])
def test_a_state_that_cannot_be_written_switches_checkpoints_off(tmp_path, monkeypatch, caplog, every):
    """Named at the first epoch's state, also when no checkpoint would be written for an hour."""
    from slabbench.registry import method_class

    class Lambda(method_class("dense")):
        def __init__(self, params, ctx):
            super().__init__(params, ctx)
            self.handle = lambda: None

    monkeypatch.setattr(T, "method_class", lambda name: Lambda)
    specs = [tiny_spec("dense", seed=0, **SPEC)]
    path = tmp_path / "job.pt"
    with caplog.at_level(logging.WARNING, logger="slabbench.checkpoint"):
        got = T.run_stack(specs, checkpoint=path, checkpoint_seconds=every)
    assert "checkpoints off for this job (attribute 'handle' of the method of run 0 is a function that cannot be saved" in caplog.text
    assert caplog.text.count("checkpoints off") == 1 and not path.exists()
    monkeypatch.undo()
    assert_same_records(got, T.run_stack(specs))


def test_a_finished_job_removes_its_checkpoint(tmp_path, monkeypatch):
    from slabbench.cli import checkpoint_file, train_stack_job
    specs = [tiny_spec("spike_slab", seed=s, **SPEC) for s in (0, 1)]
    stack = tmp_path / "results" / "runs" / "tiny" / "spike_slab" / "stack-0.json"
    path = checkpoint_file(stack)
    assert path == tmp_path / "results" / "checkpoints" / "tiny" / "spike_slab" / "stack-0.pt"
    seen = []
    real = C.JobCheckpoint.write

    def write(self, *args):
        real(self, *args)
        seen.append(self.path)

    monkeypatch.setattr(C.JobCheckpoint, "write", write)
    monkeypatch.setenv("SLABBENCH_CHECKPOINT_MINUTES", "0")
    train_stack_job(specs, str(stack))
    assert seen == [path] * (SPEC["epochs"] + 1) and stack.exists() and not path.exists()
    monkeypatch.setenv("SLABBENCH_CHECKPOINT_MINUTES", "often")
    with pytest.raises(ValueError, match=r"SLABBENCH_CHECKPOINT_MINUTES='often': it must be a number of minutes >= 0"):
        train_stack_job(specs, str(stack))


def test_a_job_flushes_its_outputs_to_the_disk_before_it_removes_its_checkpoint(tmp_path, monkeypatch):
    """After a power loss, a finished job has its files, or its checkpoint to go on from."""
    from slabbench.cli import checkpoint_file, train_stack_job
    specs = [tiny_spec("dense", seed=s, **SPEC) for s in (0, 1)]
    stack = tmp_path / "results" / "runs" / "tiny" / "dense" / "stack-0.json"
    path = checkpoint_file(stack)
    # (a file is flushed under its temporary name, ".NAME.XXXX.tmp")
    seen = record_fsyncs(monkeypatch, lambda p: ("folder" if p.is_dir() else p.name[1:].rsplit(".", 2)[0], path.exists()))
    monkeypatch.setenv("SLABBENCH_CHECKPOINT_MINUTES", "0")
    train_stack_job(specs, str(stack))
    writes = 2 * SPEC["epochs"]  # one checkpoint per epoch (dense: no fine-tuning), then the outputs
    assert [f for f, _ in seen[:writes]] == ["stack-0.pt", "folder"] * SPEC["epochs"]
    outputs = seen[writes:]
    written = sorted(p.name for p in stack.parent.rglob("*") if p.is_file())  # records, artefacts, physical nets
    assert sorted(f for f, _ in outputs[0::2]) == written and len(written) > 5
    assert [f for f, _ in outputs[1::2]] == ["folder"] * len(written) and outputs[-2][0] == "stack-0.json"
    assert all(kept for _, kept in outputs), "the checkpoint is removed only after every output is on the disk"
    assert not path.exists()


def test_a_negative_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint interval: -1.0 seconds; it must be a number >= 0"):
        T.run_stack([tiny_spec("dense", **SPEC)], checkpoint=tmp_path / "job.pt", checkpoint_seconds=-1.0)


def test_a_resumed_training_reports_the_time_per_epoch_of_its_own_epochs(caplog):
    from slabbench import engine as E
    member = E.Member(label="exp/m seed=0", seed=0, target=None, method=None)
    with caplog.at_level(logging.INFO, logger="slabbench.engine"):
        # epochs 10 and 11 of 20 trained in this process, in 4 s
        E._log_progress([member], torch.tensor([3.0]), 3, 11, 20, 4.0, first_epoch=10)
    assert "exp/m: epoch 12/20, 2 s per epoch" in caplog.text


@pytest.mark.parametrize("name,options", [("spike_slab", {"kl_warmup_epochs": 3}), ("l0", {"ema": 0.9})])
def test_a_job_under_graphs_resumes_to_the_same_records(name, options, tmp_path, monkeypatch):
    """Under graphs (the CPU stand-in that replays recorded operations, as a CUDA graph does)
    a resumed job captures its steps anew, with the restored learning rates, β and Adam state
    in the tensors the step reads."""
    from slabbench import engine as E
    from test_graphs import Recording
    monkeypatch.setattr(E, "GRAPH_BACKEND", Recording())
    specs = [tiny_spec(name, method_params=options, seed=s, graphs=True, **SPEC) for s in (0, 1)]
    want = T.run_stack(specs)
    assert_same_records(resumed(specs, tmp_path / "job.pt", monkeypatch, 2), want)


def test_a_compiled_job_resumes_to_the_same_records(tmp_path, monkeypatch):
    """`compile: true` (Dynamo's aot_eager backend here): the resumed process compiles its steps
    anew, β included (a device tensor written from the restored epoch), and gives the records of
    the compiled job that never stopped, which say how its steps ran."""
    from slabbench import engine as E
    monkeypatch.setattr(E, "COMPILE_BACKEND", "aot_eager")
    specs = [tiny_spec("spike_slab", method_params={"kl_warmup_epochs": 3}, seed=s, compile=True, **SPEC)
             for s in (0, 1)]
    want = T.run_stack(specs)
    got = resumed(specs, tmp_path / "job.pt", monkeypatch, 2)
    assert_same_records(got, want)
    for result in (want, got):
        assert {r["provenance"]["step_compile"] for records, _ in result for r in records} == {"compiled (aot_eager)"}
