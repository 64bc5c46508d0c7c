"""Finished runs are checked before they are read: the stack file records the checksum and size
of every file it lists, and a damaged, missing or unparsable file is named together with the
command that retrains its stack (the workflow-level checks are in test_workflow.py)."""

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from conftest import record_fsyncs
from slabbench.cli import pips_job, stack_outputs
from slabbench.io import RecordFileError, read_jsonl, write_jsonl
from slabbench.stackfile import DamagedRunError, file_digest, retrain_command, write_stack_file

STACK = "results/runs/exp/dense/stack-0.json"


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """A finished two-seed stack in tmp_path (the working directory), paths relative to it."""
    monkeypatch.chdir(tmp_path)
    runs = []
    for seed in (0, 1):
        folder = f"results/runs/exp/dense/seed={seed}"
        write_jsonl(f"{folder}/metrics.jsonl", [{"seed": seed, "selection": "natural"}, {"seed": seed, "selection": "target"}])
        torch.save({"pip_input": torch.full((4,), 0.25 * seed)}, f"{folder}/artefacts.pt")
        runs.append({"seed": seed, "metrics": f"{folder}/metrics.jsonl", "artefacts": f"{folder}/artefacts.pt"})
    write_stack_file(STACK, "exp", "dense", runs)
    return runs


def test_stack_file_records_size_and_sha256_of_every_file(stack):
    doc = json.loads(open(STACK).read())
    assert doc["format"] == 2 and [r["seed"] for r in doc["runs"]] == [0, 1]
    for run in doc["runs"]:
        for kind in ("metrics", "artefacts"):
            assert run["checksums"][kind] == file_digest(run[kind])
            assert len(run["checksums"][kind]["sha256"]) == 64 and run["checksums"][kind]["bytes"] > 0
    assert stack_outputs([STACK], "metrics") == [r["metrics"] for r in stack]
    assert stack_outputs([STACK, "other/metrics.jsonl"], "artefacts") == [r["artefacts"] for r in stack] + ["other/metrics.jsonl"]


def test_truncated_metrics_is_named_with_the_retrain_command(stack):
    path = stack[1]["metrics"]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 10])
    with pytest.raises(DamagedRunError) as err:
        stack_outputs([STACK], "metrics")
    msg = str(err.value)
    assert f"{path} is damaged" in msg and f"{len(data) - 10} bytes where {STACK} recorded {len(data)}" in msg
    assert msg.endswith(f"snakemake --cores 8 --forcerun {STACK}") and retrain_command(STACK) in msg


def test_changed_artefacts_of_the_same_size_are_caught_by_their_checksum(stack, tmp_path):
    path = stack[0]["artefacts"]
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    for kind in ("artefacts", "metrics"):  # every file a stack lists is checked, whichever kind is read
        with pytest.raises(DamagedRunError, match=rf"{path} is damaged: its sha256 .* differs .*--forcerun {STACK}$"):
            stack_outputs([STACK], kind)
    with pytest.raises(DamagedRunError, match=f"{path} is damaged"):  # the PIP figure reads through the same check
        pips_job([STACK], {"dataset": "simulation", "dataset_params": {"p": 10}, "experiment": "exp"},
                 str(tmp_path / "p.png"), str(tmp_path / "p.pdf"))


def test_missing_file_and_unparsable_stack_file_are_named(stack):
    import os

    os.unlink(stack[1]["metrics"])
    with pytest.raises(DamagedRunError, match=rf"{stack[1]['metrics']} is missing, but the stack file {STACK} lists it"):
        stack_outputs([STACK], "metrics")
    with open(STACK, "w") as fh:
        fh.write('{"runs": [')
    with pytest.raises(DamagedRunError, match=rf"stack file {STACK} cannot be read .*--forcerun {STACK}$"):
        stack_outputs([STACK], "metrics")


def test_old_stack_file_without_checksums_is_read_unverified(stack, caplog):
    doc = json.loads(open(STACK).read())
    old = {"experiment": "exp", "method": "dense", "runs": [{k: r[k] for k in ("seed", "metrics", "artefacts")} for r in doc["runs"]]}
    with open(STACK, "w") as fh:
        json.dump(old, fh)
    with caplog.at_level(logging.WARNING, logger="slabbench"):
        assert stack_outputs([STACK], "metrics") == [r["metrics"] for r in stack]
    assert f"{STACK} records no checksums" in caplog.text and retrain_command(STACK) in caplog.text


def test_unparsable_record_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2, "b": [1, \n')
    with pytest.raises(RecordFileError, match=rf"{path}, line 3: not a valid JSON record \(.*column \d+\)"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(RecordFileError, match=rf"{path}, line 2: a JSON list, not a record"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(RecordFileError, match=rf"{path}, line 2: .*not UTF-8"):
        read_jsonl(path)


def test_aggregate_names_a_damaged_record_of_an_unverified_stack_with_the_retrain_command(stack, tmp_path):
    from slabbench.cli import aggregate_job

    doc = json.loads(open(STACK).read())
    for run in doc["runs"]:
        del run["checksums"]
    with open(STACK, "w") as fh:
        json.dump(doc, fh)
    path = stack[1]["metrics"]
    data = open(path).read()
    open(path, "w").write(data[: len(data) - 10])
    with pytest.raises(DamagedRunError, match=rf"{path}, line 2: not a valid JSON record .*--forcerun {STACK}$"):
        aggregate_job([STACK], str(tmp_path / "runs.csv"), str(tmp_path / "summary.csv"))


def flushes(monkeypatch) -> list[tuple[str, str | None]]:
    """Records each fsync of slabbench.io (path, and a file's content at that moment) and does it."""
    return record_fsyncs(monkeypatch, lambda p: (str(p), p.read_text() if p.is_file() else None))


def test_a_durable_write_flushes_the_new_file_before_it_replaces_the_old_and_then_its_folder(tmp_path, monkeypatch):
    from slabbench.io import write_text
    target = tmp_path / "out.json"
    write_text(target, "old")
    seen = flushes(monkeypatch)
    write_text(target, "plain")
    assert seen == [] and target.read_text() == "plain"

    def replace_checked(src, dst, real=os.replace):
        assert seen and seen[-1][0] == str(src), "the new file is flushed before it replaces the old"
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace_checked)
    write_text(target, "new", durable=True)
    (tmp, content), (folder, none) = seen
    assert Path(tmp).parent == tmp_path and Path(tmp).name.startswith(".out.json.") and content == "new"
    assert folder == str(tmp_path) and none is None and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("code,raised", [(errno.EINVAL, False), (errno.EIO, True)])
def test_a_folder_that_cannot_be_flushed_is_passed_over_but_an_io_error_is_not(tmp_path, monkeypatch, code, raised):
    import slabbench.io as io
    from slabbench.io import write_text
    real = io._fsync

    def fsync(path):
        if Path(path).is_dir():
            raise OSError(code, os.strerror(code))
        real(path)

    monkeypatch.setattr(io, "_fsync", fsync)
    target = tmp_path / "out.json"
    if raised:
        with pytest.raises(OSError, match=os.strerror(code)):
            write_text(target, "new", durable=True)
    else:
        write_text(target, "new", durable=True)
    assert target.read_text() == "new"  # (the file itself was flushed and renamed before)


def test_a_run_written_twice_gives_the_same_bytes(tmp_path):
    """Its files are saved through an open file: torch would otherwise name the zip's inner folder
    after the random temporary file, and identical runs would differ in every .pt file."""
    from slabbench.cli import _write_run
    from test_honest_numbers import record

    digests = []
    for name in ("a", "b"):
        folder = tmp_path / name
        artefacts = {"pip_input": torch.linspace(0, 1, 5), "physical": {"physical-natural": ({"w": torch.ones(2)}, {"v": torch.zeros(3)})}}
        _write_run([record()], artefacts, folder / "metrics.jsonl", folder / "artefacts.pt")
        digests.append({p.name: file_digest(p) for p in sorted(folder.iterdir())})
    assert sorted(digests[0]) == ["artefacts.pt", "metrics.jsonl", "physical-natural.pt", "physical-natural.sparse.pt"]
    assert digests[0] == digests[1]
    assert torch.equal(torch.load(tmp_path / "a" / "physical-natural.sparse.pt", weights_only=True)["v"], torch.zeros(3))


def test_a_missing_physical_network_is_named_with_the_retrain_command(stack):
    from slabbench.cli import latency_job

    with pytest.raises(FileNotFoundError, match=r"physical-natural.pt is missing .*snakemake --cores 8 --forcerun "
                                                 r"results/runs/exp/dense/stack-0.json"):
        latency_job([STACK], "latency.csv")
