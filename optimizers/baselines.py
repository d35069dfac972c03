"""Dense baselines from torch, given `state_bytes()` and registered.

The group flag ``sparse`` is carried along and ignored: dense optimizers update every entry.
"""

from __future__ import annotations

import torch

from .registry import OptimizerSpec, register, tensor_state_bytes


class AdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` (fp32 moments m, v: 8 bytes per parameter)."""

    def state_bytes(self) -> int:
        return tensor_state_bytes(self)


class SGD(torch.optim.SGD):
    """`torch.optim.SGD` (momentum buffer: 4 bytes per parameter when momentum > 0)."""

    def state_bytes(self) -> int:
        return tensor_state_bytes(self)


register(
    OptimizerSpec(
        name="adamw",
        factory=AdamW,
        description="torch AdamW, dense, fp32 moments (the paper's dense baseline)",
        defaults={"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
        lr=1e-4,
        memory="8S (fp32 m, v); 4S with bf16 states",
    )
)
register(
    OptimizerSpec(
        name="sgd",
        factory=SGD,
        description="torch SGD with momentum, dense",
        defaults={"momentum": 0.9, "weight_decay": 0.0, "nesterov": False},
        lr=1e-2,
        memory="4S (momentum buffer); 0 without momentum",
    )
)
