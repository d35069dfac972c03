"""Split a model's parameters into the sparse group and the dense group.

The paper updates the task head(s) and every normalisation layer densely: a freshly initialised head
lacks the small-weight structure sparse selection relies on, and norm layers are tiny. Membership is
decided by module type, never by parameter name, so renamed or third-party models behave the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


def _timm_norm_types() -> tuple[type[nn.Module], ...]:
    """timm's own norm layers that do not subclass a torch norm (RmsNorm and friends)."""
    try:
        from timm import layers
    except ImportError:  # timm is optional for users of `optimizers` alone
        return ()
    names = ("RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d", "FrozenBatchNorm2d")
    return tuple(getattr(layers, n) for n in names if isinstance(getattr(layers, n, None), type))


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES + _timm_norm_types())


def dense_modules(model: nn.Module, dense: Iterable[type | nn.Module] = ()) -> list[nn.Module]:
    """Modules whose parameters are updated densely: norms, the classifier head(s), and `dense`.

    The head is found through timm's protocol, `model.get_classifier()`; clbench's multi-head
    network returns all its task heads there.
    """
    extra = tuple(dense)
    types = tuple(d for d in extra if isinstance(d, type))
    instances = [d for d in extra if isinstance(d, nn.Module)]
    found = [m for m in model.modules() if is_norm(m) or (types and isinstance(m, types))]
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module):
            found.append(head)
    return found + instances


def param_groups(
    model: nn.Module, dense: Iterable[type | nn.Module] = (), **group_options
) -> list[dict]:
    """Two parameter groups: `{"sparse": True}` for everything else, `{"sparse": False}` for heads
    and normalisation layers (see `dense_modules`). Frozen parameters are left out.

    Dense optimizers ignore the flag; sparse ones (NanoAdam, MicroAdam) update the dense group
    with plain AdamW.
    """
    dense_ids = {
        id(p) for m in dense_modules(model, dense) for p in m.parameters() if p.requires_grad
    }
    sparse_params: list[torch.Tensor] = []
    dense_params: list[torch.Tensor] = []
    for p in model.parameters():
        if p.requires_grad:
            (dense_params if id(p) in dense_ids else sparse_params).append(p)
    groups = []
    if sparse_params:
        groups.append({"params": sparse_params, "sparse": True, **group_options})
    if dense_params:
        groups.append({"params": dense_params, "sparse": False, **group_options})
    return groups
