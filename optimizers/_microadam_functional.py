"""MicroAdam's arithmetic as pure functions over one flattened tensor.

Layout of a tensor of d entries (as in the paper's implementation): `full` blocks of `block`
entries and, when `block` does not divide d, one shorter remainder block of `rest` entries. Each
full block keeps `k_block` = ceil(density x block) entries, the remainder block
ceil(density x rest); one step selects k = full x k_block + k_rest int16 in-block indices.
The error feedback is quantised over buckets of `bucket` consecutive entries (the last one shorter
when `bucket` does not divide d), with one bf16 minimum and maximum per bucket and 4 bits per entry,
two entries to a byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: In-block indices are int16, so a block holds at most this many entries.
MAX_BLOCK = 32768
LEVELS = 15  # 4 bits: levels 0..15


@dataclass(frozen=True)
class BlockLayout:
    """How one tensor of `d` entries is cut into Top-K blocks (see the module docstring)."""

    d: int
    block: int
    full: int
    k_block: int
    rest: int
    k_rest: int

    @classmethod
    def build(cls, d: int, block_size: int, density: float) -> BlockLayout:
        block = min(d, block_size)
        full, rest = divmod(d, block)
        k_block = min(block, max(1, math.ceil(density * block)))
        k_rest = min(rest, max(1, math.ceil(density * rest))) if rest else 0
        return cls(d, block, full, k_block, rest, k_rest)

    @property
    def k(self) -> int:
        return self.full * self.k_block + self.k_rest

    def block_starts(self, device: torch.device) -> torch.Tensor:
        """Start (in the flat tensor) of the block of each of the k selected slots, int64."""
        starts = torch.arange(self.full, device=device).repeat_interleave(self.k_block) * self.block
        if self.k_rest:
            tail = torch.full((self.k_rest,), self.full * self.block, device=device)
            starts = torch.cat([starts, tail])
        return starts


def block_topk(a: torch.Tensor, lay: BlockLayout) -> torch.Tensor:
    """In-block int16 indices of the largest-|a| entries of every block, block after block."""
    head = a[: lay.full * lay.block].abs().view(lay.full, lay.block)
    parts = [torch.topk(head, lay.k_block, dim=1, sorted=False).indices.reshape(-1)]
    if lay.k_rest:
        tail = a[lay.full * lay.block :].abs()
        parts.append(torch.topk(tail, lay.k_rest, sorted=False).indices)
    return torch.cat(parts).to(torch.int16)


def flat_index(indices: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """int16 in-block indices (any leading shape, last dim k) -> int64 indices into the tensor."""
    return indices.long() + starts


def _buckets(x: torch.Tensor, bucket: int) -> torch.Tensor:
    """`x` as rows of `bucket` entries; a short last row is padded with copies of its last entry,
    which leaves its minimum and maximum unchanged."""
    pad = -x.numel() % bucket
    if pad:
        x = torch.cat([x, x[-1:].expand(pad)])
    return x.view(-1, bucket)


def quantize_4bit(x: torch.Tensor, bucket: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit quantisation per bucket: (packed uint8 of ceil(d/2) bytes, bf16 min,
    bf16 max). Levels are placed between the bf16-rounded min and max (so quantising and
    dequantising use the same numbers) and each entry goes to the nearest level, clamped."""
    rows = _buckets(x.float(), bucket)
    lo = rows.amin(dim=1).to(torch.bfloat16)
    hi = rows.amax(dim=1).to(torch.bfloat16)
    unit = (hi.float() - lo.float()) / LEVELS
    safe = torch.where(unit > 0, unit, torch.ones_like(unit))
    q = ((rows - lo.float()[:, None]) / safe[:, None]).round_().clamp_(0, LEVELS)
    q = q.view(-1)[: x.numel()].to(torch.uint8)
    if q.numel() % 2:
        q = torch.cat([q, q.new_zeros(1)])
    pairs = q.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4), lo, hi


def dequantize_4bit(
    packed: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, d: int, bucket: int
) -> torch.Tensor:
    """fp32 values of `quantize_4bit`'s output: lo + level x (hi - lo) / 15."""
    q = torch.stack([packed & 15, packed >> 4], dim=1).view(-1)[:d].float()
    unit = (hi.float() - lo.float()) / LEVELS
    rows = _buckets(q, bucket)
    return (lo.float()[:, None] + rows * unit[:, None]).view(-1)[:d]


def quantization_step(lo: torch.Tensor, hi: torch.Tensor, d: int, bucket: int) -> torch.Tensor:
    """Per entry, the distance between two quantisation levels of its bucket (fp32, d entries)."""
    unit = (hi.float() - lo.float()) / LEVELS
    return unit.repeat_interleave(bucket)[:d]


def age_weights(beta: float, newest: int, window: int, device: torch.device) -> torch.Tensor:
    """(1 - beta) beta^age for every ring slot; the slot written last has age 0."""
    ages = (newest - torch.arange(window, device=device)) % window
    return (1.0 - beta) * torch.pow(torch.full((window,), beta, device=device), ages)


def window_moments(
    indices: torch.Tensor,
    values: torch.Tensor,
    starts: torch.Tensor,
    newest: int,
    betas: tuple[float, float],
    d: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's m and v (fp32, d entries, no bias correction) rebuilt from the ring buffer:
    m = sum_i (1-b1) b1^age_i g_i, v = sum_i (1-b2) b2^age_i g_i^2 over its sparse gradients.
    Slots not yet written hold zeros and add nothing."""
    window = indices.shape[0]
    where = flat_index(indices, starts).view(-1)
    g = values.float()
    w1 = age_weights(betas[0], newest, window, g.device)[:, None]
    w2 = age_weights(betas[1], newest, window, g.device)[:, None]
    m = torch.zeros(d, device=g.device).index_add_(0, where, (w1 * g).view(-1))
    v = torch.zeros(d, device=g.device).index_add_(0, where, (w2 * g * g).view(-1))
    return m, v
