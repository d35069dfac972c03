"""Fused sparse AdamW step for NanoAdam in Triton: one kernel launch per parameter group.

One program per block of selected entries of one tensor: it reads the tensor's parameter and
gradient addresses from a table, turns the int16 offsets into indices, gathers the gradient and
the parameter there, updates m and v (stored in bf16 or fp32, arithmetic in fp32) and writes the
parameter back. The arithmetic follows `_nanoadam_functional.sparse_adamw_flat` op by op.

Imported lazily (Triton is optional); runs on CUDA, and on CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._nanoadam_functional import AdamHyper, FlatLayout
from ._selection import memory_order_addresses

BLOCK = 512

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _sparse_adamw_kernel(
    param_addrs,
    grad_addrs,
    offsets,
    exp_avg,
    exp_avg_sq,
    seg_start,
    seg_count,
    seg_k,
    chunk,
    decay,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    step_size,
    bias_correction2_sqrt,
    PARAM_DTYPE: tl.constexpr,
    GRAD_DTYPE: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    t = tl.program_id(1)
    count = tl.load(seg_count + t)
    j = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    live = j < count
    e = tl.load(seg_start + t) + j
    k = tl.load(seg_k + t)
    p_ptr = tl.load(param_addrs + t).to(tl.pointer_type(PARAM_DTYPE))
    g_ptr = tl.load(grad_addrs + t).to(tl.pointer_type(GRAD_DTYPE))
    idx = (j // k) * chunk + tl.load(offsets + e, mask=live, other=0).to(tl.int64)
    g = tl.load(g_ptr + idx, mask=live, other=0.0).to(tl.float32)
    m = tl.load(exp_avg + e, mask=live, other=0.0).to(tl.float32)
    v = tl.load(exp_avg_sq + e, mask=live, other=0.0).to(tl.float32)
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + (one_minus_beta2 * g) * g
    denom = tl.sqrt(v) / bias_correction2_sqrt + eps
    delta = (-step_size * m) / denom
    p = tl.load(p_ptr + idx, mask=live, other=0.0)
    if HAS_WEIGHT_DECAY:
        p = (p.to(tl.float32) * decay + delta).to(PARAM_DTYPE)
    else:
        # as the torch path: the update rounded to the parameter's dtype, then added in fp32
        # (spelled out: Triton's interpreter adds bf16 values wrongly)
        p = (p.to(tl.float32) + delta.to(PARAM_DTYPE).to(tl.float32)).to(PARAM_DTYPE)
    tl.store(p_ptr + idx, p, mask=live)
    tl.store(exp_avg + e, m.to(exp_avg.dtype.element_ty), mask=live)
    tl.store(exp_avg_sq + e, v.to(exp_avg_sq.dtype.element_ty), mask=live)


def supports(param_dtype: torch.dtype, grad_dtype: torch.dtype) -> bool:
    """Whether the kernel takes parameters and gradients of these dtypes (one of each)."""
    return param_dtype in _TL_DTYPES and grad_dtype in _TL_DTYPES


class Addresses:
    """The kernel's tables of parameter and gradient addresses, kept on the device and uploaded
    again only when an address changed: a group's parameters stay put, and on a GPU the caching
    allocator tends to hand the gradients the same memory at every step. One pass over the
    tensors per step (a few hundred on a ViT-L), without a view or an upload per step."""

    def __init__(self) -> None:
        self._host: tuple[list[int], list[int]] | None = None
        self._device: tuple[torch.Tensor, torch.Tensor] | None = None

    def gather(
        self, params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(parameter addresses, gradient addresses, reordered gradient copies that must live
        until the kernel has run), the entries of each in the parameter's memory order."""
        p_ptrs, g_ptrs, keep = memory_order_addresses(params, grads)
        if self._device is None or self._host != (p_ptrs, g_ptrs):
            device = params[0].device
            self._host = (p_ptrs, g_ptrs)
            self._device = (_addresses(p_ptrs, device), _addresses(g_ptrs, device))
        return (*self._device, keep)


def _addresses(pointers: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(pointers, dtype=torch.int64, device=device)


def sparse_adamw_triton(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    offsets: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    layout: FlatLayout,
    h: AdamHyper,
    addresses: Addresses | None = None,
) -> None:
    """`_nanoadam_functional.sparse_adamw_flat`, fused into one launch. One parameter dtype and
    one gradient dtype (`supports`); `addresses` keeps the address tables between steps."""
    blocks = triton.cdiv(layout.max_selected, BLOCK)
    if blocks == 0:
        return
    param_addrs, grad_addrs, _keep = (addresses or Addresses()).gather(params, grads)
    _sparse_adamw_kernel[(blocks, len(params))](
        param_addrs,
        grad_addrs,
        offsets,
        exp_avg,
        exp_avg_sq,
        layout.seg_start,
        layout.seg_count,
        layout.seg_k,
        layout.chunk,
        1.0 - h.lr * h.weight_decay,
        1.0 - h.beta1,
        h.beta2,
        1.0 - h.beta2,
        h.eps,
        h.step_size,
        h.bias_correction2_sqrt,
        PARAM_DTYPE=_TL_DTYPES[params[0].dtype],
        GRAD_DTYPE=_TL_DTYPES[grads[0].dtype],
        HAS_WEIGHT_DECAY=bool(h.weight_decay),
        BLOCK_SIZE=BLOCK,
    )
