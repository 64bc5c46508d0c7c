"""Carry finished training stacks between machines in one small file.

A grid too long for one machine's turn (the paper's MNIST experiments on a GPU lent for minutes
at a time) accumulates over several turns, on other machines and other clones:

    slabbench archive unpack paper/archive/paper.tar.gz          # restore what earlier turns finished
    snakemake --configfile config/paper.yaml stacks ...          # train what is missing
    slabbench archive pack config/paper.yaml paper/archive/paper.tar.gz

The archive (a gzipped tar, a few MB for the whole paper grid; refused above ``--max-mb``,
16 by default, so that it can be committed) holds, for every finished stack of the config whose
runs were made with the config's current spec: the stack file, each run's ``metrics.jsonl``
and a slim ``artefacts.pt`` with only what the paper's freeze reads from it (:data:`KEPT`,
the input PIPs), plus ``archive.json`` naming the config, its SHA-256 and every stack.  Per-weight
artefacts and physical networks stay behind (hundreds of MB for the MNIST experiments).

The archived stack file carries the slim file's checksum in place of the original and marks
each run ``archived``.  Unpacking checks every file against those checksums, then writes them
under ``results/runs/`` of the working directory, each atomically and the stack file last; a
stack that already exists there is left alone.  Snakemake then finds
the stack files present and newer than the sources, so it retrains nothing that finished, and
``paper/freeze.py --partial`` freezes restored and new runs alike.  The rules that need the
per-weight artefacts (PIP figures, latency, deployment) refuse a restored run with a message
that says so and how to retrain it.

Packing is deterministic: the same finished runs give the same bytes, so re-committing an
unchanged archive changes nothing in git.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

from slabbench.config import STACK_FILE, load_yaml, stack_jobs, validate
from slabbench.io import atomic_path, read_jsonl, write_text
from slabbench.stackfile import KINDS, DamagedRunError, file_digest, read_stack_file, verified_files

log = logging.getLogger("slabbench")

FORMAT = 1
#: the entries of a run's artefacts.pt that an archive keeps (what paper.freeze_artefacts reads;
#: also the first layer's ``pip_weight`` where it is convolutional: the kernel PIP maps)
KEPT = ("pip_input",)
MANIFEST = "archive.json"
DEFAULT_MAX_MB = 16.0


class ArchiveError(RuntimeError):
    """An archive that cannot be written or read; the message says why and what to do."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _slim_artefacts(path: Path) -> bytes:
    import torch

    art = torch.load(path, weights_only=True)
    slim = {k: art[k] for k in KEPT if k in art}
    first = next(iter((art.get("pip_weight") or {}).items()), None)
    if first is not None and first[1].dim() == 4:  # a convolutional first layer: its kernel PIPs (LeNet-5: 500 values)
        slim["pip_weight"] = dict([first])
    buf = io.BytesIO()
    torch.save(slim, buf)
    return buf.getvalue()


def _same_spec(metrics: Path, spec: dict) -> bool:
    records = read_jsonl(metrics)
    return bool(records) and records[0].get("spec") == json.loads(json.dumps(spec))


def finished_stacks(config: dict, root: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """The stacks of ``config`` finished under ``root``: ``([(stack file, its parsed
    content)], [why each other present stack was left out])``.  A stack is taken when its
    files match the checksums it recorded and every run's records carry the config's spec."""
    taken, skipped = [], []
    for (exp, method, i), specs in stack_jobs(config).items():
        rel = STACK_FILE.format(experiment=exp, method=method, stack=i)
        path = root / rel
        if not path.is_file():
            continue
        try:
            verified_files(path, "metrics", root)
        except DamagedRunError as err:
            skipped.append(f"{rel}: {err}")
            continue
        doc = read_stack_file(path)
        by_seed = {int(s["seed"]): s for s in specs}
        runs = {int(r["seed"]): r for r in doc["runs"]}
        if set(runs) != set(by_seed):
            skipped.append(f"{rel}: seeds {sorted(runs)} where the config has {sorted(by_seed)}")
            continue
        stale = [seed for seed, r in runs.items() if not _same_spec(root / r["metrics"], by_seed[seed])]
        if stale:
            skipped.append(f"{rel}: seed(s) {stale} were trained with another spec than the config's")
            continue
        taken.append((rel, doc))
    return taken, skipped


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    """A gzipped tar of ``members`` (name -> content) in name order, with fixed dates and owners."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(members[name]), 0, 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def pack(config_path: str | Path, archive: str | Path, root: str | Path = ".", max_mb: float = DEFAULT_MAX_MB) -> dict:
    """Write ``archive`` from the finished stacks of the config at ``config_path`` under
    ``root`` (Snakemake's working directory); returns its manifest.  Refuses, writing nothing,
    when there is nothing finished or the archive would exceed ``max_mb`` megabytes."""
    config_path, root = Path(config_path), Path(root)
    config = validate(load_yaml(config_path))
    taken, skipped = finished_stacks(config, root)
    for why in skipped:
        log.warning("not archived: %s", why)
    if not taken:
        raise ArchiveError(f"no finished stack of {config_path} under {root / 'results' / 'runs'}: nothing to archive")
    members: dict[str, bytes] = {}
    stacks = []
    for rel, doc in taken:
        for run in doc["runs"]:
            members[run["metrics"]] = (root / run["metrics"]).read_bytes()
            members[run["artefacts"]] = slim = _slim_artefacts(root / run["artefacts"])
            # the stack file as it will be restored: the slim file's checksum, the run marked
            run["checksums"]["artefacts"] = {"sha256": _sha256(slim), "bytes": len(slim)}
            run["archived"] = {"kept_artefacts": list(KEPT)}
        members[rel] = (json.dumps(doc, indent=1) + "\n").encode()
        stacks.append({"stack": rel, "experiment": doc.get("experiment"), "method": doc.get("method"),
                       "seeds": [int(r["seed"]) for r in doc["runs"]]})
    manifest = {"format": FORMAT, "config": config_path.as_posix(), "config_sha256": _sha256(config_path.read_bytes()),
                "kept_artefacts": list(KEPT), "runs": sum(len(s["seeds"]) for s in stacks), "stacks": stacks}
    members[MANIFEST] = (json.dumps(manifest, indent=1) + "\n").encode()
    data = _tar_bytes(members)
    if len(data) > max_mb * 1e6:
        raise ArchiveError(f"the archive of {len(stacks)} stacks would be {len(data) / 1e6:.1f} MB, over the limit of "
                           f"{max_mb:g} MB (--max-mb); nothing written")
    archive = Path(archive)
    with atomic_path(archive, durable=True) as tmp:  # (it holds what took hours of training)
        tmp.write_bytes(data)
    log.info("archived %d stacks (%d runs) of %s in %s: %.2f MB", len(stacks), manifest["runs"], config_path, archive,
             len(data) / 1e6)
    return manifest


def read_archive(archive: str | Path) -> tuple[dict, dict[str, bytes]]:
    """(manifest, members) of ``archive``; :class:`ArchiveError` if it is not one."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        manifest = json.loads(members.pop(MANIFEST))
    except (OSError, tarfile.TarError, KeyError, json.JSONDecodeError, EOFError) as err:
        raise ArchiveError(f"{archive} is not a slabbench archive ({type(err).__name__}: {err})") from None
    if manifest.get("format") != FORMAT:
        raise ArchiveError(f"{archive} has archive format {manifest.get('format')!r}; this version reads {FORMAT}")
    for name in members:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or parts[:2] != ("results", "runs"):
            raise ArchiveError(f"{archive} holds {name!r}, outside results/runs/: refusing to unpack it")
    return manifest, members


def unpack(archive: str | Path, root: str | Path = ".") -> dict[str, list[str]]:
    """Restore the stacks of ``archive`` under ``root``; a stack file already there is left
    alone.  Returns ``{"restored": [...], "kept": [...]}`` (stack files)."""
    root, archive = Path(root), Path(archive)
    manifest, members = read_archive(archive)
    done: dict[str, list[str]] = {"restored": [], "kept": []}
    for entry in manifest["stacks"]:
        rel = entry["stack"]
        if (root / rel).exists():
            done["kept"].append(rel)
            continue
        try:
            doc = json.loads(members[rel])
            files = {run[kind]: run["checksums"][kind] for run in doc["runs"] for kind in KINDS}
            data = {name: members[name] for name in files}
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ArchiveError(f"{archive}: stack {rel} is incomplete in the archive ({type(err).__name__}: {err})") from None
        for name, recorded in files.items():
            if {"sha256": _sha256(data[name]), "bytes": len(data[name])} != recorded:
                raise ArchiveError(f"{archive} is damaged: {name} differs from the checksum its stack file {rel} recorded")
        for name in files:
            with atomic_path(root / name) as tmp:
                tmp.write_bytes(data[name])
        write_text(root / rel, members[rel].decode())
        done["restored"].append(rel)
    log.info("%s: restored %d stacks, kept %d already present", archive, len(done["restored"]), len(done["kept"]))
    return done
