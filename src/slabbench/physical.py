"""Physically smaller networks: the exported masked network with its dead units removed,
stored as plain tensors plus a small layer spec, and its weights in a sparse format.

A masked network (:mod:`slabbench.layers.masked`) computes with every weight, zero or not:
masks give no speed-up by themselves.  :func:`physical_network` turns it into a smaller
*dense* network with real shapes:

- a hidden unit (a Linear output unit, a Conv2d output channel) with no nonzero outgoing
  weight into a unit that reaches the outputs is removed, and with it the next layer's
  input columns (all of one channel's positions after a flatten), its batch-norm entries
  and its bias;
- a hidden unit with no nonzero incoming weight from a unit that depends on the input is a
  constant: relu (or tanh) of its bias, through its batch norm.  Its value is the same at
  every spatial position, so it is folded into the next layer's bias (the constant times the
  sum of the weights that read it) where that is exact: the next layer is Linear, or a
  convolution without padding (every output position reads every kernel position).  Before
  a padded convolution the border positions read fewer copies of the constant, so the unit
  is kept (with its bias and no incoming weight).  Max-pooling a constant map gives the same
  constant, so a pool in between does not prevent the fold;
- input features (a first Linear layer) or input channels (a first Conv2d) that no kept
  weight reads are dropped by a leading ``select`` step;
- the classifier's outputs are never removed.

The result is a dict that ``torch.load(path, weights_only=True)`` reads without this
package: ``{"format": "slabbench.physical", "version": 1, "input_shape": [C, H, W] or [F],
"empty": bool, "layers": [...]}``; each layer is a dict with an ``"op"`` and its tensors:

====================  ======================================================================
op                    fields
====================  ======================================================================
``select``            ``index`` (K,) int32: ``x = x.index_select(1, index)``
``flatten``           ``x = x.flatten(1)``
``linear``            ``weight`` (out, in), ``bias`` (out,) or None
``conv2d``            ``weight`` (out, in, kh, kw), ``bias``, ``stride``, ``padding``, ``dilation`` (pairs)
``batch_norm``        ``running_mean``, ``running_var``, ``weight``, ``bias`` (C,), ``eps`` (eval mode)
``max_pool2d``        ``kernel_size``, ``stride``, ``padding``, ``dilation`` (pairs), ``ceil_mode``
``relu``, ``tanh``    elementwise
====================  ======================================================================

Every ``linear`` / ``conv2d`` / ``batch_norm`` layer also carries ``dense_shape``: its weight's
shape (batch norm: its number of features) in the unpruned network, so the dense network of the
same architecture can be rebuilt for timing (:func:`dense_layers`).

``empty`` is true when no output depends on the input (no path of nonzero weights from an
input to an output): the network is then a constant and is not timed.

:func:`sparse_network` stores the same layers with each weight in a sparse form (CSR or a
bitmask plus values, or plain dense values where nearly every weight is nonzero, whichever is
smallest, values float32 or float16); :func:`from_sparse`
restores the physical network.  :func:`time_pair` measures CPU inference latency (two networks in alternation).
"""

from __future__ import annotations

import io
import logging
import math
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slabbench.layers import BatchNorm1d, BatchNorm2d, MaskedConv2d, MaskedLinear, MaxPool2d

log = logging.getLogger(__name__)

FORMAT = "slabbench.physical"
VERSION = 1
#: the ops a physical network may contain (:func:`forward`)
OPS = ("select", "flatten", "linear", "conv2d", "batch_norm", "max_pool2d", "relu", "tanh")
#: module types an exported network may contain
MODULES = (MaskedLinear, MaskedConv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.Flatten, nn.ReLU, nn.Tanh)


class PhysicalError(ValueError):
    """A network this module cannot turn into a physical one, or a malformed physical spec."""


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _describe(net: nn.Module) -> list[dict]:
    """The exported network as a list of op dicts with full (dense) tensors: masked weights
    multiplied out, float32, CPU, batch norm in eval form."""
    modules = [m for m in net.children()] if isinstance(net, nn.Sequential) else [net]
    ops: list[dict] = []
    for m in modules:
        if getattr(m, "stack", 0):
            raise PhysicalError(f"a stacked {type(m).__name__} (stack > 0) cannot be exported; unstack it first")
        if isinstance(m, MaskedLinear):
            ops.append({"op": "linear", "weight": (m.weight * m.weight_mask).detach().float().cpu().clone(),
                        "bias": None if m.bias is None else m.bias.detach().float().cpu().clone()})
        elif isinstance(m, MaskedConv2d):
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise PhysicalError(f"conv2d with groups={m.groups}, padding_mode={m.padding_mode!r}, padding={m.padding!r}: "
                                    "only groups=1, zero padding given as integers are supported")
            ops.append({"op": "conv2d", "weight": (m.weight * m.weight_mask).detach().float().cpu().clone(),
                        "bias": None if m.bias is None else m.bias.detach().float().cpu().clone(),
                        "stride": _pair(m.stride), "padding": _pair(m.padding), "dilation": _pair(m.dilation)})
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None or m.running_var is None:
                raise PhysicalError("batch norm without running statistics (track_running_stats=False) is not supported")
            n = m.num_features
            ops.append({"op": "batch_norm", "running_mean": m.running_mean.detach().float().cpu().clone(),
                        "running_var": m.running_var.detach().float().cpu().clone(),
                        "weight": (m.weight.detach().float().cpu().clone() if m.affine else torch.ones(n)),
                        "bias": (m.bias.detach().float().cpu().clone() if m.affine else torch.zeros(n)), "eps": float(m.eps)})
        elif isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                raise PhysicalError("max_pool2d with return_indices=True is not supported")
            ops.append({"op": "max_pool2d", "kernel_size": _pair(m.kernel_size),
                        "stride": _pair(m.stride if m.stride is not None else m.kernel_size),
                        "padding": _pair(m.padding), "dilation": _pair(m.dilation), "ceil_mode": bool(m.ceil_mode)})
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise PhysicalError(f"flatten(start_dim={m.start_dim}, end_dim={m.end_dim}): only flatten(1, -1) is supported")
            ops.append({"op": "flatten"})
        elif isinstance(m, nn.ReLU):
            ops.append({"op": "relu"})
        elif isinstance(m, nn.Tanh):
            ops.append({"op": "tanh"})
        else:
            raise PhysicalError(f"cannot export a {type(m).__name__} layer; supported: "
                                f"{', '.join(t.__name__ for t in MODULES)} in an nn.Sequential")
    if not any(o["op"] in ("linear", "conv2d") for o in ops):
        raise PhysicalError("the network has no Linear or Conv2d layer")
    return ops


def forward(layers: Sequence[dict], x: torch.Tensor) -> torch.Tensor:
    """Run the physical layers ``layers`` on ``x`` (B, *input_shape) -> (B, outputs)."""
    for layer in layers:
        op = layer["op"]
        if op == "select":
            x = x.index_select(1, layer["index"])
        elif op == "flatten":
            x = x.flatten(1)
        elif op == "linear":
            x = F.linear(x, layer["weight"], layer["bias"])
        elif op == "conv2d":
            x = F.conv2d(x, layer["weight"], layer["bias"], layer["stride"], layer["padding"], layer["dilation"])
        elif op == "batch_norm":
            x = F.batch_norm(x, layer["running_mean"], layer["running_var"], layer["weight"], layer["bias"],
                             False, 0.0, layer["eps"])
        elif op == "max_pool2d":
            x = F.max_pool2d(x, layer["kernel_size"], layer["stride"], layer["padding"], layer["dilation"],
                             layer["ceil_mode"])
        elif op == "relu":
            x = F.relu(x)
        elif op == "tanh":
            x = torch.tanh(x)
        else:
            raise PhysicalError(f"unknown op {op!r}; valid: {', '.join(OPS)}")
    return x


def _channel_value(ops: Sequence[dict], v: torch.Tensor) -> torch.Tensor:
    """Per-channel constants ``v`` (C,) through the per-channel ops ``ops`` (batch norm in eval
    form, relu, tanh; pooling and flatten leave a spatially constant map's value as it is)."""
    for op in ops:
        if op["op"] == "batch_norm":
            v = (v - op["running_mean"]) / torch.sqrt(op["running_var"] + op["eps"]) * op["weight"] + op["bias"]
        elif op["op"] == "relu":
            v = torch.relu(v)
        elif op["op"] == "tanh":
            v = torch.tanh(v)
    return v


def physical_network(net: nn.Module, input_shape: Sequence[int], remove: bool = True) -> dict[str, Any]:
    """The physical form of the exported masked network ``net`` (an ``nn.Sequential`` of
    masked Linear / Conv2d, batch norm, max-pool, flatten, relu, tanh) for inputs of shape
    ``input_shape`` (without the batch dimension); see the module docstring for the format.

    ``remove=False``: the same format with nothing removed or folded (masked weights as zeros):
    the dense network, whose serialized size is ``model_bytes_dense``.  Tensors are float32
    copies on the CPU; ``net`` is not changed."""
    ops = _describe(net)
    prunable = [i for i, o in enumerate(ops) if o["op"] in ("linear", "conv2d")]
    if not prunable or any(o["op"] == "batch_norm" for o in ops[:prunable[0]]):
        raise PhysicalError("cannot export a network without a MaskedLinear / MaskedConv2d layer, or with a batch norm "
                            "before the first one (its units would be the inputs')")
    for i in prunable:
        ops[i]["dense_shape"] = list(ops[i]["weight"].shape)
    for o in ops:
        if o["op"] == "batch_norm":
            o["dense_shape"] = [int(o["running_mean"].numel())]
    payload = {"format": FORMAT, "version": VERSION, "input_shape": [int(s) for s in input_shape], "empty": False}
    # nz[p]: (units of layer p, units feeding it) bool, a nonzero weight between them
    # (after a flatten, one input unit = one channel's block of positions)
    nz = []
    for p, i in enumerate(prunable):
        w = ops[i]["weight"]
        n_in = w.shape[1] if p == 0 else ops[prunable[p - 1]]["weight"].shape[0]
        nz.append((w.reshape(w.shape[0], n_in, -1) != 0).any(dim=2))
    # live[p]: unit depends on the input (a nonzero weight from a live unit; inputs are live)
    live, prev = [], torch.ones(nz[0].shape[1], dtype=torch.bool)
    for m in nz:
        prev = (m & prev).any(dim=1)
        live.append(prev)
    payload["empty"] = not bool(live[-1].any())
    if not remove:
        payload["layers"] = ops
        return payload
    last = len(prunable) - 1
    # useful[p]: a nonzero weight into a useful unit of the next layer (outputs are useful)
    useful = [None] * len(prunable)
    useful[last] = torch.ones(nz[last].shape[0], dtype=torch.bool)
    for p in range(last, 0, -1):
        useful[p - 1] = nz[p][useful[p]].any(dim=0)
    inputs_used = nz[0][useful[0]].any(dim=0)
    # forward: classify each layer's units as kept (live, or a constant that cannot be folded)
    # or removed (useless, or a constant folded into the next layer's bias)
    keep = []
    const_kept = torch.zeros(nz[0].shape[1], dtype=torch.bool)  # inputs are never constants
    for p, i in enumerate(prunable):
        if p == last:
            keep.append(torch.ones(nz[p].shape[0], dtype=torch.bool))
            break
        reads_const = (nz[p] & const_kept).any(dim=1)
        constant = useful[p] & ~live[p] & ~reads_const  # spatially uniform: its bias through its ops
        between = ops[i + 1:prunable[p + 1]]
        nxt = ops[prunable[p + 1]]
        foldable = nxt["op"] == "linear" or not any(nxt["padding"])
        fold = constant if foldable else torch.zeros_like(constant)
        if fold.any():
            b = ops[i]["bias"] if ops[i]["bias"] is not None else torch.zeros(nz[p].shape[0])
            v = _channel_value(between, b)  # (units,)
            w = nxt["weight"]
            w3 = w.reshape(w.shape[0], nz[p].shape[0], -1)
            shift = (w3[:, fold, :].sum(dim=2) * v[fold]).sum(dim=1)
            nb = nxt["bias"] if nxt["bias"] is not None else torch.zeros(w.shape[0])
            nxt["bias"] = nb + shift
        kept = useful[p] & ~fold
        const_kept = kept & ~live[p]
        keep.append(kept)
    # torch's conv2d and batch_norm cannot take zero channels: a convolution (or a layer
    # before a batch norm) that would keep no unit keeps its unit 0, whose outgoing weights are
    # zeroed (its value was folded or unused)
    silenced: dict[int, torch.Tensor] = {}
    for p, i in enumerate(prunable[:-1]):
        needs_one = ops[i]["op"] == "conv2d" or any(o["op"] == "batch_norm" for o in ops[i + 1:prunable[p + 1]])
        if needs_one and not bool(keep[p].any()):
            silenced[p] = torch.zeros_like(keep[p])
            silenced[p][0] = keep[p][0] = True
    first = prunable[0]
    select = inputs_used if not bool(inputs_used.all()) else None
    if select is not None and ops[first]["op"] == "conv2d" and not bool(select.any()):
        select = select.clone()
        select[0] = True  # no kept weight reads it: the kept units' weights from it are zero
    # slice every layer to its kept units and the kept units feeding it
    out: list[dict] = []
    for j, o in enumerate(ops):
        if j == first and select is not None:
            out.append({"op": "select", "index": select.nonzero().flatten().to(torch.int32)})
        if o["op"] not in ("linear", "conv2d", "batch_norm"):
            out.append(o)
            continue
        o = dict(o)
        if o["op"] == "batch_norm":
            p = max(q for q, i in enumerate(prunable) if i < j)
            rows = keep[p]
            for k in ("running_mean", "running_var", "weight", "bias"):
                o[k] = o[k][rows].clone()
            out.append(o)
            continue
        p = prunable.index(j)
        w = o["weight"]
        cols = select if p == 0 else keep[p - 1]
        if cols is None:
            cols = torch.ones(nz[0].shape[1], dtype=torch.bool)
        w3 = w.reshape(w.shape[0], len(cols), -1)[keep[p]]
        if p - 1 in silenced:
            w3[:, silenced[p - 1]] = 0.0
        w3 = w3[:, cols]
        o["weight"] = (w3.reshape(w3.shape[0], w3.shape[1] * w3.shape[2]) if o["op"] == "linear"
                       else w3.reshape(w3.shape[0], w3.shape[1], *w.shape[2:])).contiguous()
        if o["bias"] is not None:
            o["bias"] = o["bias"][keep[p]].clone()
        out.append(o)
    payload["layers"] = out
    return payload


def widths(payload: dict) -> list[int]:
    """Output units of each Linear / Conv2d layer of a physical network, in order."""
    return [int(o["weight"].shape[0]) for o in payload["layers"] if o["op"] in ("linear", "conv2d")]


def dense_layers(payload: dict, seed: int = 0) -> list[dict]:
    """The unpruned network of the same architecture as the physical ``payload`` (every layer
    at its ``dense_shape``, no ``select``), with random weights N(0, 0.01²) and unit batch-norm
    statistics: the reference the physical network is timed against (its values do not matter
    for the time a dense kernel takes)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for o in payload["layers"]:
        if o["op"] == "select":
            continue
        if o["op"] in ("linear", "conv2d"):
            o = dict(o, weight=torch.randn(o["dense_shape"], generator=gen) * 0.01,
                     bias=None if o["bias"] is None else torch.zeros(o["dense_shape"][0]))
        elif o["op"] == "batch_norm":
            n = o["dense_shape"][0]
            o = dict(o, running_mean=torch.zeros(n), running_var=torch.ones(n), weight=torch.ones(n), bias=torch.zeros(n))
        out.append(o)
    return out


def check_payload(payload: Any, where: str = "physical network") -> dict:
    """``payload`` if it is a physical network of this format and version, else
    :class:`PhysicalError` naming what is wrong."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PhysicalError(f"{where}: not a {FORMAT} file (format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    if payload.get("version") != VERSION:
        raise PhysicalError(f"{where}: version {payload.get('version')!r}; this code reads version {VERSION}")
    bad = [o.get("op") for o in payload["layers"] if o.get("op") not in OPS]
    if bad:
        raise PhysicalError(f"{where}: unknown op(s) {bad}; valid: {', '.join(OPS)}")
    return payload


class Physical(nn.Module):
    """A physical network as an ``nn.Module`` (its tensors as buffers, no parameters);
    input (B, *input_shape), output (B, outputs)."""

    def __init__(self, layers: Sequence[dict]):
        super().__init__()
        self.layers = [dict(o) for o in layers]
        for k, o in enumerate(self.layers):
            for key, v in o.items():
                if torch.is_tensor(v):
                    self.register_buffer(f"t{k}_{key}", v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward(self.layers, x)


# ---------------------------------------------------------------- sparse storage

def _index_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype that holds indices 0 .. n - 1."""
    return torch.uint8 if n <= 256 else torch.int16 if n <= 32768 else torch.int32


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> (ceil(numel / 8),) uint8, the flat mask's bits, first element in the high bit."""
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (flat * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (numel,) bool."""
    shifts = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.int32)
    bits = (packed.to(torch.int32)[:, None] >> shifts) & 1
    return bits.flatten()[:numel].bool()


def sparse_weight(w: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict:
    """One weight (out, ...) in the smallest in raw bytes of three forms (ties: the first):

    - ``csr``: the weight as (out, rest): ``crow`` (out + 1,) int32 row starts, ``col`` (nnz,)
      column indices in the smallest integer type that fits, ``values`` (nnz,) ``dtype``;
    - ``bitmask``: ``bits`` (ceil(numel / 8),) uint8 (:func:`pack_bits`), ``values`` (nnz,);
    - ``dense``: ``values`` (numel,), every entry, zeros included: smaller than a bitmask plus
      values once more than 1 - 1/(8 b) of the weights are nonzero (b bytes per value; 97% in
      float32), e.g. an unpruned layer.

    ``shape`` is the weight's shape; :func:`dense_weight` inverts all three."""
    w2 = w.reshape(w.shape[0], math.prod(w.shape[1:]))
    keep = w2 != 0
    nnz, rows, cols = int(keep.sum()), w2.shape[0], w2.shape[1]
    idx = _index_dtype(cols)
    size = torch.empty(0, dtype=dtype).element_size()
    csr_bytes = (rows + 1) * 4 + nnz * (torch.empty(0, dtype=idx).element_size() + size)
    bitmask_bytes = math.ceil(w2.numel() / 8) + nnz * size
    if csr_bytes <= min(bitmask_bytes, w2.numel() * size):
        crow = torch.zeros(rows + 1, dtype=torch.int32)
        crow[1:] = keep.sum(dim=1).cumsum(0)
        col = keep.nonzero()[:, 1].to(idx)
        return {"format": "csr", "shape": list(w.shape), "crow": crow, "col": col, "values": w2[keep].to(dtype)}
    if bitmask_bytes <= w2.numel() * size:
        return {"format": "bitmask", "shape": list(w.shape), "bits": pack_bits(keep), "values": w2[keep].to(dtype)}
    return {"format": "dense", "shape": list(w.shape), "values": w2.flatten().to(dtype)}


def dense_weight(entry: dict) -> torch.Tensor:
    """The float32 dense weight of a :func:`sparse_weight` entry."""
    shape = entry["shape"]
    rows, numel = shape[0], math.prod(shape)
    if entry["format"] == "dense":
        return entry["values"].float().reshape(shape).clone()  # (a tensor of its own, as the other forms give)
    out = torch.zeros(numel)
    if entry["format"] == "bitmask":
        out[unpack_bits(entry["bits"], numel)] = entry["values"].float()
        return out.view(shape)
    if entry["format"] != "csr":
        raise PhysicalError(f"unknown sparse format {entry['format']!r}; valid: csr, bitmask, dense")
    cols = math.prod(shape[1:])
    crow = entry["crow"].long()
    row = torch.repeat_interleave(torch.arange(rows), crow[1:] - crow[:-1])
    out[row * cols + entry["col"].long()] = entry["values"].float()
    return out.view(shape)


def sparse_network(payload: dict, dtype: torch.dtype = torch.float32) -> dict:
    """The physical network ``payload`` with every Linear / Conv2d weight replaced by its
    :func:`sparse_weight` entry (values in ``dtype``: float32, or float16 to halve them;
    biases and batch norm stay float32); ``"sparse": true`` marks the form."""
    if dtype not in (torch.float32, torch.float16):
        raise PhysicalError(f"sparse values dtype {dtype}; valid: torch.float32, torch.float16")
    layers = []
    for o in payload["layers"]:
        if o["op"] in ("linear", "conv2d"):
            o = dict(o, weight=sparse_weight(o["weight"], dtype))
        layers.append(o)
    return dict(payload, layers=layers, sparse=True)


def from_sparse(payload: dict) -> dict:
    """The physical network (dense weights) of a :func:`sparse_network` payload."""
    layers = [dict(o, weight=dense_weight(o["weight"])) if o["op"] in ("linear", "conv2d") else o
              for o in payload["layers"]]
    out = dict(payload, layers=layers)
    out.pop("sparse", None)
    return out


def serialized_bytes(obj: Any) -> int:
    """Bytes ``torch.save`` writes for ``obj`` (measured: saved to memory and counted)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


#: random inputs :func:`check_export` runs through the physical and the unpruned network
CHECK_BATCH = 4
#: :func:`check_export`'s tolerance per output, relative to 1 + the output's magnitude bound
#: (:func:`_magnitudes`): removing units and folding constants reorders float32 sums, whose
#: rounding error scales with the sum of the magnitudes summed (~1e-7 of it per sum; a batch norm
#: of a channel whose variance is ~0 scales it by up to 1 / sqrt(eps) ≈ 316, and so the bound)
CHECK_RTOL = 1e-4


def _magnitudes(layers: Sequence[dict]) -> list[dict]:
    """Layers that, run on ``|x|``, bound the magnitude of every value of ``layers`` run on ``x``
    and of the terms summed to make it: weights and biases by their absolute values, batch norm
    as its absolute scale s = |γ| / sqrt(var + eps) and shift |β| + s |mean|, tanh as the
    identity (relu and max-pooling keep a bound a bound)."""
    out = []
    for o in layers:
        if o["op"] in ("linear", "conv2d"):
            o = dict(o, weight=o["weight"].abs(), bias=None if o["bias"] is None else o["bias"].abs())
        elif o["op"] == "batch_norm":
            scale = o["weight"].abs() / torch.sqrt(o["running_var"] + o["eps"])
            o = dict(o, running_mean=torch.zeros_like(scale), running_var=torch.full_like(scale, 1.0 - o["eps"]),
                     weight=scale, bias=o["bias"].abs() + scale * o["running_mean"].abs())
        elif o["op"] == "tanh":
            continue
        out.append(o)
    return out


def check_export(payload: dict, dense: dict, sparse: dict, where: str = "physical network") -> None:
    """:class:`PhysicalError` unless the physical network ``payload`` computes what the
    unpruned network ``dense`` does (:func:`physical_network` with ``remove=False``: the same
    masked layers, weights multiplied by their masks, nothing removed or folded; what it checks
    is the removal and folding, not the reading of the masked modules, which the tests check),
    and its sparse form ``sparse`` restores its weights exactly.

    Both run on :data:`CHECK_BATCH` standard-normal inputs from a private generator (the global
    random streams are not touched); each output must agree within ``CHECK_RTOL * (1 + b)``, b
    the bound of :func:`_magnitudes` for it.  A network whose outputs are not all finite (a
    diverged run) is checked for its sparse form only."""
    x = torch.randn((CHECK_BATCH, *payload["input_shape"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = forward(dense["layers"], x)
        if bool(torch.isfinite(want).all()):
            try:
                got = forward(payload["layers"], x)
            except RuntimeError as e:
                raise PhysicalError(f"{where}: the physical network does not run ({e}): a bug in slabbench.physical's "
                                    "unit removal") from e
            if got.shape != want.shape:
                raise PhysicalError(f"{where}: the physical network's outputs have shape {tuple(got.shape)}, the masked "
                                    f"network's {tuple(want.shape)}: a bug in slabbench.physical's unit removal")
            tol = CHECK_RTOL * (1.0 + forward(_magnitudes(dense["layers"]), x.abs()))
            err = (got - want).abs()
            if not bool((err <= tol).all()):
                k = int((err - tol).nan_to_num(float("inf")).argmax())
                raise PhysicalError(f"{where}: the physical network's outputs differ from the masked network's by "
                                    f"{float(err.flatten()[k]):.3g} (tolerance {float(tol.flatten()[k]):.3g}) on random "
                                    "inputs: a bug in slabbench.physical's unit removal")
    restored = from_sparse(sparse)["layers"]
    for k, (a, b) in enumerate(zip(restored, payload["layers"])):
        if a["op"] in ("linear", "conv2d"):
            same = a["weight"].shape == b["weight"].shape and bool(
                ((a["weight"] == b["weight"]) | (a["weight"].isnan() & b["weight"].isnan())).all())
            if not same:
                raise PhysicalError(f"{where}: layer {k} ({a['op']}): its sparse form does not restore its weights")


def physical_record(net: nn.Module, input_shape: Sequence[int], where: str = "physical network") -> tuple[dict, dict, dict]:
    """Export ``net`` (see :func:`physical_network`) and measure its stored sizes.

    Returns ``(fields, payload, sparse)``: the record fields ``model_bytes_dense`` (the
    unpruned network in the same format, masked weights stored as zeros), ``model_bytes_pruned``
    (the physical network, dense storage), ``model_bytes_sparse`` / ``model_bytes_sparse_fp16``
    (the physical network's weights in :func:`sparse_network` form, float32 / float16 values),
    ``physical_empty``, ``physical_widths`` (output units of each Linear / Conv2d layer) and
    ``physical_weights`` (the nonzero Linear / Conv2d weights of the physical network: the
    weights that still lie on a path from an input to an output, biases apart; beside the
    record's ``n_weights`` it gives the effective fraction of weights kept, which ``sparsity``
    overstates by counting weights into units that no longer reach the outputs); the physical
    network and its sparse form (float32) to save.  Both are checked against the masked network
    first (:func:`check_export`; ``where`` names the network in its error)."""
    payload = physical_network(net, input_shape)
    sparse = sparse_network(payload)
    dense = physical_network(net, input_shape, remove=False)
    check_export(payload, dense, sparse, where)
    half = sparse_network(payload, torch.float16)  # (each layer's form chosen for float16 values)
    fields = {
        "model_bytes_dense": serialized_bytes(dense),
        "model_bytes_pruned": serialized_bytes(payload),
        "model_bytes_sparse": serialized_bytes(sparse),
        "model_bytes_sparse_fp16": serialized_bytes(half),
        "physical_empty": bool(payload["empty"]),
        "physical_widths": widths(payload),
        # (0 for an empty network: a convolution that would keep no unit keeps unit 0, silenced,
        # whose incoming weights are on no path to the outputs)
        "physical_weights": 0 if payload["empty"] else sum(int(torch.count_nonzero(o["weight"]))
                                                           for o in payload["layers"] if o["op"] in ("linear", "conv2d")),
    }
    return fields, payload, sparse


def file_stem(record: dict) -> str:
    """Name (without suffix) of a record's physical network file: ``physical-natural`` or
    ``physical-target=0.9``."""
    if record["selection"] == "natural":
        return "physical-natural"
    return f"physical-target={float(record['target_sparsity']):g}"


def attach(record: dict, artefacts: dict, net: nn.Module, input_shape: Sequence[int]) -> dict:
    """``record`` with the physical fields of ``net`` (:func:`physical_record`) added; the
    physical network and its sparse form go to ``artefacts["physical"][file_stem(record)]``
    (written by the job beside the run's metrics, not into ``artefacts.pt``)."""
    t0 = time.perf_counter()
    where = file_stem(record) + (f" of seed {record['seed']}" if "seed" in record else "")
    fields, payload, sparse = physical_record(net, input_shape, where)
    artefacts.setdefault("physical", {})[file_stem(record)] = (payload, sparse)
    log.debug("%s: physical export in %.1f ms", file_stem(record), 1e3 * (time.perf_counter() - t0))
    return dict(record, **fields)


# ---------------------------------------------------------------- latency

def time_pair(first: nn.Module, second: nn.Module, x: torch.Tensor, *, warmup: int = 3, repeats: int = 9,
              min_block_s: float = 2e-3) -> tuple[float, float, float]:
    """Latencies of two modules on the batch ``x`` timed in alternation, so that a change of
    the machine's load hits both alike: after ``warmup`` untimed calls of each, ``repeats``
    rounds each time a block of each module (each block long enough to last ``min_block_s``),
    ``first`` first in even rounds and ``second`` first in odd ones (a load that slows the first
    block of a round slows each module as often).  Returns (ms of ``first``, ms of ``second``,
    ratio first / second), each module's time per call that of its fastest block: other work
    on the machine only ever adds time.  One network against itself (LeNet-300-100, one thread,
    a 2-core machine busy with two other processes, 21 tries per batch size): the median of 9
    rounds' ratios, ``first`` always first, read 0.27-0.43 or 2.1-3.6 in 7 of 21 tries at
    batch 1 and at batch 256; the fastest blocks with the order alternated, 0.97-1.04 and
    0.98-1.18."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_pair: repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    modules = (first, second)
    with torch.inference_mode():
        calls = []
        for module in modules:
            for _ in range(warmup):
                module(x)
            t0 = time.perf_counter()
            module(x)
            calls.append(max(1, math.ceil(min_block_s / max(time.perf_counter() - t0, 1e-7))))
        best = [math.inf, math.inf]
        for r in range(repeats):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                for _ in range(calls[i]):
                    modules[i](x)
                best[i] = min(best[i], (time.perf_counter() - t0) / calls[i])
    return 1e3 * best[0], 1e3 * best[1], best[0] / best[1]


def latency(payload: dict, batches: Sequence[int] = (1, 256), seed: int = 0, **timing) -> dict[str, float]:
    """Latency of the physical network ``payload`` and of the dense network of its
    architecture (:func:`dense_layers`), timed in alternation by :func:`time_pair` on random
    inputs (B, *input_shape) for each batch size B: ``latency_ms_b{B}``, ``latency_ms_b{B}_dense``
    and ``speedup_b{B}`` = dense / physical (of their fastest blocks).  An empty network
    (no path from input to output) is not timed: its latencies are NaN."""
    out: dict[str, float] = {}
    phys = Physical(payload["layers"]).eval()
    dense = Physical(dense_layers(payload, seed)).eval()
    gen = torch.Generator().manual_seed(seed)
    for b in batches:
        x = torch.randn(b, *payload["input_shape"], generator=gen)
        if payload["empty"]:  # nothing to time but the reference
            d, p, ratio = time_pair(dense, dense, x, **timing)[0], math.nan, math.nan
        else:
            d, p, ratio = time_pair(dense, phys, x, **timing)
        out.update({f"latency_ms_b{b}": p, f"latency_ms_b{b}_dense": d, f"speedup_b{b}": ratio})
    return out
