"""Per-run noise: S torch.Generator objects, one draw each, against one counter-based draw.

    .venv/bin/python benchmarks/noise_rng.py [--device cpu|cuda] [--sizes 30x1400 840x3500 ...]

A stack of S runs draws each run's noise from the run's own generator (``layers/stacked.py``):
S small kernels per draw.  The alternative is one kernel for the whole stack that hashes each
run's key, the step counter and the element index into bits (a counter-based generator), so a
run's draws still depend on its seed alone.  This prints, per (S, elements per run), the time of
a uniform and of a standard-normal draw both ways and their ratio (hash / per-run generators),
measured in one process, alternating.  The hash is a 32-bit integer mixer (xor-shift-multiply,
two rounds) computed in int64 tensors; normals by the inverse normal CDF of a 31-bit uniform
and a sign bit.

On a CPU the per-run generators win (2-15x faster at the sizes above, one thread), which is
why the stacked layers keep them; on CUDA the per-run generators are registered with the captured
graph (``slabbench.engine``), so a replay advances each run's stream without a launch per run.
"""

from __future__ import annotations

import argparse
import time

import torch

MASK = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply) of int64 ``x`` (values below 2**32), in place."""
    x.bitwise_xor_(x >> 16).mul_(0x21F0AAAD).bitwise_and_(MASK)
    x.bitwise_xor_(x >> 15).mul_(0x735A2D97).bitwise_and_(MASK)
    return x.bitwise_xor_(x >> 15)


def hashed_bits(keys: torch.Tensor, step: int, n: int) -> torch.Tensor:
    """(S, n) 32-bit values from each run's key, the step counter and the element index."""
    idx = torch.arange(n, dtype=torch.int64, device=keys.device)
    x = (idx.unsqueeze(0) + (keys.unsqueeze(1) ^ (step * 0x9E3779B9 & MASK))).bitwise_and_(MASK)
    return mix32(mix32(x).bitwise_xor_(keys.unsqueeze(1)))


def hashed_uniform(keys: torch.Tensor, step: int, n: int) -> torch.Tensor:
    """Uniform (0, 1) floats: the top 24 bits, centred in their interval."""
    return (hashed_bits(keys, step, n) >> 8).to(torch.float32).mul_(2.0 ** -24).add_(2.0 ** -25)


def hashed_normal(keys: torch.Tensor, step: int, n: int) -> torch.Tensor:
    """Standard normals: the inverse normal CDF of 31 bits, the 32nd bit the sign."""
    b = hashed_bits(keys, step, n)
    z = torch.special.ndtri((b & 0x7FFFFFFF).to(torch.float32).add_(0.5).mul_(2.0 ** -32))
    return torch.where(b >= 2 ** 31, -z, z)


def per_run(gens: list[torch.Generator], n: int, kind: str, device: torch.device) -> torch.Tensor:
    out = torch.empty(len(gens), n, device=device)
    for row, g in zip(out.unbind(0), gens):
        (row.normal_ if kind == "normal" else row.uniform_)(generator=g)
    return out


def timed(fn, reps: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sizes", nargs="+", default=["30x1400", "840x1400", "840x3500", "3x266200", "30x266200"],
                    help="SxN: S runs of N noise elements each (1400: the simulation net's weights; "
                         "266,200: LeNet-300-100's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    print(f"per-run noise on {device} ({args.threads} thread(s)), ms per draw of the whole stack")
    print("| S | elements per run | draw | per-run generators | one hashed draw | hash / generators |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        s, n = (int(v) for v in size.lower().split("x"))
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(s)]
        keys = torch.randint(0, 2 ** 32, (s,), dtype=torch.int64, device=device)
        for kind, hashed in (("uniform", hashed_uniform), ("normal", hashed_normal)):
            loop_ms = timed(lambda: per_run(gens, n, kind, device), args.reps, device)
            hash_ms = timed(lambda: hashed(keys, 1, n), args.reps, device)
            rows.append(dict(S=s, n=n, draw=kind, per_run_ms=loop_ms, hashed_ms=hash_ms))
            print(f"| {s} | {n:,} | {kind} | {loop_ms:.2f} | {hash_ms:.2f} | {hash_ms / loop_ms:.1f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
