"""Chunked per-tensor selection for NanoAdam: which entries of a parameter tensor are updated.

A flattened tensor of N entries is cut into chunks of `chunk_size` entries (the last one may be
shorter); each chunk keeps ceil(density x its length) entries, at least one. Entries are stored as
offsets inside their chunk, so with chunks of at most 32768 entries an offset fits in int16. The
selected offsets of a tensor are laid out chunk after chunk, sorted inside each chunk, so the local
indices they stand for are strictly increasing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def selection_source(
    criterion: str,
    param: torch.Tensor,
    grad: torch.Tensor | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], bool]:
    """What a criterion scores: a flat tensor (memory order), the function giving the scores of
    a slice of it, and whether the largest scores are kept."""
    flat = flat_view(param)
    if criterion in ("small_weights", "large_weights"):
        return flat, torch.abs, criterion == "large_weights"
    if criterion == "large_grads":
        if grad is None:
            return flat, torch.zeros_like, True
        return flat_like(grad, param), torch.abs, True
    if criterion == "random":

        def uniform(part: torch.Tensor) -> torch.Tensor:
            return torch.rand(part.shape, generator=generator, device=part.device)

        return flat, uniform, True
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


# The cut path: entries sampled per chunk to estimate the cut, and its margins.
_SAMPLE = 1024  # sampled entries per chunk (every chunk/_SAMPLE-th entry)
_MARGIN = 3.0  # the estimated cut keeps about this many times the entries needed
_CAP = 8  # a chunk with more than this many times k candidates (and more than 3 times the
# expected number) falls back to a full top-k
_BLOCK = 1 << 19  # entries scored at once (2 MiB of fp32 scores: stays in cache)


def select_offsets(
    sources: list[torch.Tensor],
    layouts: list[ChunkLayout],
    score: Callable[[torch.Tensor], torch.Tensor],
    largest: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """`chunk_offsets(score(source))` of every tensor of a group, concatenated: the same selection
    (ties aside), computed faster on the CPU when few entries per chunk are kept.

    `sources` are flat tensors and `score` maps a slice of one to the scores of its entries.
    On the CPU, a full top-k over a chunk of 32768 entries to keep 328 of them is a partial sort
    per chunk. Instead, the full chunks of large tensors are scored a block of chunks at a time
    (so the block stays in cache); for each chunk a cut is estimated from a strided sample of
    `_SAMPLE` entries (the sample's `_MARGIN` x k-th smallest, scaled), the entries on the kept
    side of the cut become candidates, and one top-k over the padded candidates of every chunk
    of the group picks the result. It is exact: every entry left out lies beyond the cut, and the
    cut lies beyond the k kept candidates. A chunk whose cut yields fewer than k candidates, or
    far more than expected (ties, a misjudging sample), gets a full top-k of its own. On other
    devices every tensor gets the batched top-k of `chunk_offsets`.
    """
    chunk = max((lay.chunk for lay in layouts), default=0)
    k = next((lay.k for lay in layouts if lay.chunk == chunk), 0)
    use_cut = chunk >= 8 * _SAMPLE and k * 16 <= chunk
    pieces: list[torch.Tensor | int] = []  # offsets, or the number of rows of the padded top-k
    rows, cols, vals, bad = [], [], [], []
    n_rows = 0
    for src, lay in zip(sources, layouts, strict=True):
        if not (use_cut and src.device.type == "cpu" and lay.chunk == chunk):
            pieces.append(chunk_offsets(score(src), lay, largest, dtype))
            continue
        per_block = max(1, _BLOCK // chunk)
        for r0 in range(0, lay.n_full, per_block):
            r1 = min(lay.n_full, r0 + per_block)
            body = score(src[r0 * chunk : r1 * chunk]).view(r1 - r0, chunk)
            sample = body[:, :: chunk // _SAMPLE]
            n_s = sample.shape[1]
            rank = min(n_s, math.ceil(_MARGIN * k * n_s / chunk) + 3)
            cap = max(_CAP * k, 3 * rank * chunk // n_s)
            if largest:
                cut = sample.kthvalue(n_s - rank + 1, dim=1, keepdim=True).values
                mask = body >= cut
            else:
                cut = sample.kthvalue(rank, dim=1, keepdim=True).values
                mask = body <= cut
            pos = _true_positions(mask.view(-1))
            r = pos.div(chunk, rounding_mode="floor")
            counts = torch.bincount(r, minlength=r1 - r0)
            wrong = ((counts < k) | (counts > cap)).nonzero().view(-1)
            if wrong.numel():  # rare: answer these rows with a full top-k now
                top = torch.topk(body[wrong], k, dim=1, largest=largest, sorted=False).indices
                bad.append((wrong + (n_rows + r0), top))
                keep = ~torch.isin(r, wrong)
                pos, r = pos[keep], r[keep]
            rows.append(r + (n_rows + r0))
            cols.append(pos - r * chunk)
            vals.append(body.view(-1).index_select(0, pos))
        n_rows += lay.n_full
        pieces.append(lay.n_full)
        if lay.rest:
            tail = score(src[lay.n_full * chunk :])
            idx = torch.topk(tail, lay.k_rest, largest=largest, sorted=False).indices
            pieces.append(idx.sort().values.to(dtype))
    if not pieces:
        return torch.empty(0, dtype=dtype)
    if n_rows:
        kept = _top_candidates(
            torch.cat(rows), torch.cat(cols), torch.cat(vals), n_rows, k, largest
        )
        for where, top in bad:
            kept[where] = top
        kept = kept.sort(dim=1).values.to(dtype)
    out, row = [], 0
    for piece in pieces:
        if isinstance(piece, int):
            out.append(kept[row : row + piece].view(-1))
            row += piece
        else:
            out.append(piece)
    return torch.cat(out) if len(out) > 1 else out[0]


def _true_positions(mask: torch.Tensor) -> torch.Tensor:
    """`mask.nonzero()` of a sparse 1-D bool mask: the 8-byte words holding a True first, then
    the bytes of those words (a third faster on the CPU when few entries are True)."""
    if mask.numel() % 8:
        return mask.nonzero().view(-1)
    words = mask.view(torch.int64)
    hit = (words != 0).nonzero().view(-1)
    byte = words.index_select(0, hit).view(torch.bool).nonzero().view(-1)
    return hit[byte >> 3].mul_(8).add_(byte & 7)


def _top_candidates(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_rows: int, k: int, largest: bool
) -> torch.Tensor:
    """(n_rows, k) column indices, unsorted: the k best candidates of each row, given row-major
    (row, column, score) candidates with at least k of them in every row."""
    counts = torch.bincount(rows, minlength=n_rows)
    width = max(k, int(counts.max().item()))
    pos = torch.arange(rows.numel(), device=rows.device)
    pos.sub_(torch.cumsum(counts, 0).sub_(counts)[rows])
    fill = float("-inf") if largest else float("inf")
    padded = torch.full((n_rows, width), fill, dtype=vals.dtype, device=vals.device)
    where = torch.zeros((n_rows, width), dtype=torch.int64, device=vals.device)
    flat = pos.add_(rows * width)
    padded.view(-1).index_copy_(0, flat, vals)
    where.view(-1).index_copy_(0, flat, cols)
    top = torch.topk(padded, k, dim=1, largest=largest, sorted=False).indices
    return where.gather(1, top)


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


def memory_order_addresses(
    params: list[torch.Tensor], grads: list[torch.Tensor]
) -> tuple[list[int], list[int], list[torch.Tensor]]:
    """The addresses of the parameters' and the gradients' entries in each parameter's memory
    order (`flat_view`, `flat_like`), and the reordered gradient copies made for that, which
    must outlive the addresses' use. One pass, no view for contiguous tensors."""
    p_ptrs, g_ptrs, keep = [], [], []
    for p, g in zip(params, grads, strict=True):
        if p.is_contiguous() and g.is_contiguous():
            p_ptrs.append(p.data_ptr())
            g_ptrs.append(g.data_ptr())
        else:  # e.g. channels-last: flat_view checks the entries are dense in memory
            flat_g = flat_like(g, p)
            keep.append(flat_g)
            p_ptrs.append(flat_view(p).data_ptr())
            g_ptrs.append(flat_g.data_ptr())
    return p_ptrs, g_ptrs, keep


def flat_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` (a gradient) flattened in the memory order of `ref` (its parameter)."""
    if t.is_contiguous() and ref.is_contiguous():
        return t.view(-1)
    if t.stride() == ref.stride():
        return flat_view(t)
    return flat_view(torch.empty_like(ref, dtype=t.dtype).copy_(t))
