"""The optional pretraining stage: train the backbone densely (AdamW) on one task before the
sequence, so that offline runs finetune a pretrained model as the paper does. Results are cached
in the user cache directory, keyed by everything that determines them. Under torchrun all
processes train together, like the sequence, and process 0 writes the cache."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from . import distributed, storage
from .config import RunConfig, cache_dir
from .data import batch_index_lists, epoch_order, iterate, seed_everything
from .models import MultiHeadNet, timm_name
from .training import evaluate, train_step

_PRETRAIN_PHASE = 4


def cache_key(cfg: RunConfig) -> str:
    """Hash of what determines the pretrained weights (model, task, epochs, image size, seed,
    LR, batch size, starting weights)."""
    fields = {
        "model": timm_name(cfg.model),
        "pretrained": cfg.pretrained,
        "weights": cfg.weights,
        "task": cfg.pretrain,
        "epochs": cfg.pretrain_epochs,
        "lr": cfg.pretrain_lr,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "augment": cfg.augment,
        "version": 1,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_backbone(
    cfg: RunConfig,
    backbone: nn.Module,
    data,
    device: torch.device,
    progress: bool = True,
    console: Any = None,
) -> dict:
    """Load the cached result or train it; returns what happened, for config.json/summary."""
    name = f"{cfg.model}-{cfg.pretrain}".replace("/", "_").replace(":", "_")
    path = cache_dir() / "pretrain" / f"{name}-{cache_key(cfg)}.pt"
    if distributed.broadcast_object(path.exists()):  # process 0's view decides for all
        cached = storage.load_torch(path)
        backbone.load_state_dict(cached["backbone"])
        return {**cached["info"], "cache": "hit", "path": str(path)}

    seed_everything(cfg.seed + 1)
    net = MultiHeadNet(backbone)
    net.add_head(data.task.num_classes)
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.pretrain_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    criterion = nn.CrossEntropyLoss()
    batches_per_epoch = len(batch_index_lists(torch.arange(len(data.train)), cfg.batch_size))
    total = cfg.pretrain_epochs * batches_per_epoch
    bar = None
    if progress and distributed.is_main():
        from rich.progress import Progress

        bar = Progress(console=console)
        bar.start()
        bar_id = bar.add_task(f"pretrain on {data.task.name}", total=total)
    for epoch in range(cfg.pretrain_epochs):
        order = epoch_order(len(data.train), cfg.seed, _PRETRAIN_PHASE, epoch)
        batches = [distributed.shard(b) for b in batch_index_lists(order, cfg.batch_size)]
        for x, y in iterate(data.train, batches, cfg.num_workers):
            train_step(net, opt, sched, criterion, x, y, 0, cfg, device)
            if bar is not None:
                bar.advance(bar_id)
    if bar is not None:
        bar.stop()
    accuracy, _ = evaluate(net, data.test, None, 0, cfg, device)
    info = {
        "task": data.task.name,
        "epochs": cfg.pretrain_epochs,
        "lr": cfg.pretrain_lr,
        "test_accuracy": accuracy,
    }
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    if distributed.is_main():
        storage.save_torch(path, {"backbone": state, "info": info})
    return {**info, "cache": "miss", "path": str(path)}
