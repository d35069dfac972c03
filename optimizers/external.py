"""Baselines from optional packages: AdamW-8bit (bitsandbytes) and GaLore (galore-torch).

Both packages are optional extras (`pip install -e ".[bnb]"`, `pip install -e ".[galore]"`, or
the packages themselves); they are imported when the optimizer is built, and a missing one is an
`OptimizerError` naming the install command. See docs/baselines.md for the memory formulas and
the choices made here.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .groups import param_groups
from .registry import OptimizerError, OptimizerSpec, register

#: bitsandbytes warns at import when an optional 4-bit CPU kernel cannot be fetched; that kernel
#: is unrelated to the optimizers, so the warning is muted.
_QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def _require(module: str, package: str, extra: str, optimizer: str) -> Any:
    """Import an optional package or raise the one-line install hint."""
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    try:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        return importlib.import_module(module)
    except ImportError:
        raise OptimizerError(
            f"optimizer {optimizer!r} needs {package}, which is not installed: "
            f"pip install {package} (the project's {extra!r} extra)"
        ) from None
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def distinct_tensor_bytes(optimizer: torch.optim.Optimizer, extra: Iterable[Any] = ()) -> int:
    """Bytes of the tensors in ``optimizer.state`` (and `extra`), each storage counted once:
    bitsandbytes shares its quantisation maps between parameters."""
    seen: set[tuple[torch.device, int]] = set()
    total = 0
    values = [v for state in optimizer.state.values() for v in state.values()]
    for value in [*values, *extra]:
        if torch.is_tensor(value):
            key = (value.device, value.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += value.untyped_storage().nbytes()
    return total


# -- AdamW-8bit ----------------------------------------------------------------------------------
def adamw8bit(params: Iterable[Any], **hparams: Any) -> torch.optim.Optimizer:
    """bitsandbytes' `AdamW8bit` (block-wise 8-bit m and v) with a `state_bytes()`."""
    return _adamw8bit_class()(params, **hparams)


@functools.cache
def _adamw8bit_class() -> type[torch.optim.Optimizer]:
    bnb = _require("bitsandbytes", "bitsandbytes", "bnb", "adamw8bit")

    class AdamW8bit(bnb.optim.AdamW8bit):
        """bitsandbytes' AdamW8bit: m and v in 8 bits with one fp32 absmax per block of 256
        entries for tensors of at least `min_8bit_size` entries, fp32 m and v below that."""

        def state_bytes(self) -> int:
            return distinct_tensor_bytes(self)

    return AdamW8bit


def _is_slice(t: torch.Tensor) -> bool:
    return t.untyped_storage().nbytes() > t.numel() * t.element_size()


# -- GaLore --------------------------------------------------------------------------------------
def galore_groups(model: nn.Module) -> list[dict]:
    """`param_groups(model)` with the weights of the `nn.Linear` layers outside the dense group
    (heads, norms) split off and marked ``galore=True``: in a transformer these are exactly the
    attention (qkv, proj) and MLP (fc1, fc2) matrices. Convolutions stay plain AdamW."""
    linear = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.weight.requires_grad and m.weight.dim() == 2
    }
    groups = []
    for group in param_groups(model):
        if group.get("sparse", True):
            projected = [p for p in group["params"] if id(p) in linear]
            rest = [p for p in group["params"] if id(p) not in linear]
            if projected:
                groups.append({**group, "params": projected, "galore": True})
            if rest:
                groups.append({**group, "params": rest})
        else:
            groups.append(group)
    return groups


def _with_ranks(
    params: Iterable[Any], rank: int, update_proj_gap: int, scale: float, proj_type: str
) -> list[dict]:
    """galore-torch's groups: each ``galore=True`` group split by the rank its matrices get,
    min(rank, rows, columns). A bare list of tensors projects every 2-D one."""
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [
            {"params": [p for p in params if p.dim() == 2], "galore": True},
            {"params": [p for p in params if p.dim() != 2]},
        ]
    out = []
    for group in params:
        if not group.get("galore"):
            out.append(group)
            continue
        by_rank: dict[int, list[torch.Tensor]] = {}
        for p in group["params"]:
            if p.dim() != 2:
                raise OptimizerError(
                    f"galore projects 2-D weights only, got shape {tuple(p.shape)}"
                )
            by_rank.setdefault(min(rank, *p.shape), []).append(p)
        for r, tensors in sorted(by_rank.items()):
            out.append(
                {
                    **group,
                    "params": tensors,
                    "rank": r,
                    "update_proj_gap": update_proj_gap,
                    "scale": scale,
                    "proj_type": proj_type,
                }
            )
    return [g for g in out if g["params"]]


def galore(
    params: Iterable[Any],
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    rank: int = 256,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    proj_type: str = "std",
) -> torch.optim.Optimizer:
    """galore-torch's `GaLoreAdamW`: Adam on the gradients of the ``galore=True`` matrices
    projected onto their top-`rank` singular subspace (recomputed every `update_proj_gap`
    steps), updates projected back and multiplied by `scale`; plain AdamW on everything else."""
    if not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"rank must be an integer >= 1, got {rank}")
    if not (isinstance(update_proj_gap, int) and update_proj_gap >= 1):
        raise ValueError(f"update_proj_gap must be an integer >= 1, got {update_proj_gap}")
    groups = _with_ranks(params, rank, update_proj_gap, scale, proj_type)
    return _galore_class()(
        groups,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        weight_decay=weight_decay,
        no_deprecation_warning=True,
    )


@functools.cache
def _galore_class() -> type[torch.optim.Optimizer]:
    galore_torch = _require("galore_torch", "galore-torch", "galore", "galore")
    from galore_torch.galore_projector import GaLoreProjector

    class GaLoreAdamW(galore_torch.GaLoreAdamW):
        """galore-torch's GaLoreAdamW with `state_bytes()` and a state_dict of plain values
        (its projector objects become dicts, so `torch.load(weights_only=True)` reads it)."""

        @torch.no_grad()
        def step(self, closure=None):  # noqa: ANN001 (torch's signature)
            """galore-torch's step; then a projection matrix that is a slice of the full SVD
            factor is copied out, so the factor (min(m, n) columns) is not kept alive."""
            loss = super().step(closure)
            for state in self.state.values():
                proj = state.get("projector")
                if proj is None or proj.ortho_matrix is None:
                    continue
                ortho = proj.ortho_matrix
                parts = ortho if isinstance(ortho, list) else [ortho]
                if any(_is_slice(t) for t in parts):
                    copies = [t.clone() for t in parts]
                    proj.ortho_matrix = copies if isinstance(ortho, list) else copies[0]
            return loss

        def state_bytes(self) -> int:
            matrices = []
            for state in self.state.values():
                proj = state.get("projector")
                if proj is not None and proj.ortho_matrix is not None:
                    ortho = proj.ortho_matrix
                    matrices += ortho if isinstance(ortho, list) else [ortho]
            return distinct_tensor_bytes(self, matrices)

        def state_dict(self) -> dict[str, Any]:
            """Each projector is kept as its matrix alone; rank, gap, scale and projection
            type are its group's (torch's loader would mangle a string inside the state)."""
            sd = super().state_dict()
            for key, state in sd["state"].items():
                proj = state.get("projector")
                if isinstance(proj, GaLoreProjector):
                    sd["state"][key] = {**state, "projector": {"ortho_matrix": proj.ortho_matrix}}
            return sd

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)
            for group in self.param_groups:
                for p in group["params"]:
                    saved = self.state.get(p, {}).get("projector")
                    if isinstance(saved, dict):
                        proj = GaLoreProjector(
                            group["rank"],
                            update_proj_gap=group["update_proj_gap"],
                            scale=group["scale"],
                            proj_type=group["proj_type"],
                        )
                        proj.ortho_matrix = saved["ortho_matrix"]
                        self.state[p]["projector"] = proj

    return GaLoreAdamW


register(
    OptimizerSpec(
        name="adamw8bit",
        factory=adamw8bit,
        description="bitsandbytes AdamW8bit: block-wise 8-bit m, v (extra: bnb)",
        defaults={"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "min_8bit_size": 4096},
        lr=1e-4,
        memory="2S + 8S/256 (8-bit m, v, fp32 absmax per 256); 8 B/entry below min_8bit_size",
    )
)
register(
    OptimizerSpec(
        name="galore",
        factory=galore,
        description="GaLoreAdamW: low-rank Adam on attention/MLP weights (extra: galore)",
        defaults={
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "rank": 256,
            "update_proj_gap": 200,
            "scale": 1.0,
            "proj_type": "std",
        },
        lr=1e-4,
        memory="4r(2max(m,n)+min(m,n)) per projected m x n weight (r clamped) + 8 B/other entry",
        groups=galore_groups,
    )
)
