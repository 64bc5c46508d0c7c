"""slabbench.archive: finished stacks carried to a fresh clone in one small file, restored
there so that Snakemake retrains nothing that finished and the paper's freeze reads them."""

import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

from conftest import copy_checkout, job_counts
from slabbench.archive import ArchiveError, pack, read_archive, unpack
from slabbench.cli import latency_job, main, stack_outputs
from slabbench.paper import freeze
from slabbench.stackfile import DamagedRunError, read_stack_file

CONFIG = {
    "device": "cpu", "seeds": [0, 1], "sparsities": [0.5, 0.9], "methods": ["dense", "spike_slab"],
    "experiments": {"sim": {"dataset": "simulation", "dataset_params": {"p": 8, "n_train": 64, "n_val": 32, "n_test": 64},
                            "model": "mlp", "model_params": {"hidden": [6]}, "epochs": 2, "batch_size": 32, "lr": 0.01}},
}


def checkout(path):
    """A fresh copy of the checkout (new file dates, as a clone has), with the test config."""
    copy_checkout(path, keep_dates=False)
    (path / "grid.yaml").write_text(yaml.safe_dump(CONFIG))
    return path


def snakemake(cwd, *args):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "grid.yaml", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkout that trained every stack of CONFIG (`snakemake stacks`) and its archive."""
    first = checkout(tmp_path_factory.mktemp("arch") / "first")
    snakemake(first, "--cores", "2", "stacks")
    archive = first / "grid.tar.gz"
    pack(first / "grid.yaml", archive, first)
    return first, archive


def test_the_archive_keeps_records_and_input_pips_only(trained):
    first, archive = trained
    manifest, members = read_archive(archive)
    assert manifest["runs"] == 4 and len(manifest["stacks"]) == 2
    assert manifest["config_sha256"] == __import__("hashlib").sha256((first / "grid.yaml").read_bytes()).hexdigest()
    names = set(members)
    assert "results/runs/sim/spike_slab/seed=1/metrics.jsonl" in names
    assert not [n for n in names if "physical" in n]  # physical networks stay behind
    import io

    import torch
    slim = torch.load(io.BytesIO(members["results/runs/sim/spike_slab/seed=0/artefacts.pt"]), weights_only=True)
    full = torch.load(first / "results/runs/sim/spike_slab/seed=0/artefacts.pt", weights_only=True)
    assert list(slim) == ["pip_input"] and len(full) > 1
    assert torch.equal(slim["pip_input"], full["pip_input"])
    # records byte for byte
    assert members["results/runs/sim/dense/seed=1/metrics.jsonl"] == (first / "results/runs/sim/dense/seed=1/metrics.jsonl").read_bytes()


def test_packing_twice_gives_the_same_bytes(trained, tmp_path):
    first, archive = trained
    again = tmp_path / "again.tar.gz"
    pack(first / "grid.yaml", again, first)
    assert again.read_bytes() == archive.read_bytes()


def test_a_fresh_clone_continues_from_the_archive_and_retrains_nothing(trained, tmp_path):
    first, archive = trained
    second = checkout(tmp_path / "second")
    assert job_counts(snakemake(second, "-n", "--cores", "1", "stacks")) == {"train": 2, "stacks": 1}
    assert main(["archive", "unpack", str(archive), "--directory", str(second)]) == 0
    assert job_counts(snakemake(second, "-n", "--cores", "1", "stacks")) == {}
    # the freeze reads restored runs as it reads the originals: same table, same input PIPs
    a = freeze(first / "grid.yaml", tmp_path / "a", results_root=first)
    b = freeze(second / "grid.yaml", tmp_path / "b", results_root=second)
    present = [sum(e["runs_present"] for e in p["experiments"].values()) for p in (a, b)]  # per experiment
    assert present == [4, 4]
    for name in ("runs.csv", "pips.npz", "features.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # a restored stack is packed again as it came
    repacked = tmp_path / "repacked.tar.gz"
    pack(second / "grid.yaml", repacked, second)
    assert read_archive(repacked)[1] == read_archive(archive)[1]


def test_what_needs_per_weight_artefacts_refuses_a_restored_run(trained, tmp_path, monkeypatch):
    _, archive = trained
    unpack(archive, tmp_path)
    monkeypatch.chdir(tmp_path)  # the stack files list paths relative to Snakemake's working directory
    stack = "results/runs/sim/spike_slab/stack-0.json"
    assert len(stack_outputs([str(tmp_path / stack)], "metrics")) == 2
    assert all(r["archived"] == {"kept_artefacts": ["pip_input"]} for r in read_stack_file(tmp_path / stack)["runs"])
    with pytest.raises(DamagedRunError, match=r"restored from an archive \(slabbench archive unpack\), which keeps each run's records and input PIPs only"):
        stack_outputs([str(tmp_path / stack)], "artefacts")
    with pytest.raises(DamagedRunError, match="restored from an archive"):  # no physical networks to time
        latency_job([stack], str(tmp_path / "latency.csv"))


def test_unpack_leaves_a_present_stack_alone(trained, tmp_path):
    _, archive = trained
    first = unpack(archive, tmp_path)
    assert len(first["restored"]) == 2 and first["kept"] == []
    metrics = tmp_path / "results/runs/sim/dense/seed=0/metrics.jsonl"
    metrics.write_text("local\n")
    again = unpack(archive, tmp_path)
    assert again == {"restored": [], "kept": sorted(first["restored"], key=lambda s: "spike_slab" in s)}
    assert metrics.read_text() == "local\n"


def test_pack_leaves_out_stale_and_damaged_stacks(trained, tmp_path):
    first, _ = trained
    root = tmp_path / "copy"
    shutil.copytree(first / "results", root / "results")
    cfg = dict(CONFIG, experiments={"sim": dict(CONFIG["experiments"]["sim"])})
    (root / "grid.yaml").write_text(yaml.safe_dump(cfg))
    # damage spike_slab's records: only dense is archived
    m = root / "results/runs/sim/spike_slab/seed=1/metrics.jsonl"
    m.write_bytes(m.read_bytes()[:-10])
    manifest = pack(root / "grid.yaml", tmp_path / "a.tar.gz", root)
    assert [s["method"] for s in manifest["stacks"]] == ["dense"]
    # another spec (more epochs) in the config: nothing of the old runs is archived
    cfg["experiments"]["sim"]["epochs"] = 3
    (root / "grid.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ArchiveError, match="no finished stack of .*grid.yaml"):
        pack(root / "grid.yaml", tmp_path / "b.tar.gz", root)
    assert not (tmp_path / "b.tar.gz").exists()


def test_pack_refuses_an_archive_over_the_limit(trained, tmp_path):
    first, _ = trained
    with pytest.raises(ArchiveError, match=r"would be 0\.\d+ MB, over the limit of 0\.001 MB"):
        pack(first / "grid.yaml", tmp_path / "big.tar.gz", first, max_mb=0.001)
    assert not (tmp_path / "big.tar.gz").exists()


def test_unpack_refuses_a_damaged_archive_and_writes_nothing(trained, tmp_path):
    _, archive = trained
    manifest, members = read_archive(archive)
    name = "results/runs/sim/dense/seed=1/metrics.jsonl"
    members[name] = members[name].replace(b'"seed": 1', b'"seed": 7', 1)
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for n, data in {**members, "archive.json": json.dumps(manifest).encode()}.items():
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    with pytest.raises(ArchiveError, match=f"bad.tar.gz is damaged: {name} differs from the checksum"):
        unpack(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "results/runs/sim/dense").exists()


def test_unpack_refuses_paths_outside_results(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for name, data in (("archive.json", json.dumps({"format": 1, "stacks": []}).encode()), ("../evil.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    with pytest.raises(ArchiveError, match="holds '../evil.txt', outside results/runs/"):
        unpack(bad, tmp_path)
    assert main(["archive", "unpack", str(tmp_path / "missing.tar.gz")]) == 2


@pytest.mark.parametrize("limit", ["0", "-5", "nan", "inf", "big"])
def test_pack_refuses_a_size_limit_that_is_not_a_positive_number(limit, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["archive", "pack", "config/config.yaml", str(tmp_path / "a.tar.gz"), "--max-mb", limit])
    assert info.value.code == 2
    assert f"argument --max-mb: '{limit}' is not a size in MB (a finite number > 0)" in capsys.readouterr().err


def test_pack_names_a_config_it_cannot_read(tmp_path, capsys):
    assert main(["archive", "pack", str(tmp_path / "missing.yaml"), str(tmp_path / "a.tar.gz")]) == 2
    assert "No such file" in capsys.readouterr().err
