"""Dense baselines from torch, given `state_bytes()` and registered.

The group flag ``sparse`` is carried along and ignored: dense optimizers update every entry.
"""

from __future__ import annotations

import torch

from ._nanoadam_functional import AdamHyper, effective_lr_sum
from .registry import OptimizerSpec, register, tensor_state_bytes


class AdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` (fp32 moments m, v: 8 bytes per parameter)."""

    def state_bytes(self) -> int:
        return tensor_state_bytes(self)

    @torch.no_grad()
    def log_stats(self) -> dict[str, float]:
        """The mean effective learning rate lr / (sqrt(v_hat) + eps) over every entry (paper
        appendix G.5), split as NanoAdam reports it: "elr" over the ``sparse`` groups (or groups
        without the flag), "elr_dense" over ``sparse=False`` groups. One pass over v; meant for
        logging every few steps, not every step."""
        sums = {"elr": torch.zeros(()), "elr_dense": torch.zeros(())}
        counts = {"elr": 0, "elr_dense": 0}
        for group in self.param_groups:
            key = "elr" if group.get("sparse", True) else "elr_dense"
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state.get(p, {})
                if "exp_avg_sq" not in state:
                    continue
                h = AdamHyper(
                    group["lr"],
                    beta1,
                    beta2,
                    group["eps"],
                    group["weight_decay"],
                    int(state["step"]),
                )
                sums[key] = sums[key] + effective_lr_sum(state["exp_avg_sq"], h).cpu()
                counts[key] += p.numel()
        return {k: float(sums[k]) / counts[k] if counts[k] else float("nan") for k in sums}


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
