"""How images become model input, in one place, so that every task feeds a model the same way.

Two routes end in the same place (a float tensor ``[3, S, S]`` normalised with the model's mean and
std): PIL images from files go through timm's transform factory, exactly as timm's own training
scripts prepare them; images held in memory as tensors are resized and normalised in batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform

from .base import InputSpec

#: Light augmentation for file-backed tasks: a mild random crop and a horizontal flip. Strong
#: augmentation would change what "forgetting" measures between tasks, so it stays mild.
LIGHT_AUG_SCALE = (0.8, 1.0)
LIGHT_AUG_RATIO = (0.9, 1.1)


def image_transform(
    spec: InputSpec, augment: bool = False
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised ``[3, S, S]`` tensor through timm's transform factory.

    ``crop_pct=1.0`` keeps the whole image: CIFAR's 32 px pictures have no border to spare.
    """
    return create_transform(
        input_size=(3, spec.image_size, spec.image_size),
        is_training=augment,
        scale=LIGHT_AUG_SCALE,
        ratio=LIGHT_AUG_RATIO,
        hflip=0.5,
        color_jitter=0.0,
        interpolation=spec.interpolation,
        mean=spec.mean,
        std=spec.std,
        crop_pct=1.0,
    )


_TENSOR_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


def resize_normalise(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """A batch ``[N, 3, h, w]`` with values in [0, 1] -> ``[N, 3, S, S]`` normalised for the model.

    Interpolations that tensors lack (lanczos, random, ...) fall back to bilinear.
    """
    size = spec.image_size
    out = images.float()
    if out.shape[-2:] != (size, size):
        mode = _TENSOR_MODES.get(spec.interpolation, "bilinear")
        kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        out = F.interpolate(out, size=(size, size), mode=mode, **kwargs).clamp_(0.0, 1.0)
    mean = torch.tensor(spec.mean, dtype=out.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=out.dtype).view(1, 3, 1, 1)
    return (out - mean) / std
