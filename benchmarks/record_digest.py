"""Digests of the records that a fixed set of tiny trainings produce, to show that a change of the
training core leaves every record bit-identical.

Each case trains through the core's own path (``slabbench.train.run_stack``) on tiny data (the
simulation, digits) for a few epochs, every seed of a stack of three and seed 1 alone, and covers
every built-in method: dense, magnitude (one-shot and gradual: hooks per run), spike_slab
(closed-form, its per-target variant ``prior_from_target``, restarts with screening), sparse_vd
and l0.  A case's digest is the SHA-256 of its records (every metric, spec and artefact tensor,
floats by their exact ``repr``; wall-clock fields and the provenance left out) and artefacts.

    python benchmarks/record_digest.py --dump out.json          # full canonical records and digests
    python benchmarks/record_digest.py --check out.json         # same digests as a dump?  (exit 1 if not)
    python benchmarks/record_digest.py --fixture tests/data/record_digests.json          # add this machine
    python benchmarks/record_digest.py --fixture tests/data/record_digests.json --reset  # records meant to change

``tests/test_record_digest.py`` compares every case against ``tests/data/record_digests.json``,
which holds one entry per machine (digests are compared where the torch version, the CPU
capability and the CPU model match an entry, see :func:`machine`).  ``--fixture`` writes this
machine's entry there, replacing an older one of the same machine; with ``--reset`` it drops every
other machine's entry too, as a change meant to change records must (their digests are stale).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch

#: record fields that measure wall time or the machine, not the computation
VOLATILE = {"train_seconds", "finetune_seconds", "provenance"}


def _spec(method: str, dataset: str = "simulation", **over: Any) -> dict:
    spec = dict(
        experiment="digest", dataset=dataset,
        dataset_params={"p": 8, "n_train": 96, "n_val": 32, "n_test": 64} if dataset == "simulation" else {},
        model="mlp", model_params={"hidden": [6, 4]} if dataset == "simulation" else {"hidden": [16]},
        method=method, method_params={}, seed=0, sparsities=[0.5, 0.9], epochs=3, batch_size=32, lr=1e-2,
        noise_sd=1.0, finetune_epochs=1, finetune_lr_factor=0.1, device="cpu")
    spec.update(over)
    return spec


#: name -> (spec of seed 0, quick): every built-in method, and the options that change how the core trains
CASES: dict[str, tuple[dict, bool]] = {
    "dense": (_spec("dense"), True),
    "magnitude": (_spec("magnitude"), True),
    "magnitude-gradual": (_spec("magnitude", method_params={"schedule": "gradual"}), True),
    "spike_slab": (_spec("spike_slab"), True),
    "spike_slab-lrt": (_spec("spike_slab", method_params={"phi_update": "lrt"}), False),
    "spike_slab-gumbel": (_spec("spike_slab", method_params={"phi_update": "gumbel"}), False),
    "spike_slab_target": (_spec("spike_slab_target", variant_of="spike_slab",
                                method_params={"prior_from_target": True}), True),
    "spike_slab-restarts": (_spec("spike_slab", restarts=3, restarts_keep=1, restarts_screen_epochs=1), True),
    "spike_slab-restarts-all": (_spec("spike_slab", restarts=2), False),
    "l0-ema-restarts": (_spec("l0", method_params={"ema": 0.9}, restarts=3, restarts_keep=1, restarts_screen_epochs=1), True),
    "magnitude-gradual-restarts": (_spec("magnitude", method_params={"schedule": "gradual"}, restarts=2, restarts_keep=1,
                                         restarts_screen_epochs=1), False),
    "sparse_vd": (_spec("sparse_vd"), True),
    "l0": (_spec("l0"), True),
    "l0-ema": (_spec("l0", method_params={"ema": 0.9, "weight_decay": 0.5}), False),
    "dense-digits": (_spec("dense", dataset="digits", epochs=2, batch_size=128), False),
    "spike_slab-digits": (_spec("spike_slab", dataset="digits", epochs=2, batch_size=128), False),
    "sparse_vd-digits": (_spec("sparse_vd", dataset="digits", epochs=2, batch_size=128), False),
    "l0-digits": (_spec("l0", dataset="digits", epochs=2, batch_size=128), False),
}


def canonical(obj: Any) -> Any:
    """A JSON-able form of a record or artefact that two equal computations give bit for bit:
    floats by ``repr`` (so -0.0, nan and the last digit count), tensors by dtype, shape and the
    SHA-256 of their bytes, a mapping as its (key, value) pairs in order."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        raw = t.view(torch.uint8) if t.dtype != torch.bool and t.numel() else t.to(torch.uint8)
        return {"tensor": str(t.dtype), "shape": list(t.shape), "sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest()}
    if isinstance(obj, float):
        return {"float": repr(obj)} if (math.isnan(obj) or math.isinf(obj)) else repr(obj)
    if isinstance(obj, (bytes, bytearray)):
        return {"bytes": hashlib.sha256(bytes(obj)).hexdigest()}
    if isinstance(obj, dict):  # in their order: a record's keys are written in it
        return [[str(k), canonical(v)] for k, v in obj.items() if k not in VOLATILE]
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj


def run_case(name: str) -> dict:
    """Canonical records and artefacts of case ``name``: seeds 0, 1, 2 in one job (stacked) and
    seed 1 alone."""
    from slabbench.train import run_stack

    spec = CASES[name][0]
    stacked = run_stack([dict(spec, seed=s) for s in (0, 1, 2)])
    alone = run_stack([dict(spec, seed=1)])
    return {"stacked": canonical([{"records": r, "artefacts": a} for r, a in stacked]),
            "alone": canonical([{"records": r, "artefacts": a} for r, a in alone])}


def digest(case: dict) -> str:
    return hashlib.sha256(json.dumps(case).encode()).hexdigest()


def machine() -> dict:
    """What a float result depends on besides the code: the torch build, the vector instruction
    set its kernels dispatch to, and the CPU itself (the matrix libraries torch calls choose
    kernels by CPU: two AVX512 machines of different models gave other digests for every case)."""
    from slabbench.provenance import cpu_name

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_name()}


def fixture_entries(fixture: dict) -> list[dict]:
    """The per-machine entries (``machine``, ``digests``) of a digest fixture."""
    if "machines" not in fixture:
        raise ValueError(f"a digest fixture holds {{'machines': [...]}}, this one has keys {sorted(fixture)}")
    return fixture["machines"]


def write_fixture(path: Path, machine_: dict, digests: dict, reset: bool = False) -> None:
    """Put this machine's digests into the fixture at ``path`` (created if absent), replacing an
    entry of the same machine; ``reset`` drops every other machine's entry.  Written atomically."""
    entries = [] if reset or not path.exists() else fixture_entries(json.loads(path.read_text()))
    from slabbench.io import atomic_path

    entries = [e for e in entries if e["machine"] != machine_] + [{"machine": machine_, "digests": digests}]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"machines": entries}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", type=Path, help="write canonical records and digests here")
    ap.add_argument("--check", type=Path, help="compare digests with this dump")
    ap.add_argument("--quick", action="store_true", help="only the quick cases (the test's)")
    ap.add_argument("--cases", nargs="*", help="only these cases")
    ap.add_argument("--fixture", type=Path, help="write this machine's digests of every case into this fixture")
    ap.add_argument("--reset", action="store_true", help="with --fixture: drop the other machines' entries")
    args = ap.parse_args(argv)
    if args.fixture and (args.quick or args.cases):
        ap.error("--fixture records every case: leave out --quick and --cases")
    if args.reset and not args.fixture:
        ap.error("--reset needs --fixture")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    names = args.cases or [n for n, (_, quick) in CASES.items() if quick or not args.quick]
    out = {"machine": machine(), "digests": {}, "cases": {}}
    for name in names:
        case = run_case(name)
        out["cases"][name], out["digests"][name] = case, digest(case)
        print(f"{name:28s} {out['digests'][name]}", flush=True)
    if args.dump:
        args.dump.write_text(json.dumps(out, indent=1) + "\n")
    if args.fixture:
        write_fixture(args.fixture, out["machine"], out["digests"], reset=args.reset)
    if args.check:
        ref = json.loads(args.check.read_text())
        bad = [n for n in names if ref["digests"].get(n) != out["digests"][n]]
        for n in bad:
            print(f"DIFFERS: {n}", file=sys.stderr)
        print(f"{len(names) - len(bad)} of {len(names)} cases identical to {args.check}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
