"""Chunked per-tensor selection for NanoAdam: which entries of a parameter tensor are updated.

A flattened tensor of N entries is cut into chunks of `chunk_size` entries (the last one may be
shorter); each chunk keeps ceil(density x its length) entries, at least one. Entries are stored as
offsets inside their chunk, so with chunks of at most 32768 entries an offset fits in int16. The
selected offsets of a tensor are laid out chunk after chunk, sorted inside each chunk, so the local
indices they stand for are strictly increasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CRITERIA = ("small_weights", "large_weights", "random", "large_grads")


@dataclass(frozen=True)
class ChunkLayout:
    """How one tensor of `numel` entries is chunked and how many entries each chunk keeps."""

    numel: int
    chunk: int  # length of a full chunk
    n_full: int  # number of full chunks
    k: int  # entries kept per full chunk
    rest: int  # length of the last, shorter chunk (0: none)
    k_rest: int  # entries kept in that chunk

    @property
    def selected(self) -> int:
        return self.n_full * self.k + self.k_rest

    @property
    def n_chunks(self) -> int:
        return self.n_full + (1 if self.rest else 0)

    def chunk_counts(self) -> list[int]:
        return [self.k] * self.n_full + ([self.k_rest] if self.rest else [])

    def chunk_bases(self) -> list[int]:
        """Local index of the first entry of each chunk."""
        return [i * self.chunk for i in range(self.n_chunks)]


def kept_per_chunk(density: float, length: int) -> int:
    """ceil(density x length), at least 1, at most length (0.1 x 30 gives 3, not 4)."""
    return max(1, min(length, math.ceil(density * length * (1.0 - 1e-12))))


def chunk_layout(numel: int, chunk_size: int | None, density: float) -> ChunkLayout:
    if numel == 0:
        return ChunkLayout(0, 1, 0, 1, 0, 0)
    chunk = numel if chunk_size is None or chunk_size >= numel else chunk_size
    n_full, rest = divmod(numel, chunk)
    k_rest = kept_per_chunk(density, rest) if rest else 0
    return ChunkLayout(numel, chunk, n_full, kept_per_chunk(density, chunk), rest, k_rest)


def offset_dtype(chunk_size: int | None, numels: list[int]) -> torch.dtype:
    """The narrowest integer type that holds an offset inside any chunk of these tensors."""
    longest = max(numels, default=1) if chunk_size is None else min(chunk_size, max(numels or [1]))
    if longest <= 2**15:
        return torch.int16
    return torch.int32 if longest <= 2**31 else torch.int64


def selection_score(
    criterion: str,
    param: torch.Tensor,
    grad: torch.Tensor | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, bool]:
    """Flat score of every entry (memory order) and whether the largest scores are kept."""
    flat = flat_view(param)
    if criterion == "small_weights":
        return flat.abs(), False
    if criterion == "large_weights":
        return flat.abs(), True
    if criterion == "large_grads":
        if grad is None:
            return torch.zeros_like(flat), True
        return flat_like(grad, param).abs(), True
    if criterion == "random":
        return torch.rand(flat.shape, generator=generator, device=flat.device), True
    raise ValueError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")


def chunk_offsets(
    score: torch.Tensor, layout: ChunkLayout, largest: bool, dtype: torch.dtype
) -> torch.Tensor:
    """Offsets of the kept entries of each chunk (bottom-k, or top-k when `largest`), chunk by
    chunk and sorted inside each chunk. All full chunks go through one batched `topk`."""
    parts = []
    if layout.n_full:
        body = score[: layout.n_full * layout.chunk].view(layout.n_full, layout.chunk)
        idx = torch.topk(body, layout.k, dim=1, largest=largest, sorted=False).indices
        parts.append(idx.sort(dim=1).values.view(-1))
    if layout.rest:
        tail = score[layout.n_full * layout.chunk :]
        idx = torch.topk(tail, layout.k_rest, largest=largest, sorted=False).indices
        parts.append(idx.sort().values)
    if not parts:
        return torch.empty(0, dtype=dtype, device=score.device)
    return (torch.cat(parts) if len(parts) > 1 else parts[0]).to(dtype)


def local_index(offsets: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """int64 indices into the flat tensor for one tensor's offsets (the per-tensor reference)."""
    idx = offsets.to(torch.int64, copy=True)
    head = layout.n_full * layout.k
    if layout.n_full:
        bases = torch.arange(layout.n_full, device=idx.device) * layout.chunk
        idx[:head] += bases.repeat_interleave(layout.k)
    if layout.rest:
        idx[head:] += layout.n_full * layout.chunk
    return idx


def flat_view(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of every entry of `t` in memory order (row-major for contiguous tensors, and
    also for channels-last weights), so the optimizer writes into the tensor itself."""
    if t.is_contiguous():
        return t.view(-1)
    dense = sorted(zip(t.stride(), t.shape, strict=True))
    expected = 1
    for stride, size in dense:
        if size != 1 and stride != expected:
            raise ValueError("NanoAdam needs parameters whose entries are dense in memory")
        expected *= size
    return t.as_strided((t.numel(),), (1,))


def flat_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` (a gradient) flattened in the memory order of `ref` (its parameter)."""
    if t.is_contiguous() and ref.is_contiguous():
        return t.view(-1)
    if t.stride() == ref.stride():
        return flat_view(t)
    return flat_view(torch.empty_like(ref, dtype=t.dtype).copy_(t))
