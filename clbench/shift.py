"""Parameter shift: how far, and where, the weights moved from the pretrained ones (theta_0).

Pure functions over state dicts. Fused attention blocks (timm's ``attn.qkv``, 3D x D) are split
into q, k and v so that each can be shown as its own heatmap (the paper's Figure 16).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping

import numpy as np
import torch

Tensors = Mapping[str, torch.Tensor]

_SEPARATE_QKV = re.compile(r"(^|\.)(q|k|v|q_proj|k_proj|v_proj|query|key|value)\.weight$")


def tensor_shift(theta0: torch.Tensor, theta: torch.Tensor) -> dict[str, float]:
    """l1, l2, rel_l2 = l2 / ||theta0||, frac_changed = share of entries that differ at all."""
    a, b = theta0.detach().float(), theta.detach().float()
    delta = b - a
    l2 = float(delta.norm())
    base = float(a.norm())
    return {
        "numel": a.numel(),
        "l1": float(delta.abs().sum()),
        "l2": l2,
        "rel_l2": l2 / base if base > 0 else math.nan,
        "frac_changed": float((theta0 != theta).float().mean()),
    }


def shift_rows(theta0: Tensors, theta: Tensors, after_task: str) -> list[dict]:
    """One shift.csv row per parameter tensor present in both (same shape)."""
    return [
        {"name": name, "after_task": after_task, **tensor_shift(theta0[name], theta[name])}
        for name in theta0
        if name in theta and theta[name].shape == theta0[name].shape
    ]


def total_l2(rows: list[dict], exclude_prefix: str = "heads.") -> float:
    """L2 norm of the whole delta over the rows not starting with `exclude_prefix`."""
    return math.sqrt(sum(r["l2"] ** 2 for r in rows if not r["name"].startswith(exclude_prefix)))


def frac_unchanged(rows: list[dict], exclude_prefix: str = "heads.") -> float:
    """Share of all entries (heads excluded) still bit-identical to theta_0."""
    kept = [r for r in rows if not r["name"].startswith(exclude_prefix)]
    total = sum(r["numel"] for r in kept)
    changed = sum(r["frac_changed"] * r["numel"] for r in kept)
    return 1.0 - changed / total if total else math.nan


def attention_blocks(state: Tensors) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, weight) for every attention projection: fused qkv weights split into ``NAME:q``,
    ``NAME:k``, ``NAME:v``; separate q/k/v projections as they are."""
    for name, value in state.items():
        if value.ndim != 2:
            continue
        if name.endswith("qkv.weight") and value.shape[0] % 3 == 0:
            for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                yield f"{name}:{part}", chunk
        elif _SEPARATE_QKV.search(name):
            yield name, value


def attention_shift_matrices(theta0: Tensors, theta: Tensors) -> dict[str, np.ndarray]:
    """Dense |theta - theta_0| of every attention q/k/v matrix, as float16 (for heatmaps)."""
    before = dict(attention_blocks(theta0))
    return {
        key: (w.detach().float() - before[key].float()).abs().cpu().numpy().astype(np.float16)
        for key, w in attention_blocks(theta)
        if key in before
    }
