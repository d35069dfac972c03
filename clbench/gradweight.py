"""The gradient-weight study (PAPER.md §5, appendix A/B): finetune a model densely with AdamW and,
at an early, a middle and a late step, look at |w| against |grad| of chosen tensors.

When finetuning a pretrained model, the entries with the largest gradients sit at small weights:
the scatter of |w| (x) against |grad| (y) looks like a hyperbola. The paper's number for it is the
ratio r of `hyperbolic_ratio`; the smaller r, the more hyperbolic the picture.

The computation (`hyperbolic_ratio`, `select_tensors`, `default_tensors`) is pure; `run_study`
trains, captures and writes the output folder:

    ratios.csv    one row per tensor (and per whole fused qkv weight) and phase: r and the
                  thresholds behind it, the paper's Table 1 value where the layer matches
    samples.npz   per tensor and phase: a random subsample of (|w|, |grad|) pairs (the same entries
                  at every phase) and all entries of the top set, float32
    config.json   the settings, versions, device, pretraining stage and test accuracy
    gradweight.md and figures/ (written by `reports.gradweight` from the files above)
"""

from __future__ import annotations

import difflib
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import tasks as task_registry

from . import storage
from .config import RunConfig
from .data import batch_index_lists, epoch_order, iterate, seed_everything
from .errors import UserError
from .models import MultiHeadNet, create_backbone, input_spec, timm_name
from .pretrain import pretrain_backbone
from .runner import (
    Bar,
    TrainingDiverged,
    config_record,
    load_task,
    resolve_device,
)
from .shift import attention_blocks
from .training import evaluate, train_step

#: the paper's thresholds: top 0.01% of |grad| against the 80% smallest |grad|
TOP_FRACTION = 1e-4
BOTTOM_FRACTION = 0.8
PHASES = ("early", "middle", "late")
_SEED_PHASE = 5  # derived-seed phase of this study's batch order (the runner uses 1-4)

#: the paper's Table 1 (QKV weight, early finetuning on CIFAR-10): timm model -> {block: r}
PAPER_TABLE1: dict[str, dict[int, float]] = {
    "vit_tiny_patch16_224": {0: 0.2, 3: 0.04, 6: 0.12, 9: 0.07, 11: 0.2},
    "vit_large_patch16_224": {
        0: 0.009,
        3: 0.02,
        6: 0.02,
        9: 0.019,
        11: 0.019,
        17: 0.020,
        23: 0.070,
    },
}

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_FUSED_QKV = re.compile(r"^(.*qkv\.weight):([qkv])$")


@dataclass(frozen=True)
class StudyConfig:
    """What the study adds to a RunConfig (whose tasks[0], lr[0], batch size, model, seed and
    pretraining stage it uses)."""

    steps: int
    capture_steps: tuple[int, int, int]
    tensors: tuple[str, ...] | None = None  # None: `default_tensors`
    weight_decay: float = 0.1
    samples: int = 20_000


# --------------------------------------------------------------------------------------------
# pure computation


def hyperbolic_ratio(
    w_abs: torch.Tensor,
    g_abs: torch.Tensor,
    top_fraction: float = TOP_FRACTION,
    bottom_fraction: float = BOTTOM_FRACTION,
) -> dict[str, float]:
    """The paper's r = median |w| of the top-0.01% largest-|grad| entries / max |w| of the 80%
    smallest-|grad| entries, with the quantities behind it.

    The top set holds ceil(top_fraction * n) entries and at least one (a 64 x 64 matrix has 4096
    entries, 0.01% of which is 0.4: its top set is its single largest gradient); the bottom set
    holds floor(bottom_fraction * n) entries and at least one. Ties in |grad| are broken by
    position (stable sort), so r is deterministic. The median of an even-sized top set is the
    mean of its two middle values. r is NaN when every weight of the bottom set is zero.
    """
    w = w_abs.detach().flatten().double()
    g = g_abs.detach().flatten().double()
    if w.shape != g.shape or w.numel() == 0:
        raise ValueError(f"need two non-empty tensors of one shape, got {w.shape} and {g.shape}")
    n = w.numel()
    top_k = max(1, math.ceil(top_fraction * n))
    bottom_n = max(1, math.floor(bottom_fraction * n))
    order = torch.sort(g, stable=True).indices  # ascending |grad|
    top, bottom = order[n - top_k :], order[:bottom_n]
    median_top = float(torch.quantile(w[top], 0.5))
    max_bottom = float(w[bottom].max())
    return {
        "r": median_top / max_bottom if max_bottom > 0 else math.nan,
        "numel": n,
        "top_k": top_k,
        "median_w_top": median_top,
        "max_w_bottom": max_bottom,
        "min_grad_top": float(g[top].min()),
        "max_grad_bottom": float(g[bottom].max()),
    }


def top_indices(g_abs: torch.Tensor, top_fraction: float = TOP_FRACTION) -> torch.Tensor:
    """Flat indices of the top set of `hyperbolic_ratio` (same size, same tie-breaking)."""
    g = g_abs.detach().flatten().double()
    top_k = max(1, math.ceil(top_fraction * g.numel()))
    return torch.sort(g, stable=True).indices[g.numel() - top_k :]


def select_tensors(
    named: Mapping[str, torch.Tensor], keys: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The tensors called `keys` in `named` (parameter name -> tensor, e.g. weights or grads):
    a parameter name, or ``NAME:q|k|v`` for one third of a fused qkv weight (as in shift.npz).
    Unknown keys are one `UserError` naming close and example keys."""
    parts = dict(attention_blocks({k: v for k, v in named.items() if k.endswith("qkv.weight")}))
    out = {}
    for key in keys:
        if key in parts:
            out[key] = parts[key]
        elif key in named:
            out[key] = named[key]
        else:
            valid = [*parts, *named]
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f" — did you mean {close[0]}?" if close else ""
            examples = ", ".join((list(parts) or list(named))[:3])
            raise UserError(
                f"unknown tensor {key!r}{hint} (a parameter name or NAME:q|k|v for fused qkv "
                f"weights, e.g. {examples})"
            )
    return out


def _spread(items: Sequence, n: int = 5) -> list:
    """`n` items spread evenly from the first to the last (all when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def default_tensors(named: Mapping[str, torch.Tensor], model_name: str = "") -> list[str]:
    """The tensors to study when none are named.

    ViTs (fused ``blocks.N.attn.qkv.weight``): q, k and v of the first block, those at about 1/4,
    1/2 and 3/4 of the depth, and the last (12 blocks: 0, 3, 6, 9, 11); for the paper's ViTs the
    blocks of its Table 1. CNNs: five convolution weights spread over depth. Other models: five
    weight matrices spread over depth.
    """
    qkv = {
        int(m.group(1)): k
        for k in named
        if k.endswith("attn.qkv.weight") and (m := _BLOCK.search(k))
    }
    if qkv:
        depth = max(qkv) + 1
        paper = PAPER_TABLE1.get(model_name, {})
        if paper and max(paper) < depth:
            blocks = sorted(paper)
        else:
            blocks = sorted({i * depth // 4 for i in range(4)} | {depth - 1})
        return [f"{qkv[b]}:{p}" for b in blocks if b in qkv for p in "qkv"]
    convs = [k for k, v in named.items() if v.ndim == 4 and not k.startswith("heads.")]
    if convs:
        return _spread(convs)
    return _spread([k for k, v in named.items() if v.ndim >= 2 and not k.startswith("heads.")])


def layer_of(key: str) -> int | None:
    """The transformer block a tensor belongs to (``blocks.N.``), else None."""
    match = _BLOCK.search(key)
    return int(match.group(1)) if match else None


def ratio_keys(keys: Sequence[str]) -> list[str]:
    """The keys r is computed for: the chosen ones, plus each fused qkv weight whole right after
    its parts (the paper's Table 1 reports the whole QKV weight)."""
    out: list[str] = []
    for key in keys:
        out.append(key)
        match = _FUSED_QKV.match(key)
        if match and match.group(1) not in out and match.group(1) not in keys:
            fused = match.group(1)
            last = max(i for i, k in enumerate(keys) if k.startswith(fused + ":"))
            if keys[last] == key:
                out.append(fused)
    return out


def paper_value(model_name: str, key: str, phase: str) -> float | None:
    """The paper's Table 1 r for this tensor, if the paper reports it (whole qkv, early)."""
    layer = layer_of(key)
    if phase != "early" or layer is None or not key.endswith("attn.qkv.weight"):
        return None
    return PAPER_TABLE1.get(model_name, {}).get(layer)


def subsample_indices(numel: int, k: int, seed: int) -> torch.Tensor:
    """`k` distinct flat indices (all when numel <= k), sorted, from `seed`."""
    if numel <= k:
        return torch.arange(numel)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=gen)[:k].sort().values


# --------------------------------------------------------------------------------------------
# the study


def study_parameters(model: MultiHeadNet) -> dict[str, nn.Parameter]:
    """Every parameter under the names of shift.csv: timm's for the backbone (``backbone.``
    dropped), ``heads.0.weight|bias`` for the task head."""
    return {name.removeprefix("backbone."): p for name, p in model.named_parameters()}


def phase_of(step: int, capture_steps: Sequence[int]) -> str | None:
    for phase, at in zip(PHASES, capture_steps, strict=True):
        if step == at:
            return phase
    return None


def default_out(model: str, task: str) -> str:
    name = f"gradweight-{model}-{task}".replace("/", "_").replace(":", "_")
    return str(Path("runs") / name)


def validate_study(study: StudyConfig) -> None:
    if study.steps < 3:
        raise UserError(f"--steps must be >= 3 (early, middle and late), got {study.steps}")
    at = study.capture_steps
    if len(at) != 3 or not (1 <= at[0] < at[1] < at[2] <= study.steps):
        raise UserError(
            f"--capture-steps must be three increasing steps in 1..{study.steps}, got {list(at)}"
        )
    if study.samples < 1:
        raise UserError(f"--samples must be >= 1, got {study.samples}")
    if study.weight_decay < 0:
        raise UserError(f"--weight-decay must be >= 0, got {study.weight_decay}")


def run_study(
    cfg: RunConfig,
    study: StudyConfig,
    overwrite: bool = False,
    progress: bool = True,
    console: Any = None,
) -> Path:
    """Finetune `cfg.model` on `cfg.tasks[0]` for `study.steps` AdamW steps, capture |w| and
    |grad| of the chosen tensors at the three capture steps, write the output folder."""
    validate_study(study)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    backbone = create_backbone(
        cfg.model, cfg.pretrained, cfg.weights, cfg.image_size, cfg.patch_size
    )
    spec = input_spec(backbone, cfg.image_size)
    model = MultiHeadNet(backbone).to(device)
    # the head is drawn before pretraining, so a cached pretraining stage gives the same head
    model.add_head(task_registry.get(cfg.tasks[0]).num_classes)
    named = study_parameters(model)
    tname = timm_name(cfg.model)
    keys = list(study.tensors) if study.tensors else default_tensors(named, tname)
    select_tensors(named, keys)  # unknown names fail before any data or training
    rd = storage.RunDir(cfg.out)
    storage.fresh_dir(rd.root, overwrite)

    data = load_task(cfg.tasks[0], spec, cfg, _SEED_PHASE, 0)
    pretrain_info = None
    if cfg.pretrain:
        pre = load_task(cfg.pretrain, spec, cfg, _SEED_PHASE, 1)
        pretrain_info = pretrain_backbone(cfg, model.backbone, pre, device, progress, console)
    seed_everything(cfg.seed)
    record = config_record(cfg, device, model, pretrain_info)
    record["study"] = {**asdict(study), "tensors": keys, "ratio": _ratio_doc()}
    storage.write_json(rd.config, record)

    captures = finetune_and_capture(cfg, study, model, data, keys, device, progress, console)
    accuracy, _ = evaluate(model, data.test, data.curve_indices, 0, cfg, device)
    record["test_accuracy_after"] = accuracy
    record["test_samples"] = len(data.curve_indices)
    write_results(rd.root, cfg, study, tname, keys, captures)
    storage.write_json(rd.config, record)

    from reports.gradweight import write_gradweight_report

    write_gradweight_report(rd.root)
    return rd.root


def _ratio_doc() -> str:
    return (
        f"r = median |w| of the top {100 * TOP_FRACTION:g}% largest-|grad| entries (at least "
        f"one) / max |w| of the {100 * BOTTOM_FRACTION:g}% smallest-|grad| entries"
    )


@dataclass
class Capture:
    """|w| and |grad| of every chosen parameter (whole) at one capture step, on the CPU."""

    phase: str
    step: int
    loss: float
    weights: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]


def finetune_and_capture(
    cfg: RunConfig,
    study: StudyConfig,
    model: MultiHeadNet,
    data,
    keys: Sequence[str],
    device: torch.device,
    progress: bool = True,
    console: Any = None,
) -> list[Capture]:
    """Dense AdamW finetuning (every parameter, head included; constant LR; the paper's Table 6
    weight decay and label smoothing by default). At a capture step the weights are copied
    before the update and the gradient of that update is read after it: the pair the paper
    plots (the gradient at those weights)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr[0], weight_decay=study.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    named = study_parameters(model)
    params = sorted({_FUSED_QKV.sub(r"\1", k) for k in keys})  # whole parameters to copy
    bar = Bar(progress, console, f"finetune on {data.task.name}", study.steps, 0)
    captures: list[Capture] = []
    step, epoch = 0, 0
    while step < study.steps:
        order = epoch_order(len(data.train), cfg.seed, _SEED_PHASE, epoch)
        for x, y in iterate(data.train, batch_index_lists(order, cfg.batch_size), cfg.num_workers):
            phase = phase_of(step + 1, study.capture_steps)
            before = {k: named[k].detach().abs().cpu() for k in params} if phase else {}
            loss = train_step(model, opt, sched, criterion, x, y, 0, cfg, device)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss} at step {step + 1}: lower --lr (now {cfg.lr[0]:g})"
                )
            step += 1
            if phase:
                grads = {k: named[k].grad.detach().abs().cpu() for k in params}
                captures.append(Capture(phase, step, loss, before, grads))
            bar.update(step, loss)
            if step >= study.steps:
                break
        epoch += 1
    bar.close()
    return captures


def write_results(
    root: Path,
    cfg: RunConfig,
    study: StudyConfig,
    model_name: str,
    keys: Sequence[str],
    captures: Sequence[Capture],
) -> None:
    """ratios.csv and samples.npz from the captures."""
    rows: list[dict] = []
    arrays: dict[str, np.ndarray] = {}
    for cap in captures:
        weights = select_tensors(cap.weights, ratio_keys(keys))
        grads = select_tensors(cap.grads, ratio_keys(keys))
        for key in ratio_keys(keys):
            w, g = weights[key], grads[key]
            tensor, _, part = key.partition(":")
            rows.append(
                {
                    "tensor": tensor,
                    "part": part or "all",
                    "layer": layer_of(key),
                    "phase": cap.phase,
                    "step": cap.step,
                    **hyperbolic_ratio(w, g),
                    "loss": cap.loss,
                    "paper_r": paper_value(model_name, key, cap.phase),
                }
            )
            if key not in keys:  # a whole fused weight: r only, its parts have the points
                continue
            flat_w, flat_g = w.flatten(), g.flatten()
            idx = subsample_indices(flat_w.numel(), study.samples, cfg.seed + keys.index(key))
            top = top_indices(flat_g)
            for name, values in (
                ("w", flat_w[idx]),
                ("grad", flat_g[idx]),
                ("top_w", flat_w[top]),
                ("top_grad", flat_g[top]),
            ):
                arrays[f"{key}|{cap.phase}|{name}"] = values.float().numpy()
    storage.write_csv(
        root / "ratios.csv",
        rows,
        header=[
            "tensor",
            "part",
            "layer",
            "phase",
            "step",
            "r",
            "numel",
            "top_k",
            "median_w_top",
            "max_w_bottom",
            "min_grad_top",
            "max_grad_bottom",
            "loss",
            "paper_r",
        ],
    )
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    storage.write_bytes(root / "samples.npz", buf.getvalue())
