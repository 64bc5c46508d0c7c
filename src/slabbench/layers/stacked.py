"""Low-level support for *stacked* layers: S independent runs held in one layer.

A stacked layer holds every parameter and buffer with a leading run dimension S (``stack = S``;
``stack = 0`` is the ordinary single-run layer).  Its input is ``(S, B, in)`` and its output
``(S, B, out)`` (images: ``(S, B, C, H, W)``, see :func:`conv2d`); run ``s`` sees only slice
``s`` of every tensor, so the runs never mix.

Randomness: every noise draw of a stacked layer goes through :func:`rand_like` /
:func:`randn_like`, which fill slice ``s`` from run ``s``'s own generator while
:func:`run_generators` is active.  A run's noise therefore depends on its own seed only, never
on which runs share its stack (the core checks this: seed 1 in a stack equals seed 1 alone).
Outside that context, and for unstacked layers, draws come from torch's global generator.

Two kinds of per-run noise (a run spec's ``noise_rng``): ``generators`` (the default), one
``torch.Generator`` per run, S small draws per noise tensor; ``counter`` (:class:`CounterNoise`),
one draw for the whole stack from a counter-based generator: each element's bits a keyed
permutation of its position in its run's stream (the key from the run's seed), computed by
ordinary tensor operations, so a compiler fuses them into the kernels that use the noise and a captured graph
replays them without a kernel per run.
"""

from __future__ import annotations

import itertools
import math
import weakref
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

_GENERATORS: "RunGenerators | CounterNoise | None" = None
#: every live :class:`RunGenerators` by its key: where a traced draw finds its generators
_REGISTRY: "weakref.WeakValueDictionary[int, RunGenerators]" = weakref.WeakValueDictionary()
_KEYS = itertools.count()


class RunGenerators(list):
    """The runs' noise generators (a list, run s's at index s) under a registry key, so that a
    draw traced into a graph (:func:`_per_run_noise`) finds them when the graph runs.

    It shares its interface with :class:`CounterNoise` (what the training engine calls on a
    stack's noise): :attr:`generators` (what a CUDA graph registers), :meth:`select`,
    :meth:`state` / :meth:`load_state` (checkpoints), :meth:`begin_step` and :meth:`advance`
    (around a training step; nothing to do for generators, whose streams advance as they draw)."""

    def __init__(self, generators: Sequence[torch.Generator]):
        super().__init__(generators)
        self.key = next(_KEYS)
        _REGISTRY[self.key] = self

    @property
    def generators(self) -> list[torch.Generator]:
        return list(self)

    def select(self, keep: Sequence[int]) -> "RunGenerators":
        """The generators of the runs at positions ``keep`` (the same objects)."""
        return RunGenerators([self[i] for i in keep])

    def state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self]

    def load_state(self, state) -> None:
        if not isinstance(state, list) or len(state) != len(self):
            raise ValueError(f"the saved noise is not the states of {len(self)} run generators")
        for g, st in zip(self, state):
            g.set_state(st.cpu())

    def begin_step(self) -> None:
        pass

    def advance(self) -> None:
        pass


#: the kinds of per-run noise (a run spec's ``noise_rng``)
NOISE_KINDS = ("generators", "counter")


def run_noise(kind: str, seeds: Sequence[int], device: torch.device | str = "cpu") -> "RunGenerators | CounterNoise":
    """The noise of a stack whose runs have the noise seeds ``seeds``: ``kind`` "generators",
    one ``torch.Generator`` per run seeded with its seed; "counter", a :class:`CounterNoise`."""
    if kind == "counter":
        return CounterNoise(seeds, device)
    if kind == "generators":
        return RunGenerators([torch.Generator(device=device).manual_seed(int(s)) for s in seeds])
    raise ValueError(f"noise_rng {kind!r}: expected one of {', '.join(NOISE_KINDS)}")


def as_run_noise(noise: "Sequence[torch.Generator] | RunGenerators | CounterNoise") -> "RunGenerators | CounterNoise":
    """``noise`` as a stack's noise object (a plain sequence of generators as :class:`RunGenerators`)."""
    return noise if isinstance(noise, (RunGenerators, CounterNoise)) else RunGenerators(noise)


@contextmanager
def run_generators(generators: "Sequence[torch.Generator] | CounterNoise") -> Iterator[None]:
    """Within the block, stacked layers draw run ``s``'s noise from ``generators[s]`` (or, a
    :class:`CounterNoise`, from run ``s``'s counter-based stream)."""
    global _GENERATORS
    saved = _GENERATORS
    _GENERATORS = as_run_noise(generators)
    try:
        yield
    finally:
        _GENERATORS = saved


_MASK = 0xFFFFFFFF


def _mix32(x):
    """A bijective 32-bit integer hash (xor-shift-multiply, two rounds) of ``x`` (int64 tensor or
    Python int, values below 2**32; intermediate products stay below 2**63)."""
    x = ((x ^ (x >> 16)) * 0x21F0AAAD) & _MASK
    x = ((x ^ (x >> 15)) * 0x735A2D97) & _MASK
    return x ^ (x >> 15)


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 (a 64-bit seed mixer), on Python ints."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _key_words(seed: int) -> list[int]:
    """Four 32-bit key words of a run's noise seed (two SplitMix64 steps)."""
    a = _splitmix64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    b = _splitmix64(a)
    return [a & _MASK, a >> 32, b & _MASK, b >> 32]


def _feistel(keys: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32-bit words of the 64-bit positions ``pos`` (S, n) of each run's stream: a four-round
    Feistel network on (high, low) half, round r's function ``_mix32(right ^ keys[:, r])``.  A
    bijection of the 64-bit positions for every key (no position's words repeat another's), and
    with a good round function a pseudo-random permutation (Luby-Rackoff)."""
    left, right = pos >> 32, pos & _MASK
    for r in range(4):
        left, right = right, left ^ _mix32(right ^ keys[:, r:r + 1])
    return left, right


def counter_noise(keys: torch.Tensor, counters: torch.Tensor, shape: Sequence[int], dtype: torch.dtype,
                  normal: bool, offset: int = 0) -> torch.Tensor:
    """Noise of ``shape`` (S, ...) from each run's key words ``keys`` (S, 4) and stream position
    ``counters`` (S,) (read, not changed).  Element i of run s is drawn at position
    ``counters[s] + offset + i`` of its stream, whose two words (:func:`_feistel`) give it:
    U(0, 1) is ``(w >> 9) + 1/2`` times 2**-23 of the second word ``w`` (never 0 or 1: 2**23
    levels from 2**-24 to 1 - 2**-24); N(0, 1) is Box-Muller's ``sqrt(-2 log u1) cos(2 pi u2)``
    of that uniform and ``(v >> 8)`` times 2**-24 of the first word ``v`` (|z| <= 5.77).  Integer
    work is exact everywhere (the uniforms are the same bits on every device and compiler); the
    normals' log and cos round as their kernels do.  Computed in float32, then cast to ``dtype``
    (a half-precision cast would round the largest uniforms to 1: the training is float32)."""
    s_runs, n = shape[0], math.prod(shape[1:])
    pos = counters.unsqueeze(1) + torch.arange(offset, offset + n, dtype=torch.int64, device=counters.device)
    v, w = _feistel(keys, pos)
    u = ((w >> 9).to(torch.float32) + 0.5) * 2.0 ** -23
    if normal:
        u2 = (v >> 8).to(torch.float32) * 2.0 ** -24
        u = torch.sqrt(-2.0 * torch.log(u)) * torch.cos((2.0 * math.pi) * u2)
    return u.to(dtype).view(s_runs, *shape[1:])


class CounterNoise:
    """Every run's noise from a counter-based generator (:func:`counter_noise`): the runs' key
    words, from their seeds alone, and their stream positions, one device tensor each.  A draw
    for the whole stack is a fixed sequence of tensor operations on them, which a compiler
    traces and a CUDA graph replays; a run's draws depend on its seed and on how much it drew
    before, never on the other runs of its stack.

    The draws of a training step are taken at the positions ``counters + drawn`` (``drawn``: the
    elements per run drawn since the last :meth:`advance`, a number, the same at every step of
    one kind) and :meth:`advance` moves the positions past them in place after the step's
    backward.  Positions written inside the step would be wrong for a compiled backward, which
    may draw the noise again from the positions instead of keeping it (a mutated input is read
    after its mutation)."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.keys = torch.tensor([_key_words(s) for s in seeds], dtype=torch.int64, device=device).view(-1, 4)
        self.counters = torch.zeros(len(seeds), dtype=torch.int64, device=device)
        self.drawn = 0

    def __len__(self) -> int:
        return self.counters.shape[0]

    @property
    def generators(self) -> list[torch.Generator]:
        return []  # (no torch.Generator for a CUDA graph to register)

    def select(self, keep: Sequence[int]) -> "CounterNoise":
        """The runs at positions ``keep``, with their keys and positions (new tensors)."""
        idx = torch.tensor(list(keep), dtype=torch.long, device=self.counters.device)
        out = CounterNoise([], self.counters.device)
        out.keys, out.counters = self.keys[idx], self.counters[idx] + self.drawn
        return out

    def state(self) -> dict:
        return {"counters": self.counters.detach().cpu().clone()}

    def load_state(self, state) -> None:
        if not isinstance(state, dict) or tuple(state.get("counters", torch.empty(0)).shape) != (len(self),):
            raise ValueError(f"the saved noise is not the stream positions of {len(self)} runs' counter-based noise")
        self.counters.copy_(state["counters"])
        self.drawn = 0

    def begin_step(self) -> None:
        """A step starts: nothing drawn in it yet (a step that failed half-way, e.g. a CUDA
        graph's capture, left no position behind: it is taken again)."""
        self.drawn = 0

    def draw(self, t: torch.Tensor, normal: bool) -> torch.Tensor:
        if len(self) != t.shape[0]:
            raise RuntimeError(f"counter noise for {len(self)} runs drawn for a stack of {t.shape[0]} runs")
        out = counter_noise(self.keys, self.counters, t.shape, t.dtype, normal, self.drawn)
        self.drawn += t.numel() // t.shape[0]
        return out

    def advance(self) -> None:
        """Every run's position moved past what was drawn since the last call (in place)."""
        if self.drawn:
            self.counters.add_(self.drawn)
            self.drawn = 0


def _fill(out: torch.Tensor, normal: bool, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Slice s of ``out`` filled from ``gens[s]``: N(0, 1) or U[0, 1)."""
    if len(gens) != out.shape[0]:
        raise RuntimeError(f"{len(gens)} run generators for a stack of {out.shape[0]} runs")
    for view, g in zip(out.unbind(0), gens):  # unbind: the S views at once, not S indexing calls
        if normal:
            view.normal_(generator=g)
        else:
            view.uniform_(generator=g)
    return out


@torch.library.custom_op("slabbench::per_run_noise", mutates_args=("order",))
def _per_run_noise(order: torch.Tensor, shape: list[int], dtype: torch.dtype, normal: bool, key: int) -> torch.Tensor:
    """The per-run draws of :func:`_fill` as one operator that a traced graph keeps whole
    (Dynamo cannot take a ``torch.Generator`` argument into a graph): the generators are those
    of the :class:`RunGenerators` registered under ``key``, read when the graph runs, so a run's
    noise is the eager step's, draw for draw.  ``order``: a 0-dim token that every draw
    declares it writes, so that no compiler reorders two draws (each generator's stream is
    consumed in the order the eager step consumes it)."""
    gens = _REGISTRY.get(key)
    if gens is None:
        raise RuntimeError(f"the run generators of a traced draw (key {key}) no longer exist")
    return _fill(torch.empty(shape, dtype=dtype, device=order.device), normal, gens)


@_per_run_noise.register_fake
def _(order: torch.Tensor, shape: list[int], dtype: torch.dtype, normal: bool, key: int) -> torch.Tensor:
    return order.new_empty(shape, dtype=dtype)


_ORDER: dict[torch.device, torch.Tensor] = {}


def _order_token(device: torch.device) -> torch.Tensor:
    if device not in _ORDER:
        _ORDER[device] = torch.zeros((), device=device)
    return _ORDER[device]


def _per_run(t: torch.Tensor, stack: int, normal: bool) -> torch.Tensor | None:
    gens = _GENERATORS
    if not stack or gens is None:
        return None
    if isinstance(gens, CounterNoise):  # (the same tensor operations eager, traced or captured)
        return gens.draw(t, normal)
    if torch.compiler.is_compiling():  # traced: one opaque operator, the same draws
        if not isinstance(gens, RunGenerators):
            raise RuntimeError("a traced step draws per-run noise only from run_generators(RunGenerators(...))")
        return _per_run_noise(_order_token(t.device), list(t.shape), t.dtype, normal, gens.key)
    return _fill(torch.empty_like(t, memory_format=torch.contiguous_format), normal, gens)


def rand_like(t: torch.Tensor, stack: int = 0) -> torch.Tensor:
    """U[0, 1) noise of ``t``'s shape; per run from its own generator when stacked."""
    out = _per_run(t, stack, normal=False)
    return torch.rand_like(t) if out is None else out


def randn_like(t: torch.Tensor, stack: int = 0) -> torch.Tensor:
    """N(0, 1) noise of ``t``'s shape; per run from its own generator when stacked."""
    out = _per_run(t, stack, normal=True)
    return torch.randn_like(t) if out is None else out


class _StackedLinear(torch.autograd.Function):
    """x ``(S, B, in)`` @ w ``(S, out, in)``ᵀ + b, with the weight gradient computed as
    ``gᵀ x`` in the weight's own (out, in) layout.  Autograd's backward of the same batched
    matmul forms ``xᵀ g`` and transposes it, a layout for which CPU batched GEMM is several
    times slower: 7.5 vs 1.2 ms for 30 runs of a 500 x 200 batch into 7 units on one core."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        if b is None:
            return torch.bmm(x, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class _SharedLinear(torch.autograd.Function):
    """:class:`_StackedLinear` for an input whose runs come in groups that see the same rows
    (see :func:`shared_input`): ``xu`` ``(G, B, in)`` holds each group's rows once, and the K =
    S / G runs of a group are one matmul into K x out units, ``xu[g] @ [w_gK; ...; w_gK+K-1]ᵀ``,
    forward and backward (no input gradient: the input is data).  The same products as K
    separate ones, summed in another order (equal to rounding)."""

    @staticmethod
    def forward(ctx, xu, w, b):
        g, n, i = xu.shape
        s, o = w.shape[:2]
        wg = w.reshape(g, (s // g) * o, i).transpose(1, 2)
        y = torch.bmm(xu, wg) if b is None else torch.baddbmm(b.reshape(g, 1, -1), xu, wg)
        ctx.save_for_backward(xu)
        ctx.shape, ctx.has_bias = (g, s // g, n, o), b is not None
        return y.view(g, n, s // g, o).transpose(1, 2).reshape(s, n, o)

    @staticmethod
    def backward(ctx, grad):
        (xu,) = ctx.saved_tensors
        g, k, n, o = ctx.shape
        gw = gb = None
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(grad.view(g, k, n, o).transpose(2, 3).reshape(g, k * o, n), xu).view(g * k, o, -1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(1)
        return None, gw, gb


#: (the stacked input (S, B, ...), its groups' rows (G, B, ...), the input's version) while
#: :func:`shared_input` is active
_SHARED: tuple[torch.Tensor, torch.Tensor, int] | None = None


@contextmanager
def shared_input(full: torch.Tensor, unique: torch.Tensor) -> Iterator[None]:
    """Within the block, the stacked input ``full`` (S, B, ...) is ``unique`` (G, B, ...) with
    each group's rows repeated for its K = S / G consecutive runs (the starts of one run see
    the same data in the same order).  A stacked linear layer fed ``full`` itself (or a flat
    view of it, unchanged since) then runs one matmul per group (:class:`_SharedLinear`)
    instead of one per run: on the CPU a matmul into 7 units uses the hardware poorly, into
    K x 7 units far better.  Every other use of ``full`` reads it as it is."""
    global _SHARED
    if full.shape[0] % unique.shape[0] or full.shape[1:] != unique.shape[1:]:
        raise ValueError(f"shared_input: {tuple(full.shape)} does not repeat groups of shape {tuple(unique.shape)}")
    saved, _SHARED = _SHARED, (full, unique, full._version)
    try:
        yield
    finally:
        _SHARED = saved


def _shared_rows(x: torch.Tensor) -> torch.Tensor | None:
    """The groups' rows (G, B, in) of a stacked layer input ``x`` (S, B, in) when ``x`` is the
    active :func:`shared_input` (or a flattened view of it, not modified since), else None.
    Never in a compiled step: whether ``x`` is that input is a comparison of data pointers,
    which torch.compile cannot trace (compiled, each run's rows are multiplied on their own)."""
    if _SHARED is None or x.requires_grad or torch.compiler.is_compiling():
        return None
    full, unique, version = _SHARED
    if (x.data_ptr() != full.data_ptr() or x._version != version or x.shape[:2] != full.shape[:2]
            or x.numel() != full.numel() or not (x.is_contiguous() and full.is_contiguous() and unique.is_contiguous())):
        return None
    return unique.view(unique.shape[0], unique.shape[1], -1)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stack: int = 0) -> torch.Tensor:
    """``F.linear`` per run: x ``(S, B, in)``, w ``(S, out, in)``, b ``(S, out)`` -> ``(S, B, out)``
    (one batched matmul; one per group of runs that share their input, see
    :func:`shared_input`); unstacked (``stack = 0``) it is ``F.linear`` itself."""
    if not stack:
        return torch.nn.functional.linear(x, w, b)
    rows = _shared_rows(x)
    if rows is not None and w.dim() == 3:
        return _SharedLinear.apply(rows, w, b)
    return _StackedLinear.apply(x, w, b)


# -- image layers -------------------------------------------------------------------------------
# A stacked image tensor is (S, B, C, H, W).  A grouped convolution and batch norm act on the
# *channel layout* (B, S*C, H, W): run s owns channels s*C .. (s+1)*C - 1, a convolution with
# S*groups groups never mixes runs, and batch norm normalises each channel over (B, H, W) only.
# They hand their output back as the (S, B, C', H', W') view of the (B, S*C', H', W') result, and
# pooling keeps whichever layout it gets, so a chain of grouped convolutions, activations, pools
# and batch norms passes its activations on without copies.


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """(S, B, C, *spatial) -> (B, S*C, *spatial): a view when ``x`` is the view that
    :func:`from_channels` returns, a copy otherwise."""
    s, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, s * x.shape[2], *x.shape[3:])


def from_channels(y: torch.Tensor, stack: int) -> torch.Tensor:
    """(B, S*C, *spatial) -> (S, B, C, *spatial), a view."""
    b, sc = y.shape[:2]
    return y.view(b, stack, sc // stack, *y.shape[2:]).transpose(0, 1)


def per_plane(fn, x: torch.Tensor, stack: int = 0) -> torch.Tensor:
    """Apply ``fn``, an op on (N, C, H, W) that acts on every (example, channel) plane alone
    (max / average pooling), to a stacked ``x`` (S, B, C, H, W); unstacked it is ``fn(x)``."""
    if not stack:
        return fn(x)
    if x.is_contiguous():  # (S*B, C, H, W) is a view
        y = fn(x.flatten(0, 1))
        return y.view(x.shape[0], x.shape[1], *y.shape[1:])
    return from_channels(fn(to_channels(x)), stack)


#: how a stacked convolution runs: ``"grouped"`` (one convolution with S x groups groups over the
#: channel layout), ``"loop"`` (one convolution per run, outputs stacked) or ``"auto"``: one per
#: run on the CPU, grouped elsewhere.  The same numbers up to rounding, but a grouped convolution
#: rounds differently with S, while a loop runs each run's convolution exactly as alone; on the
#: CPU the loop also took about as long (docs/performance.md, "Many runs, one process").  A GPU runs one
#: grouped kernel instead of S small ones.
CONV_IMPL = "auto"


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride=1, padding=0, dilation=1, groups: int = 1,
           stack: int = 0) -> torch.Tensor:
    """``F.conv2d`` per run: x ``(S, B, C, H, W)``, w ``(S, O, C/groups, kh, kw)``, b ``(S, O)``
    -> ``(S, B, O, H', W')``; unstacked (``stack = 0``) it is ``F.conv2d`` itself.  Zero padding
    (a layer with another padding mode pads its input first)."""
    conv = torch.nn.functional.conv2d
    if not stack:
        return conv(x, w, b, stride, padding, dilation, groups)
    impl = CONV_IMPL
    if impl == "auto":
        impl = "loop" if x.device.type == "cpu" else "grouped"
    if impl == "loop":
        return torch.stack([conv(x[s], w[s], None if b is None else b[s], stride, padding, dilation, groups)
                            for s in range(stack)])
    if impl != "grouped":
        raise ValueError(f"unknown CONV_IMPL {impl!r}; valid: auto, grouped, loop")
    y = conv(to_channels(x), w.flatten(0, 1), None if b is None else b.flatten(), stride, padding, dilation,
             groups * stack)
    return from_channels(y, stack)


def pad(x: torch.Tensor, padding: tuple[int, ...], mode: str, stack: int = 0) -> torch.Tensor:
    """``F.pad(x, padding, mode)`` over the trailing spatial dimensions of an image tensor,
    stacked (S, B, C, H, W) or not (the non-zero padding modes of ``nn.Conv2d``)."""
    if not stack:
        return torch.nn.functional.pad(x, padding, mode=mode)
    y = torch.nn.functional.pad(x.flatten(0, 1), padding, mode=mode)
    return y.view(x.shape[0], x.shape[1], *y.shape[1:])
