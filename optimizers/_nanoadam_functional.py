"""The arithmetic of a NanoAdam step, kept apart from the optimizer's bookkeeping.

Four implementations of the same sparse AdamW step over the selected entries of a list of
tensors, and the dense AdamW step for ``sparse=False`` groups:

- `sparse_adamw_reference`: plain per-tensor torch, the readable definition.
- `sparse_adamw_flat`: the same arithmetic on flat buffers holding the selected entries of every
  tensor of a group; a gather and a scatter per tensor and about a dozen operations in all.
- `sparse_adamw_shared`: the same, for parameters that are views of one flat buffer: a gather
  per tensor (the gradients) and a single scatter over the buffer (the parameters).
- `optimizers._nanoadam_triton.sparse_adamw_triton`: one fused kernel launch per group (CUDA).

Moments are stored in any floating dtype (bfloat16 by default); the arithmetic is fp32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ._selection import ChunkLayout, flat_like, flat_view, local_index


@dataclass(frozen=True)
class AdamHyper:
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    bias_step: int  # the t of the bias corrections 1 - beta^t

    @property
    def step_size(self) -> float:
        return self.lr / (1.0 - self.beta1**self.bias_step)

    @property
    def bias_correction2_sqrt(self) -> float:
        return (1.0 - self.beta2**self.bias_step) ** 0.5  # as torch computes it


@dataclass
class FlatLayout:
    """Where the selected entries of each tensor of a group sit in the group's flat buffers.

    Tensor i owns the slice `segments[i]` of the flat buffers; inside it, entry j (counted from
    the slice start) lies in chunk j // k_i of the tensor, k_i being the entries kept per full
    chunk. Three int64 tables of one value per tensor hold the same on the parameters' device,
    for the batched paths: 24 bytes per tensor in all.
    """

    layouts: list[ChunkLayout]
    segments: list[tuple[int, int]]
    chunk: int  # length of a full chunk (tensors shorter than this are one chunk)
    n_chunks: int
    seg_start: torch.Tensor
    seg_count: torch.Tensor
    seg_k: torch.Tensor

    @classmethod
    def build(cls, layouts: list[ChunkLayout], device: torch.device) -> FlatLayout:
        segments, start = [], 0
        for lay in layouts:
            segments.append((start, start + lay.selected))
            start += lay.selected

        def as_tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        return cls(
            layouts,
            segments,
            max((lay.chunk for lay in layouts), default=1),
            sum(lay.n_chunks for lay in layouts),
            as_tensor([s for s, _ in segments]),
            as_tensor([lay.selected for lay in layouts]),
            as_tensor([lay.k for lay in layouts]),
        )

    @property
    def selected(self) -> int:
        return self.segments[-1][1] if self.segments else 0

    @property
    def sizes(self) -> list[int]:
        return [lay.selected for lay in self.layouts]

    @functools.cached_property
    def max_selected(self) -> int:
        return max((lay.selected for lay in self.layouts), default=0)

    def nbytes(self) -> int:
        tables = (self.seg_start, self.seg_count, self.seg_k)
        return sum(t.numel() * t.element_size() for t in tables)

    def _per_entry(self, table: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(table, self.seg_count, output_size=self.selected)

    def local_indices(
        self,
        offsets: torch.Tensor,
        dtype: torch.dtype | None = None,
        tensor_bases: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Index of every selected entry inside its own flattened tensor (int32 when every
        tensor is shorter than 2**31 entries, else int64; or `dtype`); with `tensor_bases`
        (int64, one per tensor), inside a flat buffer where tensor i starts at `tensor_bases[i]`.

        Chunk j of a tensor keeps k entries (its last chunk possibly fewer). The per-chunk start
        indices are rebuilt from the per-tensor tables with a few tiny operations, then spread
        over the entries as a cumulative sum of their jumps (cheaper than repeat_interleave)."""
        if dtype is None:
            dtype = self._local_dtype()
        chunk_start, chunk_base, tensor_of_chunk = self._chunks(offsets.device)
        if tensor_bases is not None:
            chunk_base = chunk_base + tensor_bases[tensor_of_chunk]
        return self._spread(offsets, chunk_start, chunk_base, dtype)

    def local_and_global_indices(
        self, offsets: torch.Tensor, tensor_bases: torch.Tensor, global_dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`local_indices(offsets)` and `local_indices(offsets, global_dtype, tensor_bases)`,
        sharing the per-chunk tables."""
        chunk_start, chunk_base, tensor_of_chunk = self._chunks(offsets.device)
        local = self._spread(offsets, chunk_start, chunk_base, self._local_dtype())
        chunk_base = chunk_base + tensor_bases[tensor_of_chunk]
        return local, self._spread(offsets, chunk_start, chunk_base, global_dtype)

    def _local_dtype(self) -> torch.dtype:
        return torch.int32 if self.chunk * self.n_chunks < 2**31 else torch.int64

    def _chunks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per chunk: its first entry in the flat buffers, its first index inside its tensor,
        and its tensor."""
        n_chunks = (self.seg_count + self.seg_k - 1).div_(self.seg_k, rounding_mode="floor")
        last_count = self.seg_count - (n_chunks - 1) * self.seg_k
        first = torch.cumsum(n_chunks, 0).sub_(n_chunks)
        total = self.n_chunks
        tensor_of_chunk = torch.repeat_interleave(
            torch.arange(len(self.layouts), device=device), n_chunks, output_size=total
        )
        chunk_base = torch.arange(total, dtype=torch.int64, device=device)
        chunk_base.sub_(first[tensor_of_chunk]).mul_(self.chunk)
        counts = self.seg_k[tensor_of_chunk]
        counts[first + n_chunks - 1] = last_count
        chunk_start = torch.cumsum(counts, 0).sub_(counts)
        return chunk_start, chunk_base, tensor_of_chunk

    def _spread(
        self,
        offsets: torch.Tensor,
        chunk_start: torch.Tensor,
        chunk_base: torch.Tensor,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        jumps = torch.zeros(self.selected, dtype=dtype, device=offsets.device)
        jumps[chunk_start] = torch.diff(chunk_base, prepend=chunk_base.new_zeros(1)).to(dtype)
        return torch.cumsum(jumps, 0, dtype=dtype).add_(offsets)

    def global_indices(self, offsets: torch.Tensor, tensor_bases: torch.Tensor) -> torch.Tensor:
        """int64 index in a virtual concatenation of the group's tensors (`tensor_bases[i]` is
        where tensor i starts); strictly increasing because offsets are sorted inside chunks."""
        index = self.local_indices(offsets, torch.int64)
        return index.add_(self._per_entry(tensor_bases))

    def entry_tensor(self) -> torch.Tensor:
        """The tensor each selected entry belongs to."""
        ids = torch.arange(len(self.layouts), dtype=torch.int64, device=self.seg_count.device)
        return self._per_entry(ids)


def _moments_fp32(
    grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, h: AdamHyper
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """New m and v in fp32 and the step -lr x m_hat / (sqrt(v_hat) + eps), rounded the way
    torch's AdamW rounds it (addcdiv computes value x m / denom)."""
    m = exp_avg.float() if exp_avg.dtype != torch.float32 else exp_avg
    v = exp_avg_sq.float() if exp_avg_sq.dtype != torch.float32 else exp_avg_sq
    m.lerp_(grad, 1.0 - h.beta1)
    v.mul_(h.beta2).addcmul_(grad, grad, value=1.0 - h.beta2)
    denom = v.sqrt().div_(h.bias_correction2_sqrt).add_(h.eps)
    delta = m.mul(-h.step_size).div_(denom)
    return m, v, delta


def _store(state: torch.Tensor, value: torch.Tensor) -> None:
    if value is not state:
        state.copy_(value)


def sparse_adamw_reference(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    offsets: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    layouts: list[ChunkLayout],
    h: AdamHyper,
) -> None:
    """Per tensor: gather the gradient at the selected entries, update m and v there, and move
    exactly those entries of the parameter (decoupled weight decay included)."""
    for p, g, off, m_state, v_state, lay in zip(
        params, grads, offsets, exp_avgs, exp_avg_sqs, layouts, strict=True
    ):
        idx = local_index(off, lay)
        flat = flat_view(p)
        g_sel = flat_like(g, p).index_select(0, idx).float()
        m, v, delta = _moments_fp32(g_sel, m_state, v_state, h)
        if h.weight_decay:
            p_sel = flat.index_select(0, idx).float().mul_(1.0 - h.lr * h.weight_decay)
            flat.index_copy_(0, idx, p_sel.add_(delta).to(p.dtype))
        else:
            flat.index_add_(0, idx, delta.to(p.dtype))
        _store(m_state, m)
        _store(v_state, v)


def sparse_adamw_flat(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    offsets: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    layout: FlatLayout,
    h: AdamHyper,
) -> None:
    """`sparse_adamw_reference` on a group's flat buffers: same arithmetic, same results.

    The per-tensor work is one index_select and one index_add_ (with weight decay: two
    index_select and one index_copy_); the Adam arithmetic runs once over the selected entries of
    all tensors.
    """
    # index_copy_ (weight decay) takes int64 indices only; the other index ops also take int32.
    index_dtype = torch.int64 if h.weight_decay else None
    idx = layout.local_indices(offsets, index_dtype).split(layout.sizes)
    flat_params = [flat_view(p) for p in params]
    g_sel = torch.empty(layout.selected, dtype=grads[0].dtype, device=offsets.device)
    for p, g, ix, out in zip(params, grads, idx, g_sel.split(layout.sizes), strict=True):
        torch.index_select(flat_like(g, p), 0, ix, out=out)
    m, v, delta = _moments_fp32(g_sel.float(), exp_avg, exp_avg_sq, h)
    if h.weight_decay:
        p_sel = torch.empty(layout.selected, dtype=params[0].dtype, device=offsets.device)
        for flat, ix, out in zip(flat_params, idx, p_sel.split(layout.sizes), strict=True):
            torch.index_select(flat, 0, ix, out=out)
        new = p_sel.float().mul_(1.0 - h.lr * h.weight_decay).add_(delta).to(params[0].dtype)
        for flat, ix, part in zip(flat_params, idx, new.split(layout.sizes), strict=True):
            flat.index_copy_(0, ix, part)
    else:
        delta = delta.to(params[0].dtype)
        for flat, ix, part in zip(flat_params, idx, delta.split(layout.sizes), strict=True):
            flat.index_add_(0, ix, part)
    _store(exp_avg, m)
    _store(exp_avg_sq, v)


def sparse_adamw_shared(
    buffer: torch.Tensor,
    tensor_bases: torch.Tensor,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    offsets: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    layout: FlatLayout,
    h: AdamHyper,
) -> None:
    """`sparse_adamw_flat` for a group whose parameters are views of one flat `buffer`
    (tensor i starts at `tensor_bases[i]`): same arithmetic, same results, but the parameter
    update is one scatter_add_ (with weight decay: one index_select and one index_copy_) over
    the whole buffer. The gradients stay separate tensors: one index_select per tensor."""
    if layout.selected == 0:
        return
    # int64 global indices: index_copy_ (weight decay) takes no other, and with unique indices
    # scatter_add_ (int64 only) measured faster than index_add_ with int32 indices on CPU.
    local, index = layout.local_and_global_indices(offsets, tensor_bases, torch.int64)
    g_sel = torch.empty(layout.selected, dtype=grads[0].dtype, device=offsets.device)
    for p, g, ix, out in zip(
        params, grads, local.split(layout.sizes), g_sel.split(layout.sizes), strict=True
    ):
        torch.index_select(g.view(-1) if g.is_contiguous() else flat_like(g, p), 0, ix, out=out)
    m, v, delta = _moments_fp32(g_sel.float(), exp_avg, exp_avg_sq, h)
    if h.weight_decay:
        p_sel = buffer.index_select(0, index).float().mul_(1.0 - h.lr * h.weight_decay)
        buffer.index_copy_(0, index, p_sel.add_(delta).to(buffer.dtype))
    else:
        # Indices are unique: the same single rounding as index_add_ and the reference path.
        buffer.scatter_add_(0, index, delta.to(buffer.dtype))
    _store(exp_avg, m)
    _store(exp_avg_sq, v)


_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fused_adamw_applies(params: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
    """Whether the dense step takes torch's fused AdamW kernel: one CUDA device and one
    floating dtype it supports, gradients included. (On the CPU the fused kernel rounds
    differently from torch's per-tensor AdamW, which the CPU paths of NanoAdam follow bit for
    bit: its dense groups take the `_foreach` ops there, or the CPU kernels.)"""
    device, dtype = params[0].device, params[0].dtype
    return (
        device.type == "cuda"
        and dtype in _FUSED_DTYPES
        and all(p.device == device and p.dtype == dtype for p in params)
        and all(g.dtype == dtype for g in grads)
    )


def dense_adamw(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    h: AdamHyper,
    fused: bool | None = None,
) -> None:
    """Plain AdamW (torch's arithmetic, fp32 moments) over whole tensors: torch's fused kernel
    when `fused_adamw_applies` (or `fused`, when the caller knows), else the `_foreach` ops of
    torch's per-tensor AdamW."""
    if not params:
        return
    if fused is None:
        fused = fused_adamw_applies(params, grads)
    if fused:
        device = params[0].device
        step = torch.tensor(float(h.bias_step), dtype=torch.float32, device=device)
        torch._fused_adamw_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            [step] * len(params),
            lr=h.lr,
            beta1=h.beta1,
            beta2=h.beta2,
            weight_decay=h.weight_decay,
            eps=h.eps,
            amsgrad=False,
            maximize=False,
        )
        return
    if h.weight_decay:
        torch._foreach_mul_(params, 1.0 - h.lr * h.weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - h.beta1)
    torch._foreach_mul_(exp_avg_sqs, h.beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - h.beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, h.bias_correction2_sqrt)
    torch._foreach_add_(denom, h.eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -h.step_size)


def effective_lr_sum(exp_avg_sq: torch.Tensor, h: AdamHyper) -> torch.Tensor:
    """Sum over entries of lr / (sqrt(v_hat) + eps), the effective learning rate (0-dim)."""
    denom = exp_avg_sq.float().sqrt().div_(h.bias_correction2_sqrt).add_(h.eps)
    return denom.reciprocal_().sum() * h.lr
