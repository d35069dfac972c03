"""Optimizer-state memory: the paper's closed forms (appendix E) and, per optimizer, the bytes its
`state_bytes()` counts for given parameter groups and hyperparameters.

The paper's formulas are closed forms in S (parameters), k (density) and m (MicroAdam's window).
The per-optimizer formulas follow how each optimizer really is configured: NanoAdam keeps
ceil(k x chunk) entries per chunk plus 24 bytes of index tables per tensor, the sparse optimizers
update their dense group (heads, norms) with fp32 AdamW, MicroAdam adds a bf16 min and max per
quantisation bucket, and so on. Both assume every parameter has a gradient and the optimizer has
taken at least one step. `clbench memory` prints them beside the measured `state_bytes()`;
tests hold them equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._microadam_functional import BlockLayout
from ._selection import chunk_layout, offset_dtype
from .groups import param_groups
from .registry import create, get, state_bytes


@dataclass(frozen=True)
class PaperFormula:
    """One row of the paper's appendix-E table: state bytes per parameter as a function of the
    density k and the window m."""

    label: str
    optimizer: str  # the registry name of the optimizer it describes
    expression: str
    per_param: Callable[[float, int], float]

    def bytes(self, params: float, density: float = 0.01, window: int = 10) -> float:
        return params * self.per_param(density, window)


#: Appendix E. NanoAdam: bf16 m and v for the kS selected entries (4kS) plus their indices, int16
#: (2kS) or int64 (8kS). AdamW: m and v for every entry. MicroAdam: 4-bit error feedback (0.5S)
#: and a window of m sparse gradients with an int16 index and a bf16 value each (4mkS).
PAPER_FORMULAS: tuple[PaperFormula, ...] = (
    PaperFormula("NanoAdam (int16 indices)", "nanoadam", "6kS", lambda k, m: 6 * k),
    PaperFormula("NanoAdam (int64 indices)", "nanoadam", "12kS", lambda k, m: 12 * k),
    PaperFormula("AdamW (fp32 states)", "adamw", "8S", lambda k, m: 8.0),
    PaperFormula("AdamW (bf16 states)", "adamw", "4S", lambda k, m: 4.0),
    PaperFormula("AdamW-8bit", "adamw8bit", "2S", lambda k, m: 2.0),
    PaperFormula("MicroAdam (window m)", "microadam", "0.5S + 4mkS", lambda k, m: 0.5 + 4 * m * k),
)

#: The paper's row for each optimizer it covers, in the configuration ours run (NanoAdam with int16
#: offsets, AdamW with fp32 moments).
PAPER_ROW: dict[str, PaperFormula] = {
    "nanoadam": PAPER_FORMULAS[0],
    "adamw": PAPER_FORMULAS[2],
    "adamw8bit": PAPER_FORMULAS[4],
    "microadam": PAPER_FORMULAS[5],
}


@dataclass(frozen=True)
class StateFormula:
    """State bytes an optimizer holds for given groups, by its formula.

    main_bytes: the bytes of the formula's main term, which covers `params` entries (S: the
        sparse entries for NanoAdam and MicroAdam, the projected matrices' for GaLore, the
        8-bit tensors' for AdamW-8bit, every entry otherwise) in `tensors` tensors.
    other_bytes: the bytes for the `other` entries (dense groups, unprojected or small tensors).
    expression: the formula in words and symbols.
    """

    main_bytes: int
    other_bytes: int
    expression: str
    params: int
    other: int
    tensors: int

    @property
    def bytes(self) -> int:
        """Exactly what the optimizer's `state_bytes()` counts after a step."""
        return self.main_bytes + self.other_bytes


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _split(groups: list[dict], flag: str, default: bool) -> tuple[list, list]:
    """The parameters of the groups whose `flag` is true, and those of the others."""
    main, rest = [], []
    for g in groups:
        (main if g.get(flag, default) else rest).extend(g["params"])
    return main, rest


def _adamw_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """AdamW's m and v (two tensors like the parameter: fp32 for fp32 parameters)."""
    return sum(2 * p.numel() * p.element_size() for p in tensors)


def _formula(
    expression: str,
    main_bytes: int,
    main: Sequence[torch.Tensor],
    other: Sequence[torch.Tensor] = (),
    other_bytes: int | None = None,
) -> StateFormula:
    """A `StateFormula` whose main term covers `main`; `other` costs `other_bytes`, by default
    AdamW's m and v (how the sparse optimizers update their dense group)."""
    return StateFormula(
        main_bytes,
        _adamw_bytes(other) if other_bytes is None else other_bytes,
        expression,
        sum(p.numel() for p in main),
        sum(p.numel() for p in other),
        len(main),
    )


def nanoadam_state(groups: list[dict], hp: dict[str, Any]) -> StateFormula:
    """Per sparse group: (2 x state dtype + offset dtype) bytes per selected entry, ceil(k x chunk)
    entries per chunk, plus three int64 index-table entries per tensor; dense groups fp32 AdamW."""
    total = 0
    for g in groups:
        if not g.get("sparse", True):
            continue
        chunk = g.get("chunk_size", hp["chunk_size"])
        density = g.get("density", hp["density"])
        numels = [p.numel() for p in g["params"]]
        per_entry = 2 * _size(g.get("state_dtype", hp["state_dtype"])) + _size(
            offset_dtype(chunk, numels)
        )
        selected = sum(chunk_layout(n, chunk, density).selected for n in numels)
        total += per_entry * selected + 24 * len(numels)
    sparse, dense = _split(groups, "sparse", True)
    return _formula("6·Σ⌈k·chunk⌉ + 24 B/tensor + 8·S_dense", total, sparse, dense)


def microadam_state(groups: list[dict], hp: dict[str, Any]) -> StateFormula:
    """Per sparse tensor of d entries: ceil(d/2) (4-bit error feedback) + 4 ceil(d/q) (bf16 min,
    max per bucket) + 4 m k_d (window of int16 index + bf16 value); dense groups fp32 AdamW."""
    total = 0
    for g in groups:
        if not g.get("sparse", True):
            continue
        q = g.get("quant_bucket_size", hp["quant_bucket_size"])
        window = g.get("window", hp["window"])
        block, density = g.get("block_size", hp["block_size"]), g.get("density", hp["density"])
        for p in g["params"]:
            d = p.numel()
            k = BlockLayout.build(d, block, density).k
            total += math.ceil(d / 2) + 4 * math.ceil(d / q) + 4 * window * k
    sparse, dense = _split(groups, "sparse", True)
    return _formula("0.5S + 4m·Σk_d + 4S/q + 8·S_dense", total, sparse, dense)


def adamw_state(groups: list[dict], hp: dict[str, Any]) -> StateFormula:
    """fp32 m and v for every entry, and torch's step count: a 4-byte tensor per parameter."""
    params = [p for g in groups for p in g["params"]]
    return _formula("8S + 4 B/tensor", _adamw_bytes(params) + 4 * len(params), params)


def adamw8bit_state(groups: list[dict], hp: dict[str, Any]) -> StateFormula:
    """bitsandbytes: tensors of at least `min_8bit_size` entries 2 d + 8 ceil(d/256) (8-bit m, v
    and an fp32 absmax per block of 256), smaller ones 8 d; plus the two shared 256-entry fp32
    quantisation maps."""
    big, small = [], []
    for g in groups:
        for p in g["params"]:
            (big if p.numel() >= g.get("min_8bit_size", hp["min_8bit_size"]) else small).append(p)
    total = sum(2 * p.numel() + 8 * math.ceil(p.numel() / 256) for p in big)
    return _formula(
        "2S + 8⌈S/256⌉ + 2 KiB (+ 8 B/entry of small tensors)",
        total + (2 * 256 * 4 if big else 0),
        big,
        small,
        sum(8 * p.numel() for p in small),
    )


def galore_state(groups: list[dict], hp: dict[str, Any]) -> StateFormula:
    """Per projected m x n weight: 4 r (2 max(m, n) + min(m, n)) with r = min(rank, m, n) (fp32
    moments of the projected gradient and the projection matrix); every other entry 8 bytes."""
    total = 0
    for g in groups:
        if g.get("galore", False):
            for p in g["params"]:
                r = min(g.get("rank", hp["rank"]), *p.shape)
                total += 4 * r * (2 * max(p.shape) + min(p.shape))
    projected, rest = _split(groups, "galore", False)
    return _formula(
        "4r(2·max(m,n) + min(m,n)) per projected matrix + 8·S_other", total, projected, rest
    )


def sgd_state(groups: list[dict], hp: dict[str, Any]) -> StateFormula:
    """A momentum buffer like the parameter when momentum > 0, nothing otherwise."""
    params = [p for g in groups for p in g["params"]]
    total = sum(
        p.numel() * p.element_size()
        for g in groups
        if g.get("momentum", hp["momentum"]) > 0
        for p in g["params"]
    )
    return _formula("4S (momentum)", total, params)


STATE_FORMULAS: dict[str, Callable[[list[dict], dict[str, Any]], StateFormula]] = {
    "nanoadam": nanoadam_state,
    "microadam": microadam_state,
    "adamw": adamw_state,
    "adamw8bit": adamw8bit_state,
    "galore": galore_state,
    "sgd": sgd_state,
}


def state_formula(name: str, model: nn.Module, **hparams: Any) -> StateFormula | None:
    """The state bytes `create(name, model, **hparams)` will hold after a step, by formula; None
    for an optimizer without one (a third-party registration)."""
    formula = STATE_FORMULAS.get(name)
    if formula is None:
        return None
    spec = get(name)
    return formula((spec.groups or param_groups)(model), {**spec.defaults, **hparams})


def measured_state_bytes(name: str, model: nn.Module, **hparams: Any) -> int:
    """`state_bytes()` of `create(name, model, **hparams)` after one step on the gradients the
    model's parameters hold (the step moves the weights)."""
    opt = create(name, model, **hparams)
    opt.step()
    return state_bytes(opt)


def format_size(value: float) -> str:
    """A size at the precision of the paper's table: two decimals from 1 up, four significant
    digits below, trailing zeros dropped (0.3765, 25.1, 12.55, 5.65)."""
    text = f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"
    if "e" in text or "." not in text:
        return text
    return text.rstrip("0").rstrip(".")
