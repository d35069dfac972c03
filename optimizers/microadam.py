"""MicroAdam (Modoranu et al., NeurIPS 2024): Adam over a window of sparse gradients with
4-bit error feedback.

Per parameter tensor and step: a = gradient + dequantised error feedback; in every block of the
flattened tensor, the Top-K entries of |a| go into a ring buffer of the last `window` sparse
gradients (int16 in-block indices, bf16 values); the rest of a, quantised to 4 bits per entry
with a bf16 min/max per bucket, is the new error feedback. Adam's m and v are rebuilt at every
step from the ring buffer, each gradient weighted by its age, and the parameter moves by
lr x m_hat / (sqrt(v_hat) + eps) after decoupled weight decay. Groups marked ``sparse=False``
(heads, normalisation layers: see `param_groups`) get plain AdamW. See docs/baselines.md for the
choices the paper leaves open.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ._microadam_functional import (
    MAX_BLOCK,
    BlockLayout,
    block_topk,
    dequantize_4bit,
    flat_index,
    quantize_4bit,
    window_moments,
)
from .registry import OptimizerSpec, register

#: dtype of each per-parameter state entry; `load_state_dict` restores them (torch would cast
#: floating-point state to the parameter's dtype).
_STATE_DTYPES = {
    "indices": torch.int16,
    "values": torch.bfloat16,
    "ef": torch.uint8,
    "ef_min": torch.bfloat16,
    "ef_max": torch.bfloat16,
}


class MicroAdam(torch.optim.Optimizer):
    """MicroAdam on ``sparse`` groups, AdamW on ``sparse=False`` groups.

    Per tensor of d entries: blocks of `block_size` entries (a tensor smaller than a block is one
    block; a shorter last block keeps its own ceil(density x length)), k = ceil(density x block)
    entries per block. Bias corrections use t = the steps this parameter has taken (as in
    Adam), also once t exceeds the window. Weight decay multiplies every entry by
    (1 - lr x weight_decay) before the update.

    Memory (`state_bytes()`), per sparse tensor of d entries with k selected per step:
    ceil(d/2) (4-bit error feedback) + 4 ceil(d/q) (bf16 min and max per bucket of
    q = `quant_bucket_size`) + 4 window k (int16 index and bf16 value per kept entry);
    i.e. 0.5 S + 4 m k S + 4 S / q for density k, window m over S sparse entries. Dense groups:
    8 bytes per entry (fp32 m, v).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        density: float = 0.01,
        window: int = 10,
        block_size: int = MAX_BLOCK,
        quant_bucket_size: int = 64,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            density=density,
            window=window,
            block_size=block_size,
            quant_bucket_size=quant_bucket_size,
            sparse=True,
        )
        # Sums over the last step, kept as tensors until `log_stats` (no device sync per step):
        # effective LR and entry count, per kind of group (True: sparse).
        self._elr_sum: dict[bool, Any] = {True: 0.0, False: 0.0}
        self._elr_count: dict[bool, Any] = {True: 0, False: 0}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _validate(self.param_groups[-1])

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._elr_sum = {True: 0.0, False: 0.0}
        self._elr_count = {True: 0, False: 0}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MicroAdam does not support sparse gradients")
                if group["sparse"]:
                    self._micro_step(p, group)
                else:
                    self._adamw_step(p, group)
        return loss

    def _layout(self, p: torch.Tensor, group: dict[str, Any]) -> BlockLayout:
        return BlockLayout.build(p.numel(), group["block_size"], group["density"])

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        lay = self._layout(p, group)
        buckets = -(-lay.d // group["quant_bucket_size"])
        window, dev = group["window"], p.device
        state = self.state[p]
        state["step"] = 0
        state["slot"] = 0  # ring position the next sparse gradient goes to
        state["indices"] = torch.zeros(window, lay.k, dtype=torch.int16, device=dev)
        state["values"] = torch.zeros(window, lay.k, dtype=torch.bfloat16, device=dev)
        state["ef"] = torch.zeros(-(-lay.d // 2), dtype=torch.uint8, device=dev)
        state["ef_min"] = torch.zeros(buckets, dtype=torch.bfloat16, device=dev)
        state["ef_max"] = torch.zeros(buckets, dtype=torch.bfloat16, device=dev)
        return state

    def _micro_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p] or self._init_state(p, group)
        lay = self._layout(p, group)
        if state["indices"].shape != (group["window"], lay.k):
            raise RuntimeError(
                "MicroAdam: density, window or block_size changed after the first step"
            )
        bucket = group["quant_bucket_size"]
        beta1, beta2 = group["betas"]
        lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]

        # a = g + Q^-1(e); Top-K per block into the ring; e <- Q(a with the selected entries zeroed)
        a = p.grad.reshape(-1).float() + dequantize_4bit(
            state["ef"], state["ef_min"], state["ef_max"], lay.d, bucket
        )
        starts = lay.block_starts(p.device)
        local = block_topk(a, lay)
        where = flat_index(local, starts)
        slot = state["slot"]
        state["indices"][slot] = local
        state["values"][slot] = a[where].to(torch.bfloat16)
        a[where] = 0.0
        state["ef"], state["ef_min"], state["ef_max"] = quantize_4bit(a, bucket)
        state["slot"] = (slot + 1) % group["window"]
        state["step"] += 1

        m, v = window_moments(
            state["indices"], state["values"], starts, slot, (beta1, beta2), lay.d
        )
        t = state["step"]
        m.div_(1.0 - beta1**t)
        v.div_(1.0 - beta2**t)
        denom = v.sqrt_().add_(eps)
        if wd:
            p.mul_(1.0 - lr * wd)
        p.add_((m / denom).view_as(p).to(p.dtype), alpha=-lr)
        touched = denom > eps  # the entries some stored gradient covers: those that move
        self._elr_sum[True] += torch.where(touched, lr / denom, 0.0).sum()
        self._elr_count[True] += touched.sum()

    def _adamw_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        """torch's AdamW arithmetic, fp32 moments."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
        state["step"] += 1
        t = state["step"]
        g, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
        if wd:
            p.mul_(1.0 - lr * wd)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v.sqrt() / math.sqrt(1.0 - beta2**t)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1.0 - beta1**t))
        self._elr_sum[False] += (lr / denom).sum()
        self._elr_count[False] += denom.numel()

    # -- reporting -------------------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of all state tensors: per sparse tensor ceil(d/2) + 4 ceil(d/q) + 4 window k,
        per dense-group entry 8 (see the class docstring)."""
        return sum(
            v.numel() * v.element_size()
            for state in self.state.values()
            for v in state.values()
            if torch.is_tensor(v)
        )

    def log_stats(self) -> dict[str, float]:
        """Scalars of the last step: the density of the first sparse group, the fraction of
        sparse entries the window touches ("touched_frac": v > 0, i.e. moved this step), and the
        mean effective learning rate lr / (sqrt(v_hat) + eps) over the entries that moved
        ("elr": sparse groups; "elr_dense": dense groups)."""
        density = next((g["density"] for g in self.param_groups if g["sparse"]), 1.0)
        entries = sum(p.numel() for g in self.param_groups if g["sparse"] for p in g["params"])

        def mean(sparse: bool) -> float:
            n = int(self._elr_count[sparse])
            return float(self._elr_sum[sparse]) / n if n else float("nan")

        touched = int(self._elr_count[True])
        return {
            "density": float(density),
            "touched_frac": touched / entries if entries else float("nan"),
            "elr": mean(True),
            "elr_dense": mean(False),
        }

    # -- checkpoints -----------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, then the state tensors put back in their own dtypes (torch casts
        floating-point state to the parameter's dtype: bf16 values would become fp32)."""
        saved = state_dict["state"]
        params = {
            index: p
            for group, saved_group in zip(
                self.param_groups, state_dict["param_groups"], strict=True
            )
            for index, p in zip(saved_group["params"], group["params"], strict=True)
        }
        super().load_state_dict(state_dict)
        for index, values in saved.items():
            p = params[index]
            for key, dtype in _STATE_DTYPES.items():
                if key in values:
                    self.state[p][key] = values[key].to(device=p.device, dtype=dtype)


def _validate(group: dict[str, Any]) -> None:
    beta1, beta2 = group["betas"]
    checks = [
        (group["lr"] >= 0, f"lr must be >= 0, got {group['lr']}"),
        (0 <= beta1 < 1 and 0 <= beta2 < 1, f"betas must be in [0, 1), got {group['betas']}"),
        (group["eps"] >= 0, f"eps must be >= 0, got {group['eps']}"),
        (group["weight_decay"] >= 0, f"weight_decay must be >= 0, got {group['weight_decay']}"),
        (0 < group["density"] <= 1, f"density must be in (0, 1], got {group['density']}"),
        (
            isinstance(group["window"], int) and group["window"] >= 1,
            f"window must be an integer >= 1, got {group['window']}",
        ),
        (
            isinstance(group["block_size"], int) and 1 <= group["block_size"] <= MAX_BLOCK,
            f"block_size must be an integer in [1, {MAX_BLOCK}] (int16 indices), "
            f"got {group['block_size']}",
        ),
        (
            isinstance(group["quant_bucket_size"], int) and group["quant_bucket_size"] >= 1,
            f"quant_bucket_size must be an integer >= 1, got {group['quant_bucket_size']}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


register(
    OptimizerSpec(
        name="microadam",
        factory=MicroAdam,
        description="MicroAdam: Adam over a window of Top-K sparse gradients, 4-bit error feedback",
        defaults={
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "density": 0.01,
            "window": 10,
            "block_size": MAX_BLOCK,
            "quant_bucket_size": 64,
        },
        lr=1e-4,
        memory="0.5S + 4mkS + 4S/q on sparse groups (4-bit EF, window m of int16 + bf16, bf16 "
        "min/max per q-entry bucket); 8 B/entry of dense groups",
        sparse=True,
    )
)
