"""The core training and evaluation of one run: (experiment, method, seed) -> records.

For a run the core loads the data once onto the device, builds the architecture, lets the
method build its training-time model and trains it with

    loss = mean NLL over the minibatch + beta(epoch) * penalty / N_train

then, on the exported network, for every sparsity target ``s``: scores -> global top-k mask
-> optional fine-tune -> evaluate; plus the method's natural selection.  Metrics are always
measured here, on the exported (plain, masked) network.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import nn

from slabbench import metrics as M
from slabbench.api import Method, TrainContext, make_params
from slabbench.models import build_model
from slabbench.prune import apply_masks, topk_masks
from slabbench.provenance import provenance
from slabbench.registry import dataset_class, method_class

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use device: auto or cpu")
    return torch.device(device)


def set_threads(threads: int) -> None:
    """Torch's intra-op thread count follows the job's ``threads``."""
    torch.set_num_threads(max(1, int(threads)))
    try:
        torch.set_num_interop_threads(max(1, int(threads)))
    except RuntimeError:  # already set in this process
        pass


def fit(model: nn.Module, method: Method, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int,
        lr: float, task: str, noise_sd: float, generator: torch.Generator) -> None:
    """Minibatch training with the core's loss convention (see module docstring).

    ``x``, ``y`` live on the model's device; shuffling draws from ``generator`` (CPU).
    """
    opt = method.optimizer(model, lr)
    n = len(y)
    model.train()
    step = 0
    for epoch in range(epochs):
        beta = method.beta(epoch)
        perm = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            # index_select, not x[idx]: the same rows, but advanced indexing's general kernel
            # takes ~6x longer on CPU (0.19 vs 0.03 ms for 500 x 200 floats), a large share of
            # a small net's training step.
            loss = M.nll_loss(model(x.index_select(0, idx)), y.index_select(0, idx), task, noise_sd)
            penalty = method.penalty(model)
            if penalty is not None and beta != 0.0:
                loss = loss + beta * penalty / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step(model, step, epoch)
            step += 1
        method.after_epoch(model, epoch)
    model.eval()


def evaluate(net: nn.Module, data: dict, spec, task: str, noise_sd: float) -> dict[str, Any]:
    """Structure and predictive metrics of a plain masked network."""
    out: dict[str, Any] = M.structure(net, spec.input_shape)
    for split in ("val", "test"):
        x, y = data[split]
        out.update(M.predictive_metrics(M.predict(net, x), y, task, noise_sd, prefix=split))
    if spec.true_support is not None:
        out.update(M.selection_errors(out["selected_features"], spec.true_support, spec.n_features))
    return out


def _bma_metrics(method: Method, model: nn.Module, masks, data, task: str, noise_sd: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        x, y = data[split]
        with torch.no_grad():
            pred = method.bma_predict(model, masks, x)
        if pred is None:
            return {}
        m = M.predictive_metrics(pred, y, task, noise_sd, prefix=split, probs=True)
        out.update({f"{k}_bma": v for k, v in m.items()})
    return out


def _finetune(net: nn.Module, masks: dict, data, cfg: dict, task: str, device, seed: int) -> nn.Module:
    """Fine-tune the surviving weights of ``net`` (masks fixed), NLL only, Adam at
    ``lr * finetune_lr_factor`` for ``finetune_epochs`` epochs (the same for every method)."""
    net = apply_masks(copy.deepcopy(net), masks)
    epochs = int(cfg.get("finetune_epochs", 0))
    if epochs <= 0:
        return net
    for p in net.parameters():
        p.requires_grad_(True)
    ctx = TrainContext(task=task, n_train=len(data["train"][1]), epochs=epochs, steps_per_epoch=0,
                       lr=cfg["lr"] * cfg["finetune_lr_factor"], device=device, spec=None)
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    fit(net, Method(None, ctx), *data["train"], epochs=epochs, batch_size=cfg["batch_size"], lr=ctx.lr,
        task=task, noise_sd=cfg["noise_sd"], generator=gen)
    with torch.no_grad():  # Adam moments may move masked weights; they never act, zero them
        apply_masks(net, masks)
    return net


def run(cfg: dict, threads: int = 1) -> tuple[list[dict], dict[str, Any]]:
    """Train and evaluate one run described by ``cfg`` (a resolved run spec, see
    :func:`slabbench.config.run_specs`).  Returns the records (one per target plus the
    natural selection) and artefacts (scores, natural masks) for figures."""
    set_threads(threads)
    device = resolve_device(cfg["device"])
    seed = int(cfg["seed"])
    ds_cls, m_cls = dataset_class(cfg["dataset"]), method_class(cfg["method"])
    dataset = ds_cls(make_params(ds_cls.Params, cfg.get("dataset_params"), f"dataset {cfg['dataset']!r}"), seed)
    dataset.prepare()
    spec = dataset.spec()
    data = {s: tuple(t.to(device) for t in dataset.load(s)) for s in ("train", "val", "test")}
    task, noise_sd = spec.task, float(cfg["noise_sd"])
    n_train = len(data["train"][1])
    m_params = make_params(m_cls.Params, cfg.get("method_params"), f"method {cfg['method']!r}")
    base = {k: cfg[k] for k in ("experiment", "dataset", "model", "method", "seed")}
    base.update(task=task, device=str(device), spec=cfg, provenance=provenance(device))
    targets = [float(s) for s in cfg["sparsities"]]
    records: list[dict] = []
    artefacts: dict[str, Any] = {}
    for train_target in (targets if m_cls.trains_per_target(m_params) else [None]):
        torch.manual_seed(seed)
        arch = build_model(cfg["model"], spec, cfg.get("model_params"))
        ctx = TrainContext(task=task, n_train=n_train, epochs=int(cfg["epochs"]),
                           steps_per_epoch=-(-n_train // int(cfg["batch_size"])), lr=float(cfg["lr"]),
                           device=device, spec=spec, target=train_target)
        method = m_cls(m_params, ctx)
        model = method.build(arch).to(device)
        t0 = time.perf_counter()
        fit(model, method, *data["train"], epochs=ctx.epochs, batch_size=int(cfg["batch_size"]), lr=ctx.lr,
            task=task, noise_sd=noise_sd, generator=torch.Generator().manual_seed(seed))
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        exported = method.export(model).to(device).eval()
        scores = method.scores(model)
        common = dict(base, train_seconds=train_seconds)
        natural = method.natural_mask(model) if train_target is None else None
        if train_target is None and (natural is not None or scores is None):
            net = apply_masks(copy.deepcopy(exported), natural) if natural is not None else exported
            rec = dict(common, selection="natural", target_sparsity=None, finetune_epochs=0,
                       **evaluate(net, data, spec, task, noise_sd), **_bma_metrics(method, model, natural, data, task, noise_sd))
            records.append(rec)
        if train_target is None:
            artefacts.update(method.extra_artifacts(model))
            if scores is not None:
                artefacts["scores"] = {k: (v[0] if isinstance(v, tuple) else v).detach().cpu() for k, v in scores.items()}
            if natural is not None:
                artefacts["natural_mask"] = {k: v.detach().cpu() for k, v in natural.items()}
        if scores is None:
            continue
        for target in ([train_target] if train_target is not None else targets):
            masks = topk_masks(scores, target, method.prune_scope)
            net = _finetune(exported, masks, data, cfg, task, device, seed)
            bma = _bma_metrics(method, model, masks, data, task, noise_sd) if not cfg.get("finetune_epochs") else {}
            records.append(dict(common, selection="target", target_sparsity=target,
                                finetune_epochs=int(cfg.get("finetune_epochs", 0)),
                                **evaluate(net, data, spec, task, noise_sd), **bma))
        log.info("%s/%s seed=%d: %d records in %.1fs", cfg["experiment"], cfg["method"], seed, len(records), train_seconds)
    return records, artefacts
