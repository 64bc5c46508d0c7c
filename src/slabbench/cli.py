"""Job entry points (called by the thin Snakemake scripts) and a small command line.

    slabbench validate CONFIG.yaml       check a configuration without running anything
    slabbench runs CONFIG.yaml           list the runs the configuration expands to
    slabbench archive pack CONFIG.yaml ARCHIVE.tar.gz    finished stacks into one small file
    slabbench archive unpack ARCHIVE.tar.gz              ... and back, on another machine or clone
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import yaml

log = logging.getLogger("slabbench")


def setup_logging(path: str | None = None) -> None:
    kw = {"filename": path, "filemode": "w"} if path else {"stream": sys.stderr}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True, **kw)


def reference_metrics(spec: dict, task: str) -> dict:
    """Metrics of the trivial reference for ``spec``'s data (regression: the constant
    training-mean predictor's ``test_rmse_constant``; classification: none, nothing loaded).

    Loads the data set again (cheap for the regression sets; the simulation draws the same
    replicate for the same seed): for frozen tables.  Training records get the same value
    from :func:`slabbench.metrics.constant_predictor_metrics` on the data at hand.
    """
    from slabbench.api import make_params
    from slabbench.metrics import constant_predictor_metrics
    from slabbench.registry import dataset_class

    if task != "regression":
        return {}
    cls = dataset_class(spec["dataset"])
    dataset = cls(make_params(cls.Params, spec.get("dataset_params"), f"dataset {spec['dataset']!r}"), int(spec["seed"]))
    dataset.prepare()
    return constant_predictor_metrics(dataset.load("train")[1], dataset.load("test")[1])


def train_job(spec: dict, metrics_path: str, artefacts_path: str, threads: int = 1) -> None:
    """Train one run and write ``metrics.jsonl`` (every record checked against the metrics
    schema) and ``artefacts.pt`` atomically."""
    from slabbench.train import run

    records, artefacts = run(dict(spec), threads=threads)
    _write_run(records, artefacts, metrics_path, artefacts_path)


def _write_run(records: list[dict], artefacts: dict, metrics_path: str | Path, artefacts_path: str | Path) -> None:
    """Write one run's files: ``artefacts.pt``, each record's physical network and its sparse
    form (``artefacts["physical"]``, see :func:`slabbench.physical.attach`) as
    ``physical-{selection}.pt`` and ``physical-{selection}.sparse.pt`` beside it, and last
    ``metrics.jsonl``; each atomically and flushed to the disk (they cost a training)."""
    from slabbench.io import save_tensors, write_records

    artefacts = dict(artefacts)
    nets = artefacts.pop("physical", {})
    save_tensors(artefacts, artefacts_path, durable=True)
    folder = Path(artefacts_path).parent
    for stem, (payload, sparse) in nets.items():
        for path, obj in ((folder / f"{stem}.pt", payload), (folder / f"{stem}.sparse.pt", sparse)):
            save_tensors(obj, path, durable=True)
    write_records(metrics_path, records, durable=True)


def checkpoint_file(stack_path: str | os.PathLike) -> Path:
    """Where the job of the stack file ``stack_path`` keeps its training state:
    ``results/checkpoints/{experiment}/{method}/stack-{i}.pt`` for
    ``results/runs/{experiment}/{method}/stack-{i}.json``, else beside the stack file."""
    p = Path(stack_path)
    if len(p.parents) > 3 and p.parents[2].name == "runs":
        return p.parents[3] / "checkpoints" / p.parents[1].name / p.parent.name / f"{p.stem}.pt"
    return p.with_name(f"{p.stem}.checkpoint.pt")


def checkpoint_minutes() -> float:
    """How often a training job saves its state: ``$SLABBENCH_CHECKPOINT_MINUTES`` (the
    Snakefile sets it from the config's ``checkpoint_minutes``), else 10."""
    raw = os.environ.get("SLABBENCH_CHECKPOINT_MINUTES", "10")
    try:
        minutes = float(raw)
    except ValueError:
        minutes = float("nan")
    if not minutes >= 0:
        raise ValueError(f"SLABBENCH_CHECKPOINT_MINUTES={raw!r}: it must be a number of minutes >= 0 "
                         f"(0: save every epoch)")
    return minutes


def train_stack_job(specs: list[dict], stack_path: str, threads: int = 1, checkpoint_every: float | None = None) -> None:
    """Train the runs ``specs`` (one experiment x method, several seeds) together and write,
    per seed, ``seed={seed}/metrics.jsonl`` and ``artefacts.pt`` beside ``stack_path``; then the
    stack file itself (:mod:`slabbench.stackfile`: the seeds, their files and the files'
    checksums), atomically and last.  The job's training state is saved every ``checkpoint_every``
    minutes (None: :func:`checkpoint_minutes`) to :func:`checkpoint_file` (:mod:`slabbench.checkpoint`):
    the job goes on from there when it is run again, and removes it once the stack file is written."""
    from slabbench.stackfile import write_stack_file
    from slabbench.train import run_stack

    folder = Path(stack_path).parent
    checkpoint = checkpoint_file(stack_path)
    minutes = checkpoint_minutes() if checkpoint_every is None else checkpoint_every
    results = run_stack([dict(s) for s in specs], threads=threads, checkpoint=checkpoint,
                        checkpoint_seconds=60.0 * minutes)
    runs = []
    for spec, (records, artefacts) in zip(specs, results):
        run = folder / f"seed={spec['seed']}"
        _write_run(records, artefacts, run / "metrics.jsonl", run / "artefacts.pt")
        runs.append({"seed": int(spec["seed"]), "metrics": run / "metrics.jsonl", "artefacts": run / "artefacts.pt"})
    write_stack_file(stack_path, specs[0]["experiment"], specs[0]["method"], runs)
    checkpoint.unlink(missing_ok=True)


def stack_outputs(paths: list[str], kind: str) -> list[str]:
    """The per-seed files (``kind``: ``metrics`` or ``artefacts``) that the stack files
    ``paths`` list, each stack's files checked against the checksums it recorded; other paths
    (a ``metrics.jsonl`` itself) pass through.  A missing, unreadable or changed file is a
    :class:`slabbench.stackfile.DamagedRunError` naming it and the command that retrains its stack."""
    return [f for _, f in _stack_outputs(paths, kind)]


def _stack_outputs(paths: list[str], kind: str) -> list[tuple[str | None, str]]:
    """(stack file or None, file) for every file :func:`stack_outputs` returns."""
    from slabbench.stackfile import verified_files

    out = []
    for p in paths:
        if not str(p).endswith(".json"):
            out.append((None, str(p)))
        else:
            out.extend((str(p), f) for f in verified_files(p, kind))
    return out


def _archived_run(stack: str | None, metrics: str) -> dict | None:
    """The stack file's entry for the run of ``metrics`` if that run was restored from an
    archive (:mod:`slabbench.archive`), else ``None``."""
    from slabbench.stackfile import read_stack_file

    if stack is None:
        return None
    return next((r for r in read_stack_file(stack)["runs"] if r["metrics"] == metrics and r.get("archived")), None)


def latency_job(stack_paths: list[str], latency_csv: str, batches: tuple[int, ...] = (1, 256)) -> None:
    """Time every saved physical network of the runs the stack files ``stack_paths`` list
    (:func:`slabbench.physical.latency`: one thread, each beside the dense network of its
    architecture, timed in alternation) and write one row per run record to ``latency_csv``: the run
    key, ``physical_empty`` and the latencies (empty for an empty network)."""
    import time

    import pandas as pd
    import torch

    from slabbench import physical as P
    from slabbench.aggregate import RUN_KEY, write_csv
    from slabbench.io import read_jsonl
    from slabbench.stackfile import DamagedRunError, archived_message, retrain_advice

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows, archs = [], set()
    for stack, metrics in _stack_outputs(stack_paths, "metrics"):
        folder = Path(metrics).parent
        restored = _archived_run(stack, metrics)
        for rec in read_jsonl(metrics):
            path = folder / f"{P.file_stem(rec)}.pt"
            if not path.is_file() and restored is not None:
                raise DamagedRunError(archived_message(stack, restored))
            if not path.is_file():
                how = retrain_advice(stack) if stack is not None else "retrain its run"
                raise FileNotFoundError(f"{path} is missing (its run {metrics} predates physical networks?); {how}")
            payload = P.check_payload(torch.load(path, weights_only=True), str(path))
            arch = repr([payload["input_shape"]] + [o.get("dense_shape") for o in payload["layers"]])
            timed = P.latency(payload, batches)  # the dense network timed beside it, in alternation
            archs.add(arch)
            rows.append(dict({k: rec[k] for k in RUN_KEY}, physical_empty=bool(payload["empty"]), **timed))
    write_csv(pd.DataFrame(rows), latency_csv)
    log.info("timed %d physical networks (%d architectures) in %.1f s", len(rows), len(archs), time.perf_counter() - t0)


def aggregate_job(metrics_paths: list[str], runs_csv: str, summary_csv: str, latency_csv: str | None = None) -> None:
    """runs.csv and summary.csv from the records the stack files (or metrics files)
    ``metrics_paths`` list, each checked against its stack's checksums, with the latencies of
    ``latency_csv`` merged in by run."""
    import pandas as pd

    from slabbench.aggregate import merge_latency, records_table, summary_table, write_csv
    from slabbench.io import RecordFileError, read_jsonl
    from slabbench.stackfile import DamagedRunError, retrain_advice

    files = _stack_outputs(metrics_paths, "metrics")
    records = []
    for stack, path in files:
        try:
            records.extend(read_jsonl(path))
        except RecordFileError as err:
            if stack is None:
                raise
            raise DamagedRunError(f"{err}; {retrain_advice(stack)}") from None
    runs = records_table(records)
    if latency_csv is not None:
        runs = merge_latency(runs, pd.read_csv(latency_csv))
    write_csv(runs, runs_csv)
    write_csv(summary_table(runs), summary_csv)
    log.info("%d rows from %d runs", len(runs), len(files))


def tables_job(runs_csv: str, md_path: str, tex_path: str) -> None:
    import pandas as pd

    from slabbench.io import write_text
    from slabbench.tables import render

    runs = pd.read_csv(runs_csv)
    write_text(md_path, render(runs, "markdown"))
    write_text(tex_path, render(runs, "latex"))


def figure_job(runs_csv: str, experiment: str, png: str, pdf: str) -> None:
    import pandas as pd

    from slabbench.plotting import plot_experiment, save

    runs = pd.read_csv(runs_csv)
    save(plot_experiment(runs[runs["experiment"] == experiment]), png, pdf)


def deploy_job(runs_csv: str, md_path: str, png: str, pdf: str) -> None:
    """Test metric against measured latency and bytes: the table and the figure."""
    import pandas as pd

    from slabbench.deploy import plot, render
    from slabbench.io import write_text
    from slabbench.plotting import save

    runs = pd.read_csv(runs_csv)
    write_text(md_path, render(runs))
    save(plot(runs), png, pdf)


def pips_job(artefact_paths: list[str], spec: dict, png: str, pdf: str) -> None:
    """Spike-and-slab PIP figure of one experiment (all seeds)."""
    import torch

    from slabbench.api import make_params
    from slabbench.plotting import plot_pips, save
    from slabbench.registry import dataset_class

    arts = [_load_artefacts(stack, p) for stack, p in _stack_outputs(artefact_paths, "artefacts")]
    ds_cls = dataset_class(spec["dataset"])
    dataset = ds_cls(make_params(ds_cls.Params, spec.get("dataset_params"), spec["dataset"]), 0)
    dataset.prepare()  # the dataset contract: prepare() before spec() (a spec may need the files)
    dspec = dataset.spec()
    title = f"{spec['experiment']}: spike-and-slab PIPs ({len(arts)} seeds)"
    save(plot_pips(arts, dspec.feature_shape, dspec.true_support, title), png, pdf)


def _load_artefacts(stack: str | None, path: str) -> dict:
    """``torch.load`` of one run's artefacts.pt; a file that does not load is named (with the
    command that retrains its stack), not left to a bare unpickling error."""
    import pickle

    import torch

    from slabbench.stackfile import DamagedRunError, retrain_advice

    try:
        return torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        advice = retrain_advice(stack) if stack else "write it again"
        raise DamagedRunError(f"{path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                              f"{advice}") from None


def feature_table_job(runs_csv: str, md_path: str, tex_path: str) -> None:
    """Feature selection (FNR, FPR, RMSE, sparsity) where the true support is known."""
    import pandas as pd

    from slabbench.io import write_text
    from slabbench.tables import render_feature_selection

    runs = pd.read_csv(runs_csv)
    write_text(md_path, render_feature_selection(runs, "markdown"))
    write_text(tex_path, render_feature_selection(runs, "latex"))


def _megabytes(text: str) -> float:
    """An archive size limit in MB: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in MB (a finite number > 0)")
    return value


def main(argv: list[str] | None = None) -> int:
    from slabbench._plugins import RootError

    try:
        status = _main(argv)
        sys.stdout.flush()  # (inside the try: a reader gone by the exit's own flush is a BrokenPipeError too)
        return status
    except RootError as err:  # (raised where the checkout is first looked up)
        print(f"slabbench: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `slabbench runs CONFIG | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (so that the exit's flush cannot fail again)
        return 1


def _main(argv: list[str] | None) -> int:
    from slabbench.archive import DEFAULT_MAX_MB, ArchiveError, pack, unpack
    from slabbench.config import ConfigError, load_yaml, run_dir, run_specs, validate

    parser = argparse.ArgumentParser(prog="slabbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("validate", "runs"):
        p = sub.add_parser(name)
        p.add_argument("config", type=Path)
    arch = sub.add_parser("archive", help="carry finished stacks to another machine or clone (slabbench.archive)")
    arch_sub = arch.add_subparsers(dest="action", required=True)
    p = arch_sub.add_parser("pack", help="write the finished stacks of CONFIG into ARCHIVE")
    p.add_argument("config", type=Path)
    p.add_argument("archive", type=Path)
    p.add_argument("--directory", type=Path, default=Path("."), help="Snakemake's working directory (holds results/)")
    p.add_argument("--max-mb", type=_megabytes, default=DEFAULT_MAX_MB, help="refuse to write a larger archive")
    p = arch_sub.add_parser("unpack", help="restore the stacks of ARCHIVE that are not already present")
    p.add_argument("archive", type=Path)
    p.add_argument("--directory", type=Path, default=Path("."), help="Snakemake's working directory (holds results/)")
    args = parser.parse_args(argv)
    if args.command == "archive":
        setup_logging()
        try:
            if args.action == "pack":
                manifest = pack(args.config, args.archive, args.directory, args.max_mb)
                print(f"{args.archive}: {len(manifest['stacks'])} stacks, {manifest['runs']} runs of {args.config}")
            else:
                done = unpack(args.archive, args.directory)
                print(f"{args.archive}: restored {len(done['restored'])} stacks, {len(done['kept'])} already present")
        except (ArchiveError, ConfigError, OSError, yaml.YAMLError) as err:
            print(f"slabbench archive: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        config = validate(load_yaml(args.config))
    except (ConfigError, OSError, yaml.YAMLError) as err:  # OSError: a missing file or a folder
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"{args.config}: valid, {len(run_specs(config))} runs")
    else:
        for spec in run_specs(config):
            print(run_dir(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
