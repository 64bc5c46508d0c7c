"""Per-run noise: S torch.Generator objects, one draw each, against one counter-based draw.

    .venv/bin/python benchmarks/noise_rng.py [--device cpu|cuda] [--sizes 30x1400 840x3500 ...] [--no-compile]

A stack of S runs draws each run's noise from the run's own generator (``noise_rng:
generators``, ``layers/stacked.py``): S small kernels per draw.  The alternative
(``noise_rng: counter``, :func:`slabbench.layers.stacked.counter_noise`) is one draw for the
whole stack that permutes each element's position in its run's stream, keyed by the run's
seed, into bits, so a run's draws still depend on its seed alone.  This prints, per (S, elements per run),
the time of a uniform and of a standard-normal draw: per-run generators; the counter-based draw
as written (integer tensor operations, eagerly); and the same draw compiled by Inductor into one
fused kernel, which is what a compiled step (``compile: true``) runs (there it is fused further
into the kernels that use the noise).  Measured in one process, alternating; ratios against the
generators.

On a CPU the generators beat the counter-based draw as written by far (integer work in int64
tensors, one pass per operator); compiled, the uniform draw is faster than the generators and
the normal about as fast (docs/performance.md, "Counter-based noise, compiled (`noise_rng: counter`)").
"""

from __future__ import annotations

import argparse
import time

import torch

from slabbench.layers.stacked import CounterNoise, counter_noise


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
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled counter-based draw")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    compiled = None if args.no_compile else torch.compile(counter_noise, fullgraph=True, dynamic=False)
    rows = []
    print(f"per-run noise on {device} ({args.threads} thread(s)), ms per draw of the whole stack")
    print("| S | elements per run | draw | per-run generators | counter-based, as written | ratio |"
          + ("" if compiled is None else " counter-based, compiled | ratio |"))
    print("|---" * (6 if compiled is None else 8) + "|")
    for size in args.sizes:
        s, n = (int(v) for v in size.lower().split("x"))
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(s)]
        noise = CounterNoise(list(range(s)), device)
        if compiled is not None:
            torch._dynamo.reset()  # (each size compiles afresh: the recompile limit counts across sizes)
        for kind in ("uniform", "normal"):
            normal = kind == "normal"
            row = dict(S=s, n=n, draw=kind)
            row["per_run_ms"] = timed(lambda: per_run(gens, n, kind, device), args.reps, device)
            row["counter_ms"] = timed(lambda: counter_noise(noise.keys, noise.counters, (s, n), torch.float32, normal),
                                      args.reps, device)
            line = (f"| {s} | {n:,} | {kind} | {row['per_run_ms']:.2f} | {row['counter_ms']:.2f} | "
                    f"{row['counter_ms'] / row['per_run_ms']:.2f} |")
            if compiled is not None:
                row["compiled_ms"] = timed(lambda: compiled(noise.keys, noise.counters, (s, n), torch.float32, normal),
                                           args.reps, device)
                line += f" {row['compiled_ms']:.2f} | {row['compiled_ms'] / row['per_run_ms']:.2f} |"
            rows.append(row)
            print(line, flush=True)
    return rows


if __name__ == "__main__":
    main()
