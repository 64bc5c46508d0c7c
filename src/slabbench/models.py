"""Architectures built from masked layers: MLP (LeNet-300-100 = ``mlp`` with hidden
[300, 100]), LeNet-5-Caffe and a VGG-like CIFAR net.  The classifier layer is prunable
like any other.  Every layer stacks (:mod:`slabbench.stack`): batch norm and pooling are the
stackable subclasses of torch's layers in :mod:`slabbench.layers.basic`."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from torch import nn

from slabbench.api import DatasetSpec, yaml_number_hint
from slabbench.layers import BatchNorm1d, BatchNorm2d, MaskedConv2d, MaskedLinear, MaxPool2d

MODELS = ("mlp", "lenet5", "vgg")
MODEL_OPTIONS = {"mlp": ("hidden", "activation", "init"), "lenet5": ("init",), "vgg": ("channels", "width", "init")}
#: VGG-16's convolution widths ("M" = 2x2 max-pool), the VGG-like CIFAR-10 net of sparse VD's
#: experiments (Zagoruyko's cifar.torch VGG with batch norm and a 512-512-10 classifier)
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class ModelError(ValueError):
    pass


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _init_scale(init: Any) -> float | None:
    """A of ``uniform:A`` (finite, > 0), 0.0 for ``default``, None for anything else."""
    if init == "default":
        return 0.0
    if isinstance(init, str) and init.startswith("uniform:"):
        try:
            a = float(init.split(":", 1)[1])
        except ValueError:
            return None
        return a if math.isfinite(a) and a > 0 else None
    return None


def model_option_error(name: str, options: dict[str, Any] | None) -> str | None:
    """Why ``options`` are not valid for model ``name`` (their keys and values; what depends on
    the data, such as an input too small for lenet5's pools, is checked when the model is
    built), or None.  The configuration's validation calls it, so that a bad value fails before
    any job starts."""
    options = dict(options or {})
    if name not in MODELS:
        return f"unknown model {name!r}; have {', '.join(MODELS)}"
    unknown = sorted(set(options) - set(MODEL_OPTIONS[name]))
    if unknown:
        return f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; valid: {', '.join(MODEL_OPTIONS[name])}"
    if "hidden" in options:
        h = options["hidden"]
        if not isinstance(h, (list, tuple)) or not all(_positive_int(v) for v in h):
            return f"model option hidden is {h!r}; expected a list of hidden-layer widths, integers >= 1 (e.g. [300, 100])"
    if "activation" in options and options["activation"] not in ACTIVATIONS:
        return f"model option activation is {options['activation']!r}; valid: {', '.join(ACTIVATIONS)}"
    if "init" in options and _init_scale(options["init"]) is None:
        return (f"model option init is {options['init']!r}; valid: 'default' or 'uniform:A' with A a finite number > 0 "
                f"(e.g. 'uniform:0.6')")
    if "channels" in options:
        c = options["channels"]
        if not isinstance(c, (list, tuple)) or not all(v == "M" or _positive_int(v) for v in c):
            return f"model option channels is {c!r}; expected a list of convolution widths (integers >= 1) and 'M' (a max-pool)"
    if "width" in options:
        w = options["width"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w > 0):
            return (f"model option width is {w!r}; expected a finite number > 0 (it scales every convolution's "
                    f"width){yaml_number_hint(w)}")
    return None


def build_model(name: str, spec: DatasetSpec, options: dict[str, Any] | None = None) -> nn.Sequential:
    """Build the plain architecture ``name`` for data described by ``spec``.

    Options: ``hidden`` (list of widths, mlp), ``activation`` (relu|tanh, mlp),
    ``init`` (``default`` = torch's Kaiming-uniform, or ``uniform:A`` = U(-A, A) for every
    weight and bias, the predecessors' choice for small regression nets).
    """
    options = dict(options or {})
    err = model_option_error(name, options)
    if err:
        raise ModelError(err)
    if name == "mlp":
        model = mlp(spec.n_features, list(options.get("hidden", [300, 100])), spec.outputs, options.get("activation", "relu"))
    elif name == "lenet5":
        model = lenet5_caffe(spec.input_shape, spec.outputs)
    else:
        model = vgg_like(spec.input_shape, spec.outputs, options.get("channels", list(VGG16)), float(options.get("width", 1.0)))
    _init(model, options.get("init", "default"))
    return model


def mlp(in_features: int, hidden: list[int], outputs: int, activation: str = "relu") -> nn.Sequential:
    if activation not in ACTIVATIONS:
        raise ModelError(f"unknown activation {activation!r}; have {', '.join(ACTIVATIONS)}")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    widths = [in_features, *hidden]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layers += [(f"fc{i}", MaskedLinear(a, b)), (f"act{i}", ACTIVATIONS[activation]())]
    layers.append((f"fc{len(widths)}", MaskedLinear(widths[-1], outputs)))
    return nn.Sequential(OrderedDict(layers))


def lenet5_caffe(input_shape: tuple[int, ...], outputs: int) -> nn.Sequential:
    """conv20-5x5, maxpool 2, conv50-5x5, maxpool 2, fc500, fc(outputs); ReLU after each
    hidden layer (as in the sparse VD and L0 reference code)."""
    if len(input_shape) != 3 or input_shape[1] < 16 or input_shape[2] < 16:
        raise ModelError(f"lenet5 needs image input (C, H, W) with H, W >= 16; got input shape {tuple(input_shape)}")
    c, h, w = input_shape
    fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return nn.Sequential(OrderedDict([
        ("conv1", MaskedConv2d(c, 20, 5)), ("act1", nn.ReLU()), ("pool1", MaxPool2d(2)),
        ("conv2", MaskedConv2d(20, 50, 5)), ("act2", nn.ReLU()), ("pool2", MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", MaskedLinear(50 * fh * fw, 500)), ("act3", nn.ReLU()),
        ("fc2", MaskedLinear(500, outputs)),
    ]))


def vgg_like(input_shape: tuple[int, ...], outputs: int, channels: list, width: float = 1.0) -> nn.Sequential:
    """VGG-like net for 32x32 images: 3x3 convolutions (padding 1) each followed by batch norm
    and ReLU, 2x2 max-pools at "M", then fc(512) + BN + ReLU and fc(outputs).  ``width``
    scales every conv width (sparse VD's experiments vary it); batch norm is not pruned."""
    if len(input_shape) != 3:
        raise ModelError(f"vgg needs image input (C, H, W); got input shape {tuple(input_shape)}")
    if not (width > 0):
        raise ModelError(f"vgg option width must be > 0, got {width!r}")
    c, h, w = input_shape
    layers: list[tuple[str, nn.Module]] = []
    conv = pool = 0
    for item in channels:
        if item == "M":
            pool += 1
            h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ModelError(f"vgg: too many pools for input shape {tuple(input_shape)}")
            layers.append((f"pool{pool}", MaxPool2d(2)))
            continue
        if not isinstance(item, int) or item < 1:
            raise ModelError(f"vgg option channels takes positive integers and 'M'; got {item!r}")
        conv += 1
        out = max(1, round(item * width))
        layers += [(f"conv{conv}", MaskedConv2d(c, out, 3, padding=1)), (f"bn{conv}", BatchNorm2d(out)),
                   (f"act{conv}", nn.ReLU())]
        c = out
    layers += [("flatten", nn.Flatten()), ("fc1", MaskedLinear(c * h * w, 512)), ("bnfc", BatchNorm1d(512)),
               ("actfc", nn.ReLU()), ("fc2", MaskedLinear(512, outputs))]
    return nn.Sequential(OrderedDict(layers))


def _init(model: nn.Module, init: str) -> None:
    a = _init_scale(init)
    if a is None:
        raise ModelError(f"unknown init {init!r}; valid: 'default' or 'uniform:A' with A a finite number > 0 (e.g. 'uniform:0.6')")
    if a > 0:
        for p in model.parameters():
            nn.init.uniform_(p, -a, a)
