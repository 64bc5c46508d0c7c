"""Evaluation and records: what is measured on a trained run, and the records that carry it.

Every metric is measured here, on the network the method exports (plain, masked layers), never
reported by the plugin.  For each trained run: its natural selection (Bayesian methods, or a
method that never prunes) is evaluated at once; each sparsity target's top-k selection becomes
a :class:`TargetSelection` that waits for the job's fine-tuning (all targets x seeds stacked,
:mod:`slabbench.train`) and is then evaluated into its record (:meth:`TargetSelection.record`).
A record is a flat dict (one line of ``metrics.jsonl``): the fields every record of its run
shares (:func:`common_fields`), then the selection's own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from slabbench import metrics as M
from slabbench import physical
from slabbench.api import DatasetSpec, Method
from slabbench.config import RunSpec
from slabbench.engine import Member, noise_seed
from slabbench.outputs import check_mask, check_scores
from slabbench.prune import apply_masks, topk_masks


@dataclass(frozen=True)
class Measure:
    """What every record of a job is measured with: the data set's spec
    (:class:`slabbench.api.DatasetSpec`), its task, the likelihood's noise sd and the device."""

    data_spec: DatasetSpec
    task: str
    noise_sd: float
    device: torch.device


def evaluate(net: nn.Module, data: dict, spec, task: str, noise_sd: float) -> dict[str, Any]:
    """Structure and predictive metrics of a plain masked network: ``val_*``, the test split's
    (``test_*``, ``ece``) and, after them, the training split's ``train_*`` (Bai et al. report
    train and test RMSE; the gap shows what pruning and fine-tuning do to the fit)."""
    out: dict[str, Any] = M.structure(net, spec.input_shape)
    for split in ("val", "test"):
        x, y = data[split]
        out.update(M.predictive_metrics(M.predict(net, x), y, task, noise_sd, prefix=split))
    if spec.true_support is not None:
        out.update(M.selection_errors(out["selected_features"], spec.true_support, spec.n_features))
        out.update(M.selection_errors(out["selected_features_bai"], spec.true_support, spec.n_features, suffix="_bai"))
    x, y = data["train"]
    out.update(M.predictive_metrics(M.predict(net, x), y, task, noise_sd, prefix="train"))
    return out


def fp16_metrics(payload: dict, data: dict, task: str, noise_sd: float) -> dict[str, Any]:
    """The test accuracy (``test_accuracy_fp16``) or RMSE (``test_rmse_fp16``) of the physical
    network ``payload`` stored as ``model_bytes_sparse_fp16`` counts it: its Linear / Conv2d
    weights rounded to float16, as that sparse form stores them (:func:`slabbench.physical.
    sparse_network`, which :func:`slabbench.physical.from_sparse` restores to exactly these
    values; biases, folded constants and batch norm stay float32), run in float32.  What halving
    the stored values costs."""
    x, y = data["test"]
    layers = [{k: (v.to(x.device) if torch.is_tensor(v) else v) for k, v in o.items()} for o in payload["layers"]]
    for o in layers:
        if o["op"] in ("linear", "conv2d"):
            o["weight"] = o["weight"].half().float()
    with torch.no_grad():
        out = torch.cat([physical.forward(layers, x[i:i + 4096]) for i in range(0, len(x), 4096)])
    key = "test_accuracy" if task == "classification" else "test_rmse"
    return {f"{key}_fp16": M.predictive_metrics(out, y, task, noise_sd)[key]}


def with_physical(record: dict, artefacts: dict, net: nn.Module, measure: Measure, data: dict) -> dict[str, Any]:
    """``record`` with the physical network's fields (:func:`slabbench.physical.attach`, which
    puts the network into ``artefacts``) and the test metric of its float16 form (:func:`fp16_metrics`)."""
    record = physical.attach(record, artefacts, net, measure.data_spec.input_shape)
    payload, _ = artefacts["physical"][physical.file_stem(record)]
    return dict(record, **fp16_metrics(payload, data, measure.task, measure.noise_sd))


def bma_metrics(method: Method, model: nn.Module, masks, data, task: str, noise_sd: float) -> dict[str, Any]:
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


def sampled_metrics(method: Method, model: nn.Module, data, task: str, noise_sd: float, seed: int,
                     device: torch.device) -> dict[str, Any]:
    """Accuracy or RMSE of the method's unmasked posterior-sampling predictor
    (:meth:`Method.sampled_predict`) on the validation and test splits, as ``*_sampled``; {}
    when the method has none.  Its draws come from the run's own seed and leave torch's
    generators as they were, so the model averages after it draw what they drew without it."""
    out: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(noise_seed(seed) + 3)  # +1: model averages; +2: restarts' objectives
        for split in ("val", "test"):
            x, y = data[split]
            with torch.no_grad():
                pred = method.sampled_predict(model, x)
            if pred is None:
                return {}
            key = f"{split}_accuracy" if task == "classification" else f"{split}_rmse"
            out[f"{key}_sampled"] = M.predictive_metrics(pred, y, task, noise_sd, prefix=split, probs=True)[key]
    return out


def common_fields(spec: RunSpec, member: Member, measure: Measure, data: dict, provenance: dict, seconds: float,
                  restart_fields: dict) -> dict[str, Any]:
    """The fields every record of a trained run carries, in order: who it is (experiment, data
    set, model, method, seed), how it ran (task, device, its spec, provenance, its share of the
    training's wall time, how many runs shared its stack, its restarts), the constant
    predictor's metrics (regression: the reference a collapsed net is read against) and why it
    diverged, if it did."""
    common = {k: spec[k] for k in ("experiment", "dataset", "model", "method", "seed")}
    if member.step_graphs is not None:  # how its steps ran on a GPU (CUDA graphs, or eager and why)
        provenance = dict(provenance, step_graphs=member.step_graphs)
    if member.step_compile is not None:  # compile: true: "compiled (backend)", or "eager (why)"
        provenance = dict(provenance, step_compile=member.step_compile)
    common.update(task=measure.task, device=str(measure.device), spec=spec.to_dict(), provenance=provenance,
                  train_seconds=seconds, stack_runs=member.stack_runs, **restart_fields)
    if measure.task == "regression":  # the reference a collapsed net is read against
        common.update(M.constant_predictor_metrics(data["train"][1], data["test"][1]))
    if member.diverged:
        common["diverged"] = member.diverged
    return common


@dataclass
class TargetSelection:
    """A trained run's top-k selection at one sparsity target, awaiting its fine-tuning."""

    run: int  #: position of the run's spec in the job
    net: nn.Module  #: the exported network the masks prune
    masks: dict[str, torch.Tensor]  #: keep-mask per prunable weight
    seed: int
    data: dict  #: the run's splits {split: (x, y)} on the device
    common: dict  #: the fields every record of the run carries (:func:`common_fields`)
    bma: dict  #: model-average metrics under the masks ({} when the selection is fine-tuned)
    target: float  #: the sparsity target

    def record(self, net: nn.Module, seconds: float, finetune_epochs: int, measure: Measure,
               artefacts: dict) -> dict[str, Any]:
        """The selection's record, measured on ``net`` (its masked network after fine-tuning,
        which took ``seconds``); its physical network goes to ``artefacts``."""
        return with_physical(dict(self.common, selection="target", target_sparsity=self.target,
                                  finetune_epochs=finetune_epochs, finetune_seconds=seconds,
                                  **evaluate(net, self.data, measure.data_spec, measure.task, measure.noise_sd), **self.bma),
                             artefacts, net, measure, self.data)


def measure_run(member: Member, run: int, method_name: str, data: dict, common: dict, measure: Measure,
                targets: Sequence[float], fine_tuned: bool, records: list[dict],
                artefacts: dict[str, Any]) -> list[TargetSelection]:
    """Evaluate a trained run (``member``, the ``run``-th spec of its job): its natural
    selection goes to ``records``, its scores, natural mask and the method's own artefacts to
    ``artefacts`` (a run trained for one target has none of these: the run without a target
    does).  Returns its selection at each target (its own, when it trained for one), with the
    model average under the mask measured now unless the selections will be fine-tuned
    (``fine_tuned``)."""
    method, model, device = member.method, member.model, measure.device
    data_spec, task, noise_sd = measure.data_spec, measure.task, measure.noise_sd
    exported = method.export(model).to(device).eval()
    scores = method.scores(model)
    if scores is not None:
        check_scores(scores, exported, method_name, diverged=bool(member.diverged))
    torch.manual_seed(noise_seed(member.seed) + 1)  # model averages: the run's own draws (whichever start won)
    if member.target is None:
        natural = method.natural_mask(model)
        if natural is not None:
            check_mask(natural, exported, method_name)
        if natural is not None or scores is None:
            net = apply_masks(copy.deepcopy(exported), natural) if natural is not None else exported
            records.append(with_physical(dict(
                common, selection="natural", target_sparsity=None, finetune_epochs=0,
                **evaluate(net, data, data_spec, task, noise_sd), **bma_metrics(method, model, natural, data, task, noise_sd),
                **sampled_metrics(method, model, data, task, noise_sd, member.seed, device)), artefacts, net, measure, data))
        artefacts.update(method.extra_artifacts(model))
        if scores is not None:
            artefacts["scores"] = {k: (v[0] if isinstance(v, tuple) else v).detach().cpu() for k, v in scores.items()}
        if natural is not None:
            artefacts["natural_mask"] = {k: v.detach().cpu() for k, v in natural.items()}
    if scores is None:
        return []
    selections = []
    for target in ([member.target] if member.target is not None else targets):
        masks = topk_masks(scores, target, method.prune_scope)
        bma = bma_metrics(method, model, masks, data, task, noise_sd) if not fine_tuned else {}
        selections.append(TargetSelection(run, exported, masks, member.seed, data, common, bma, target))
    return selections
