"""One training step and one evaluation, shared by the continual runner and the pretraining
stage. Under torchrun both work on this process's share of the data and agree on the result
across processes (see `clbench.distributed`)."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from . import distributed
from .data import iterate


def set_train_mode(model: nn.Module, freeze_bn_stats: bool) -> None:
    model.train()
    if freeze_bn_stats:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_step(model, opt, sched, criterion, x, y, t: int, cfg, device, fused=None) -> float:
    """One optimizer step on (x, y) with head `t`; returns the loss (over the global batch under
    torchrun, where (x, y) is this process's share). A non-finite loss makes no update. With
    `fused` (an `optimizers.FusedBackward` of `opt`; one process only) the step happens inside
    backward."""
    set_train_mode(model, cfg.freeze_bn_stats)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    with autocast(device):
        loss = criterion(model(x, t), y)
    share, value = distributed.batch_share(loss, len(y))
    if not math.isfinite(value):  # no update from a non-finite loss; the caller decides
        return value
    if fused is not None:  # the update of each parameter happens inside backward
        fused.backward(loss)
    else:
        opt.zero_grad(set_to_none=True)
        (loss * share).backward()  # share: 1 in a single process
        distributed.sum_gradients(model)
        opt.step()
    sched.step()
    return value


@torch.no_grad()
def evaluate(model, dataset, indices: torch.Tensor | None, t: int, cfg, device):
    """(accuracy %, mean cross-entropy) of head `t` on `dataset` (or its `indices`). Under
    torchrun each process evaluates its share and the counts are summed."""
    model.eval()
    idx = indices if indices is not None else torch.arange(len(dataset))
    batches = [b for b in distributed.shard(idx).split(cfg.eval_batch_size) if len(b)]
    correct, loss_sum = 0, 0.0
    for x, y in iterate(dataset, batches, cfg.num_workers):
        x, y = x.to(device), y.to(device)
        with autocast(device):
            logits = model(x, t).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    correct, loss_sum = distributed.all_reduce(correct, loss_sum)
    n = len(idx)
    return 100.0 * correct / n, loss_sum / n
