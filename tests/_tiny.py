"""A tiny timm ViT, fixed random batches and a plain training loop, shared by optimizer tests."""

from functools import partial

import timm
import torch
from torch import nn


def tiny_vit(**kwargs) -> nn.Module:
    """timm's test ViT with 5 classes, initialised from seed 0 (kwargs: img_size, patch_size)."""
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, num_classes=5, **kwargs)


def batches(n: int, size: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` fixed batches of `batch` random images (size x size) with labels in 0..4."""
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 5, (batch,), generator=g))
        for _ in range(n)
    ]


def train(model: nn.Module, opt: torch.optim.Optimizer, data) -> None:
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


#: the 32 px variant (patch 8) used by the baseline tests
small_vit = partial(tiny_vit, img_size=32, patch_size=8)
small_batches = partial(batches, size=32, batch=4)
#: batches at the test ViT's native 160 px
native_batches = partial(batches, size=160, batch=2)
