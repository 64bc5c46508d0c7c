"""The restarts policy: several starts of one run, screened and chosen by their training objective.

A run with ``restarts: K`` trains K starts (start 0 is the run itself, see :func:`start_seed`),
stacked with the other runs of its job.  With screening (``restarts_keep``,
``restarts_screen_epochs``) the engine calls :func:`screen_starts` once after that many epochs
and only the ``restarts_keep`` best starts of each run train on (successive halving); at the end
:func:`choose_starts` keeps one start per run (and target).  Both rank starts by the method's
own loss on the training data (:func:`training_objective`), never on validation or test data.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Sequence

import torch
from torch import nn

from slabbench.api import Method
from slabbench.engine import Member, _nll_per_run
from slabbench.stack import unstack

log = logging.getLogger(__name__)


def start_seed(seed: int, start: int) -> int:
    """Seed of start ``start`` of the run with seed ``seed`` (its initialisation; its noise
    draws from :func:`noise_seed` of this): start 0 is the run itself, so one start is
    exactly the run without restarts; later starts are a function of (seed, start) only."""
    if start == 0:
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"slabbench-start:{int(seed)}:{int(start)}".encode()).digest()[:7], "big")


#: sampled networks whose mean NLL makes a stochastic method's training objective
OBJECTIVE_SAMPLES = 20
#: rows per forward pass when a training objective is evaluated
OBJECTIVE_CHUNK = 8192


@torch.no_grad()
def training_objective(model: nn.Module, method: Method, x: torch.Tensor, y: torch.Tensor, *, task: str,
                       noise_sd: float, samples: int = OBJECTIVE_SAMPLES) -> float:
    """The method's own loss on the whole training set, in nats per training point:
    mean NLL (averaged over ``samples`` networks drawn as in training, from torch's global
    generator; one when two draws agree, i.e. the network is deterministic) + penalty / N.
    The model is evaluated in training mode (its noise on) and its buffers (batch-norm
    statistics) are restored afterwards."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    model.train()
    n = len(y)
    # equal chunks, never a one-row remainder (batch norm in training mode needs two rows)
    parts = -(-n // OBJECTIVE_CHUNK)
    chunks = list(zip(x.tensor_split(parts), y.tensor_split(parts)))
    nlls = []
    for s in range(samples):
        total = 0.0
        for xb, yb in chunks:
            out = model(xb)
            total += float(_nll_per_run(out[None], yb[None], task, noise_sd)[0]) * len(yb)
        nlls.append(total / n)
        if s == 1 and nlls[1] == nlls[0]:
            break
    for b, v in saved:
        b.copy_(v)
    model.train(was_training)
    penalty = method.penalty(model)
    return sum(nlls) / len(nlls) + (0.0 if penalty is None else float(penalty) / n)


def screen_starts(model: nn.Module, members: Sequence[Member], data, keep: int, *, task: str, noise_sd: float,
                   what: str, epoch: int) -> list[int]:
    """Restarts' screening: of the starts of each run (and target) in a stack, the ``keep``
    with the lowest training objective now (:func:`training_objective` of each start's
    unstacked copy, training data only; a diverged start loses).  Records each start's value
    and state there; returns the positions of the kept starts.  torch's global generator is
    left as it was."""
    values = []
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        for s, m in enumerate(members):
            m.model = unstack(model, s)
            torch.manual_seed(m.noise_seed + 2)  # the start's own draws, as for the final choice
            v = math.inf if m.diverged else training_objective(m.model, m.method, *data[s], task=task, noise_sd=noise_sd)
            values.append(v if math.isfinite(v) else math.inf)
            m.screen_objective = None if math.isinf(values[-1]) else v
    groups: dict[tuple, list[int]] = {}
    for s, m in enumerate(members):
        groups.setdefault((m.seed, m.target), []).append(s)
    kept = []
    for idx in groups.values():
        best = sorted(idx, key=lambda s: (values[s], s))[:keep]
        kept += best
        log.info("%s: after epoch %d, starts %s of %d train on (training objectives %s nats per point)",
                 members[idx[0]].label.rsplit(" start=", 1)[0], epoch, sorted(members[s].start for s in best), len(idx),
                 ", ".join(f"{values[s]:.4f}" for s in idx))
    for s, m in enumerate(members):
        m.screened_out = s not in kept
    return sorted(kept)



def choose_starts(members: list[Member], member_run: list[int], seconds: list[float], train_data, *, task: str,
                   noise_sd: float):
    """Restarts: of the starts of each run (and target), keep the one with the lowest final
    training objective (:func:`training_objective`, training data only, never validation or
    test data); a diverged start, or one that stopped at the screening, loses to any finite one.  Returns the kept members, their
    runs, their seconds (the sum over all the run's starts) and each one's restart record
    fields."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault((member_run[i], m.target), []).append(i)
    chosen = []  # (member index, its seconds, its record fields)
    for idx in groups.values():
        objectives = []
        for i in idx:
            m = members[i]
            torch.manual_seed(m.noise_seed + 2)  # the start's own draws
            value = math.inf if m.diverged or m.screened_out else training_objective(
                m.model, m.method, *train_data[i], task=task, noise_sd=noise_sd)
            objectives.append(value if math.isfinite(value) else math.inf)
        i = idx[min(range(len(idx)), key=lambda j: (objectives[j], j))]
        fields = dict(restarts=len(idx), restart_chosen=members[i].start,
                      restart_objectives=[None if math.isinf(v) else v for v in objectives])
        if any(members[j].screened_out for j in idx):  # screened: who went on, and everyone's value then
            fields.update(restart_finalists=[members[j].start for j in idx if not members[j].screened_out],
                          restart_screen_objectives=[members[j].screen_objective for j in idx])
        chosen.append((i, sum(seconds[j] for j in idx), fields))
        log.info("%s: start %d of %d kept (training objectives %s nats per point)", members[i].label, members[i].start,
                 len(idx), ", ".join(f"{v:.4f}" for v in objectives))
    chosen.sort(key=lambda c: c[0])
    return ([members[i] for i, _, _ in chosen], [member_run[i] for i, _, _ in chosen],
            [secs for _, secs, _ in chosen], [fields for _, _, fields in chosen])
