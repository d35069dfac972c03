"""Models: short names for timm models, pretrained weights (online or cached), and the multi-head
network a continual run trains.

Offline without cached weights the error names every fix; nothing here ever waits on a network
that is not there.
"""

from __future__ import annotations

import difflib
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from tasks import InputSpec

from .errors import UserError


@dataclass(frozen=True)
class ModelInfo:
    short: str
    timm_name: str
    description: str
    kwargs: tuple[tuple[str, object], ...] = ()  # extra timm.create_model arguments


MODELS: dict[str, ModelInfo] = {
    m.short: m
    for m in (
        ModelInfo("vit-large", "vit_large_patch16_224", "ViT-L/16, 304M params (paper)"),
        ModelInfo("vit-base", "vit_base_patch16_224", "ViT-B/16, 86M params"),
        ModelInfo("vit-small", "vit_small_patch16_224", "ViT-S/16, 22M params"),
        ModelInfo("vit-tiny", "vit_tiny_patch16_224", "ViT-Ti/16, 5.7M params"),
        ModelInfo(
            "vit-micro",
            "test_vit",
            "timm's 6-block test ViT, width 64, mean-pooled, 0.26M params (offline demo)",
            (("global_pool", "avg"),),
        ),
        ModelInfo("resnet101", "resnet101", "ResNet-101, 44.5M params (paper)"),
        ModelInfo("resnet50", "resnet50", "ResNet-50, 25.6M params"),
        ModelInfo("resnet18", "resnet18", "ResNet-18, 11.7M params (paper)"),
    )
}


def timm_name(name: str) -> str:
    """The timm model name for a short name or a timm name (with or without a pretrained tag)."""
    if name in MODELS:
        return MODELS[name].timm_name
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, list(MODELS) + timm.list_models(), n=1, cutoff=0.7)
    hint = f" — did you mean {close[0]}?" if close else ""
    raise UserError(
        f"unknown model {name!r}{hint} (a short name from `clbench list models` or any timm name)"
    )


def vit_patch_size(default_patch: int, image_size: int, min_grid: int = 8) -> int:
    """A patch size for a ViT at `image_size`: the default when it leaves at least `min_grid`
    patches per side, else the largest divisor of the image size that does (32 px -> 4)."""
    if image_size // default_patch >= min_grid:
        return default_patch
    candidates = [p for p in range(1, default_patch + 1) if image_size % p == 0]
    fitting = [p for p in candidates if image_size // p >= min_grid]
    return max(fitting) if fitting else 1


def _default_patch(name: str) -> int | None:
    """The model's own patch size, or None for models without a patch embedding (CNNs)."""
    with torch.device("meta"):  # no memory, no init cost, even for ViT-L
        probe = timm.create_model(name, pretrained=False, num_classes=0)
    patch_embed = getattr(probe, "patch_embed", None)
    return int(patch_embed.patch_size[0]) if patch_embed is not None else None


def online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_weights(name: str) -> str | None:
    """Local path of timm's pretrained weights for `name` in the Hugging Face cache, if any."""
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
        if filename:
            path = try_to_load_from_cache(hub_id, filename)
            if isinstance(path, str):
                return path
    return None


def fetch_weights(name: str) -> str:
    """Download `name`'s pretrained weights into the cache (for `clbench fetch`)."""
    tname = timm_name(name)
    if not online():
        raise UserError(f"no internet: run `clbench fetch --model {name}` on a machine with one")
    timm.create_model(tname, pretrained=True, num_classes=0)
    return cached_weights(tname) or "timm cache"


def _load_weights_file(backbone: nn.Module, path: Path) -> None:
    """Load a local state dict (a timm checkpoint of the same architecture) into the backbone.
    Head weights are dropped; ViT position and patch embeddings are resampled by timm's own
    checkpoint filter when the image or patch size differs."""
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} not found: pass an existing --weights PATH")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise UserError(
            f"cannot read weights file {str(path)!r} ({exc.__class__.__name__})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    filter_fn = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, backbone)
    result = backbone.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise UserError(
            f"weights file {str(path)!r} does not fit this model: "
            f"{len(result.missing_keys)} tensors missing (e.g. {result.missing_keys[0]}); "
            "pass weights of the same architecture"
        )


def create_backbone(
    name: str,
    pretrained: bool,
    weights: str | None = None,
    image_size: int | None = None,
    patch_size: int | None = None,
) -> nn.Module:
    """The timm backbone (``num_classes=0``: returns pooled features). For ViTs, `image_size`
    sets the input size and `patch_size` (default: `vit_patch_size`) the patch."""
    tname = timm_name(name)
    kwargs: dict = {"num_classes": 0, **dict(MODELS[name].kwargs if name in MODELS else ())}
    if image_size is not None or patch_size is not None:
        default_patch = _default_patch(tname)
        if default_patch is None and patch_size is not None:
            raise UserError(f"--patch-size is for ViTs; {name} has no patch embedding")
        if default_patch is not None:  # a ViT-style model: set size and a sensible patch
            size = image_size or 224
            patch = patch_size or vit_patch_size(default_patch, size)
            if size % patch:
                raise UserError(f"--patch-size {patch} does not divide --image-size {size}")
            kwargs["img_size"] = size
            kwargs["patch_size"] = patch
    if pretrained and weights is None:
        local = cached_weights(tname)
        if local is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": local}
        elif not online():
            raise UserError(
                f"no pretrained weights for {name} in the cache and no internet: run "
                f"`clbench fetch --model {name}` on a machine with internet (same HF_HOME), "
                "pass --weights PATH, or --no-pretrained"
            )
    backbone = timm.create_model(tname, pretrained=pretrained and weights is None, **kwargs)
    if weights is not None:
        _load_weights_file(backbone, Path(weights))
    return backbone


def input_spec(backbone: nn.Module, image_size: int | None = None) -> InputSpec:
    """Input size and normalisation from timm's data config (`image_size` overrides the size)."""
    cfg = timm.data.resolve_data_config({}, model=backbone)
    size = image_size or int(cfg["input_size"][-1])
    return InputSpec(
        image_size=size,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
    )


class MultiHeadNet(nn.Module):
    """A shared backbone with one linear head per task; ``forward(x, task)`` uses head `task`.

    `get_classifier()` returns the heads (timm's protocol), so `optimizers.param_groups` puts
    them in the dense group.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList()
        self.feature_dim = int(backbone.num_features)

    def add_head(self, num_classes: int) -> int:
        device = next(self.backbone.parameters()).device
        self.heads.append(nn.Linear(self.feature_dim, num_classes).to(device))
        return len(self.heads) - 1

    def get_classifier(self) -> nn.ModuleList:
        return self.heads

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[task](self.backbone(x))
