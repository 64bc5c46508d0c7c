"""Atomic output: write to a temporary file in the same folder, then rename over the target,
so a crash never leaves a half-written result behind.  Run records are checked against
``workflow/schemas/metrics.schema.yaml`` before they are written (:func:`write_records`)."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

try:
    import fcntl
except ImportError:  # (Windows)
    fcntl = None


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.
    ``durable``: also flush the file and then its folder to the disk (fsync), so that after a
    power loss ``path`` holds the new content or the old, never an empty file (a few ms a file:
    for what costs hours to redo, such as a training job's outputs and its checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
    try:
        yield Path(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            try:
                _fsync(path.parent)
            except OSError as err:  # a file system (or OS) that cannot open or flush a folder: the
                if err.errno not in _NO_FOLDER_FSYNC:  # file is flushed, and its name follows
                    raise  # with the file system's next commit
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_tensors(obj: Any, path: str | os.PathLike, durable: bool = False) -> None:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_path`).  Saved through an open
    file, so the zip's inner folder is torch's fixed "archive" instead of the temporary file's
    random name: the same objects give the same bytes (and the same checksums in a stack file)."""
    import torch

    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


#: errors of opening or flushing a folder where the file system or OS does not support it
_NO_FOLDER_FSYNC = {errno.EINVAL, errno.EACCES, errno.EPERM, errno.EBADF, errno.EISDIR, errno.ENOTSUP,
                    errno.EOPNOTSUPP}


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's content to the disk (a folder: the names it holds); on
    macOS with F_FULLFSYNC, whose fsync leaves the data in the drive's cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
        except (AttributeError, OSError):  # not macOS, or a file system without it
            os.fsync(fd)
    finally:
        os.close(fd)


def json_safe(value: Any) -> Any:
    """Replace NaN / inf floats by ``None`` (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_jsonl(path: str | os.PathLike, records: Iterable[dict], durable: bool = False) -> None:
    with atomic_path(path, durable) as tmp:
        with open(tmp, "w") as fh:
            for rec in records:
                fh.write(json.dumps(json_safe(rec), sort_keys=True, allow_nan=False) + "\n")


class RecordError(ValueError):
    """A run record does not satisfy ``workflow/schemas/metrics.schema.yaml``."""


def nonfinite_fields(rec: dict) -> dict[str, str]:
    """Top-level float fields of ``rec`` that are not finite: {key: "nan" | "inf" | "-inf"}.

    JSON has no NaN or infinity, so these are written as null; this map says what they were
    (a diverged run's NaN metrics, the infinite compression of a net with no weight left).
    """
    out = {}
    for key, v in rec.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[key] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return out


def metrics_schema_path() -> Path:
    from slabbench._plugins import repo_root

    return (repo_root() or Path.cwd()) / "workflow" / "schemas" / "metrics.schema.yaml"


def validate_record(rec: dict, schema: dict | None = None) -> None:
    """Check one record (as it will be written: non-finite floats null, named in
    ``nonfinite``) against the metrics schema; a null metric must be named in ``nonfinite``.

    Raises :class:`RecordError` naming the run, the field, its value and what was expected.
    """
    import jsonschema
    import yaml

    if schema is None:
        with open(metrics_schema_path()) as fh:
            schema = yaml.safe_load(fh)
    run = f"{rec.get('experiment')}/{rec.get('method')}/seed={rec.get('seed')} ({rec.get('selection')}, target {rec.get('target_sparsity')})"
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(rec), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        shown = "; ".join(f"{'.'.join(map(str, e.absolute_path)) or 'record'}: {e.message}" for e in errors[:5])
        raise RecordError(f"record {run} does not match {metrics_schema_path().name}: {shown}")
    nonfinite = rec.get("nonfinite", {})
    unexplained = sorted(k for k, v in rec.items() if v is None and k in schema["properties"] and k not in nonfinite
                         and k not in ("target_sparsity", "fnr", "fpr", "fnr_bai", "fpr_bai"))
    if unexplained:
        raise RecordError(f"record {run}: {', '.join(unexplained)} null without being named in 'nonfinite' "
                          "(a metric is a number, or NaN / inf marked as such)")


def write_records(path: str | os.PathLike, records: Iterable[dict], durable: bool = False) -> None:
    """Write run records to ``path`` (JSON lines, atomically; ``durable``: see
    :func:`atomic_path`) after marking their non-finite metrics in ``nonfinite`` and checking
    every one against the metrics schema; nothing is written if one fails."""
    out = []
    for rec in records:
        rec = dict(rec, nonfinite=nonfinite_fields(rec))
        safe = json_safe(rec)
        validate_record(safe)
        out.append(safe)
    write_jsonl(path, out, durable)


class RecordFileError(ValueError):
    """A JSON-lines file holds a line that is not a JSON object (cut short, overwritten)."""


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of the lines of ``path`` (blank lines skipped); a line that is not a
    JSON object is a :class:`RecordFileError` naming the file and the line."""
    out = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                what = f"{err.msg}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
                raise RecordFileError(f"{path}, line {n}: not a valid JSON record ({what}); the file is damaged "
                                      "or was cut short") from None
            if not isinstance(rec, dict):
                raise RecordFileError(f"{path}, line {n}: a JSON {type(rec).__name__}, not a record (a JSON object)")
            out.append(rec)
    return out


def write_text(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    with atomic_path(path, durable) as tmp:
        Path(tmp).write_text(text)
