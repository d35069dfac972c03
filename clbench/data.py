"""Batches in a deterministic order: the order of every epoch is a pure function of
(seed, phase, task, epoch), so a resumed run sees exactly the batches it would have seen."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, phase, task, epoch, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def epoch_order(n: int, *seed_parts: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(*seed_parts)))


def batch_index_lists(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Consecutive (global) batches of `order`. A trailing partial batch too small to share out
    is dropped: one of a single sample (BatchNorm cannot train on it) or, under torchrun, one
    with fewer samples than processes (each process needs one). Any other partial batch is
    kept."""
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < _smallest_last_batch():
        batches.pop()
    return batches


def steps_per_epoch(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= _smallest_last_batch() or (rest and full == 0) else 0)


def _smallest_last_batch() -> int:
    return max(2, distributed.world_size())


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def iterate(
    dataset: Dataset,
    batches: list[torch.Tensor],
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) for the given index batches. In-memory datasets with ``get_batch(indices)``
    are sliced directly (no per-sample collation); others go through a DataLoader."""
    get_batch = getattr(dataset, "get_batch", None)
    if callable(get_batch):
        for idx in batches:
            yield get_batch(idx)
        return
    loader = DataLoader(
        dataset,
        batch_sampler=[b.tolist() for b in batches],
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init,
        persistent_workers=False,
    )
    for x, y in loader:
        yield x, torch.as_tensor(y)
