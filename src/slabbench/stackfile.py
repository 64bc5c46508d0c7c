"""The stack file ``results/runs/{experiment}/{method}/stack-{i}.json``: the manifest a train
job writes last, once every run of its stack has its ``seed={seed}/metrics.jsonl`` and
``artefacts.pt``.  Downstream rules depend on the stack files only, so this is where a finished
run is checked before it is read.

Format (JSON)::

    {"format": 2, "experiment": "sim-tiny", "method": "dense",
     "runs": [{"seed": 0,
               "metrics": "results/runs/sim-tiny/dense/seed=0/metrics.jsonl",
               "artefacts": "results/runs/sim-tiny/dense/seed=0/artefacts.pt",
               "checksums": {"metrics": {"sha256": "<64 hex digits>", "bytes": 1234},
                             "artefacts": {"sha256": "<64 hex digits>", "bytes": 5678}}},
              ...]}

Paths are relative to Snakemake's working directory, as the job was given them.  Stack files
written before checksums were recorded (no ``format``, no ``checksums``) are still read; their
files are not verified (a warning says so) but still parsed, and a damaged record file is named.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from slabbench.io import write_text

log = logging.getLogger("slabbench")

FORMAT = 2
#: the per-run files a stack file lists
KINDS = ("metrics", "artefacts")


class DamagedRunError(RuntimeError):
    """A file of a finished run is missing, unreadable, or differs from what its stack file
    recorded; the message names the file and the command that retrains its stack."""


def retrain_command(stack_path: str | os.PathLike) -> str:
    """The one command that retrains the stack ``stack_path`` and every output made from it."""
    return f"snakemake --cores 8 --forcerun {stack_path}"


def retrain_advice(stack_path: str | os.PathLike) -> str:
    return (f"retrain this stack and what is made from it, in Snakemake's working directory (with the "
            f"--configfile you ran with, if any): {retrain_command(stack_path)}")


def file_digest(path: str | os.PathLike) -> dict:
    """``{"sha256": hex digest, "bytes": size}`` of the file at ``path``."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"sha256": h.hexdigest(), "bytes": size}


def write_stack_file(stack_path: str | os.PathLike, experiment: str, method: str, runs: list[dict]) -> None:
    """Write the stack file (atomically) for ``runs``: dicts with ``seed``, ``metrics`` and
    ``artefacts`` (paths of files already written); the checksum and size of every file is
    recorded beside its path."""
    listed = []
    for run in runs:
        entry = {"seed": int(run["seed"]), **{k: str(run[k]) for k in KINDS}}
        entry["checksums"] = {k: file_digest(run[k]) for k in KINDS}
        listed.append(entry)
    doc = {"format": FORMAT, "experiment": experiment, "method": method, "runs": listed}
    write_text(stack_path, json.dumps(doc, indent=1) + "\n", durable=True)


def read_stack_file(stack_path: str | os.PathLike) -> dict:
    """The parsed stack file; :class:`DamagedRunError` if it cannot be read or is not one."""
    try:
        with open(stack_path) as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedRunError(f"stack file {stack_path} cannot be read ({err}); {retrain_advice(stack_path)}") from None
    runs = doc.get("runs") if isinstance(doc, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and all(isinstance(r.get(k), str) for k in KINDS)
                                              for r in runs):
        raise DamagedRunError(f"stack file {stack_path} is not a stack file (expected an object with 'runs', each with "
                              f"{' and '.join(repr(k) for k in KINDS)} paths); {retrain_advice(stack_path)}")
    return doc


def _check_file(stack_path: str | os.PathLike, path: str | os.PathLike, recorded: dict | None) -> None:
    if not Path(path).is_file():
        raise DamagedRunError(f"{path} is missing, but the stack file {stack_path} lists it; {retrain_advice(stack_path)}")
    try:
        actual = file_digest(path)
    except OSError as err:
        raise DamagedRunError(f"{path} cannot be read ({err.strerror}); {retrain_advice(stack_path)}") from None
    if recorded is None:
        return
    if actual["bytes"] != recorded.get("bytes"):
        what = f"{actual['bytes']} bytes where {stack_path} recorded {recorded.get('bytes')} (cut short or overwritten)"
    elif actual["sha256"] != recorded.get("sha256"):
        what = f"its sha256 {actual['sha256'][:16]}… differs from the {str(recorded.get('sha256'))[:16]}… that {stack_path} recorded (changed since it was written)"
    else:
        return
    raise DamagedRunError(f"{path} is damaged: {what}; {retrain_advice(stack_path)}")


def archived_message(stack_path: str | os.PathLike, run: dict) -> str:
    """Why a run restored from an archive (:mod:`slabbench.archive`) cannot serve what needs
    its per-weight artefacts, and how to get them."""
    return (f"{run.get('artefacts')} was restored from an archive (slabbench archive unpack), which keeps each run's records and input PIPs only "
            f"(not its per-weight artefacts or physical networks); {retrain_advice(stack_path)}")


def verified_files(stack_path: str | os.PathLike, kind: str, root: str | os.PathLike | None = None) -> list[str]:
    """The ``kind`` files (``metrics`` or ``artefacts``) that ``stack_path`` lists, after
    checking every file it lists (both kinds) against the recorded size and sha256.

    Raises :class:`DamagedRunError` naming the stack file or the damaged file, what is wrong,
    and the command that retrains the stack (the listed paths are relative to Snakemake's
    working directory: ``root``, else the current directory); also for ``artefacts`` of runs restored from an
    archive (:mod:`slabbench.archive`), which keeps only a slim ``artefacts.pt``.  A stack file without checksums (written before
    they were recorded) is read with its files checked for presence only.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; have {', '.join(KINDS)}")
    doc = read_stack_file(stack_path)
    unverified = False
    for run in doc["runs"]:
        checksums = run.get("checksums")
        unverified |= not isinstance(checksums, dict)
        for k in KINDS:
            _check_file(stack_path, Path(root) / run[k] if root is not None else run[k],
                        checksums.get(k) if isinstance(checksums, dict) else None)
    archived = [run for run in doc["runs"] if run.get("archived")]
    if kind == "artefacts" and archived:
        raise DamagedRunError(archived_message(stack_path, archived[0]))
    if unverified:
        log.warning("%s records no checksums (written before they were): its files are read unverified; "
                    "to verify them, retrain it: %s", stack_path, retrain_command(stack_path))
    return [run[kind] for run in doc["runs"]]
