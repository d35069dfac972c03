"""Figures shared by the one-run report and the comparison: forgetting curves, QKV shift heatmaps,
layer-wise shift, and the optimizers' own tracking (effective LR, fraction of weights updated).

Every function takes `Group`s (runs of one configuration, several seeds) and writes one PNG
atomically. One colour per optimizer, the same in every figure.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .rundata import RunData  # noqa: E402

OPTIMIZER_COLORS = {
    "adamw": "#1f77b4",
    "nanoadam": "#d62728",
    "microadam": "#2ca02c",
    "adamw8bit": "#9467bd",
    "galore": "#ff7f0e",
    "sgd": "#7f7f7f",
}
_EXTRA = ["#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939"]


@dataclass
class Group:
    """Runs of one configuration (seeds differ); `label` names it in legends and tables."""

    label: str
    runs: list[RunData]
    color: str = ""
    linestyle: str = "-"
    key: tuple = field(default_factory=tuple)

    @property
    def optimizer(self) -> str:
        return self.runs[0].summary["optimizer"]


def assign_styles(groups: list[Group]) -> None:
    """Colour by optimizer; several groups of one optimizer differ by line style."""
    seen: dict[str, int] = {}
    extra = iter(_EXTRA)
    styles = ["-", "--", ":", "-."]
    for g in groups:
        opt = g.optimizer
        if opt not in OPTIMIZER_COLORS:
            OPTIMIZER_COLORS[opt] = next(extra, "#000000")
        g.color = OPTIMIZER_COLORS[opt]
        g.linestyle = styles[seen.get(opt, 0) % len(styles)]
        seen[opt] = seen.get(opt, 0) + 1


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: temporary files are created private (0600); the renamed result gets the usual mode
_FILE_MODE = _umask_mode()


def atomic_write(path: Path, write) -> Path:
    """`write(temporary path)` in the same folder, then rename onto `path`: never half a file.
    The one atomic writer of the project (`clbench.storage` writes through it too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def save(fig, path: Path) -> Path:
    """Save and close a figure."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight"))
    finally:
        plt.close(fig)


def save_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_table(table: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))


def _mean_std(frames: list[pd.DataFrame], x: str, y: str) -> pd.DataFrame:
    """Mean and std of `y` over runs at each `x` present in all of them."""
    table = pd.concat([f.groupby(x)[y].last().rename(i) for i, f in enumerate(frames)], axis=1)
    table = table.dropna()
    return pd.DataFrame({"mean": table.mean(axis=1), "std": table.std(axis=1).fillna(0.0)})


def task_starts(run: RunData) -> dict[int, int]:
    """Global step at which each task (1-based) started."""
    return run.curves.groupby("task_index")["step"].min().astype(int).to_dict()


def forgetting_curves(groups: list[Group], path: Path) -> Path | None:
    """One panel per task: its test accuracy over the whole sequence, one line per group
    (mean over seeds, band = std); dashed lines mark where each later task starts."""
    first = groups[0].runs[0]
    if first.curves.empty:
        return None
    tasks = first.tasks
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False, sharex=True
    )
    starts = task_starts(first)
    for j, (task, ax) in enumerate(zip(tasks, axes[0], strict=True)):
        for g in groups:
            frames = [r.curves[r.curves["eval_task"] == task] for r in g.runs]
            stats = _mean_std(frames, "step", "accuracy")
            if stats.empty:
                continue
            n = len(g.runs)
            label = g.label + (f" (n={n})" if n > 1 else "")
            ax.plot(stats.index, stats["mean"], color=g.color, ls=g.linestyle, lw=1.8, label=label)
            if n > 1:
                ax.fill_between(
                    stats.index,
                    stats["mean"] - stats["std"],
                    stats["mean"] + stats["std"],
                    color=g.color,
                    alpha=0.15,
                    lw=0,
                )
        for idx, step in starts.items():
            if idx > 1:
                ax.axvline(step, color="0.4", ls="--", lw=0.9)
            ax.text(
                step,
                101,
                f" task {idx}: {tasks[idx - 1]}",
                fontsize=8,
                color="0.3",
                va="bottom",
                ha="left",
            )
        ax.set_title(f"test accuracy on task {j + 1} ({task})", fontsize=10, pad=16)
        ax.set_xlabel("training step (all tasks)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save(fig, path)


# ---------------------------------------------------------------------------------- QKV shift

_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|layer)\.(\d+)\.")


def block_of(name: str) -> int | None:
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def default_block(depth: int) -> int:
    """The block the paper shows for ViT-L (10 of 24); at about 40% depth for other models."""
    return round(0.4 * depth)


def block_average(matrix: np.ndarray, max_size: int = 128) -> np.ndarray:
    """Average over a grid of near-equal rectangles so no side exceeds `max_size` (for display).
    The size-weighted mean of the blocks equals the mean of the matrix."""
    rows = np.linspace(0, matrix.shape[0], min(max_size, matrix.shape[0]) + 1).astype(int)
    cols = np.linspace(0, matrix.shape[1], min(max_size, matrix.shape[1]) + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(matrix.astype(np.float64), rows[:-1], 0), cols[:-1], 1)
    return sums / np.outer(np.diff(rows), np.diff(cols))


def final_shift_matrices(run: RunData) -> dict[str, np.ndarray]:
    """The |delta| matrices saved after the last task (empty if the run saved none)."""
    path = run.root / "shift" / f"after_task_{len(run.tasks)}.npz"
    if not path.exists():
        return {}
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def qkv_parts(matrices: dict[str, np.ndarray], block: int) -> dict[str, np.ndarray]:
    """q, k, v |delta| of attention block `block` (fused qkv split, or separate projections)."""
    out = {}
    for key, value in matrices.items():
        if block_of(key) != block:
            continue
        if ":" in key:
            out[key.rsplit(":", 1)[1]] = value
        else:
            m = re.search(r"(?:^|\.)(q|k|v|query|key|value|q_proj|k_proj|v_proj)\.weight$", key)
            if m:
                out[m.group(1)[0]] = value
    return {p: out[p] for p in "qkv" if p in out}


def depth_of(matrices: dict[str, np.ndarray]) -> int:
    blocks = {block_of(k) for k in matrices}
    blocks.discard(None)
    return max(blocks) + 1 if blocks else 0


def qkv_heatmaps(groups: list[Group], block: int, path: Path) -> Path | None:
    """|theta - theta_0| of q, k and v of one block, one row per group (its first seed), on one
    shared colour scale; each panel titled with its L2."""
    rows = []
    for g in groups:
        parts = qkv_parts(final_shift_matrices(g.runs[0]), block)
        if parts:
            rows.append((g, parts))
    if not rows:
        return None
    shown = {(id(g), p): block_average(m) for g, parts in rows for p, m in parts.items()}
    vmax = float(np.percentile(np.concatenate([v.ravel() for v in shown.values()]), 99.5)) or 1e-12
    ncols = max(len(parts) for _, parts in rows)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(3.4 * ncols + 0.8, 3.1 * len(rows)), squeeze=False
    )
    image = None
    averaged = False
    for r, (g, parts) in enumerate(rows):
        for c, (part, matrix) in enumerate(parts.items()):
            ax = axes[r][c]
            image = ax.imshow(
                shown[(id(g), part)],
                cmap="magma",
                vmin=0,
                vmax=vmax,
                interpolation="nearest",
                aspect="auto",
            )
            averaged |= shown[(id(g), part)].shape != matrix.shape
            l2 = float(np.sqrt((matrix.astype(np.float64) ** 2).sum()))
            ax.set_title(f"{g.label}: {part}  (L2 {l2:.3g})", fontsize=9, color=g.color)
            ax.set_xlabel("input dim")
            ax.set_ylabel("output dim")
    fig.suptitle(
        f"|θ − θ₀| of attention block {block} after all tasks"
        + (" (block-averaged for display)" if averaged else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="|Δw| (shared scale)")
    return save(fig, path)


# ----------------------------------------------------------------------------- layer-wise shift

_COMPONENTS = {
    "q": r":q$|(?:^|\.)(?:q|query|q_proj)\.weight$",
    "k": r":k$|(?:^|\.)(?:k|key|k_proj)\.weight$",
    "v": r":v$|(?:^|\.)(?:v|value|v_proj)\.weight$",
    "attn proj": r"attn\.(?:proj|out_proj|o_proj)\.weight$",
    "mlp": r"mlp\.fc\d\.weight$|mlp\.(?:up|down|gate)_proj\.weight$",
}


_CONV = re.compile(
    r"(?:conv\w*|downsample\.0)\.weight$"
)  # resnet shortcuts: downsample.0 is the conv


def layer_l2(run: RunData) -> pd.DataFrame:
    """Per block and component (q, k, v, attn proj, mlp) the L2 shift after the last task; for
    models without attention blocks, per convolution weight in network order."""
    last = run.shift[run.shift["after_task"] == run.tasks[-1]]
    values = dict(zip(last["name"], last["l2"].astype(float), strict=True))
    for key, m in final_shift_matrices(run).items():
        if ":" in key:
            values[key] = float(np.sqrt((m.astype(np.float64) ** 2).sum()))
    rows = []
    for name, l2 in values.items():
        block = block_of(name)
        for comp, pattern in _COMPONENTS.items():
            if block is not None and re.search(pattern, name):
                rows.append({"layer": block, "component": comp, "l2": l2})
    if rows:
        table = pd.DataFrame(rows)
        return (
            table.groupby(["layer", "component"])["l2"]
            .apply(lambda s: math.sqrt((s**2).sum()))
            .reset_index()
        )
    convs = [(n, v) for n, v in values.items() if _CONV.search(n)]
    return pd.DataFrame(
        [{"layer": i, "component": "conv", "l2": v, "name": n} for i, (n, v) in enumerate(convs)]
    )


def layer_shift(groups: list[Group], path: Path) -> Path | None:
    """L2 shift per block and component (or per conv layer), one line per group (seed mean)."""
    tables = [(g, [layer_l2(r) for r in g.runs]) for g in groups]
    tables = [(g, ts) for g, ts in tables if not ts[0].empty]
    if not tables:
        return None
    present = {c for _, ts in tables for c in ts[0]["component"]}
    comps = [c for c in [*_COMPONENTS, "conv"] if c in present]
    fig, axes = plt.subplots(
        1, len(comps), figsize=(2.9 * len(comps) + 0.6, 3.2), squeeze=False, sharey=True
    )
    for ax, comp in zip(axes[0], comps, strict=True):
        for g, ts in tables:
            frames = [t[t["component"] == comp] for t in ts]
            stats = _mean_std(frames, "layer", "l2")
            ax.plot(
                stats.index,
                stats["mean"],
                marker="o",
                ms=3,
                color=g.color,
                ls=g.linestyle,
                label=g.label,
            )
        ax.set_title(comp, fontsize=10)
        ax.set_xlabel("block" if comp != "conv" else "conv layer (network order)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("L2 distance from θ₀")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("where the weights moved: L2 shift per layer after all tasks", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


# ------------------------------------------------------------------------- optimizer tracking


def optimizer_tracking(groups: list[Group], path: Path) -> Path | None:
    """Effective learning rate (mean lr/(sqrt(v_hat)+eps) over updated entries, paper appendix
    G.5) and the fraction of weights updated at least once, over training, where logged."""
    columns = [
        ("elr", "effective learning rate", "mean lr / (√v̂ + ε)", True),
        ("updated_frac", "share of sparse weights updated so far in the task", "fraction", False),
    ]
    present = [c for c in columns if any(c[0] in r.train_log for g in groups for r in g.runs)]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5.2 * len(present), 3.4), squeeze=False)
    for ax, (col, title, ylabel, log) in zip(axes[0], present, strict=True):
        for g in groups:
            frames = [r.train_log for r in g.runs if col in r.train_log]
            if not frames:
                continue
            stats = _mean_std(frames, "step", col)
            ax.plot(stats.index, stats["mean"], color=g.color, ls=g.linestyle, label=g.label)
        for idx, step in task_starts(groups[0].runs[0]).items():
            if idx > 1:
                ax.axvline(step, color="0.4", ls="--", lw=0.9)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step (all tasks)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def write_all(groups: list[Group], out: Path, block: int | None) -> dict[str, Path | None]:
    """Every figure for these groups into `out`, named by what it shows."""
    return {
        "forgetting_curves": forgetting_curves(groups, out / "forgetting_curves.png"),
        "qkv": qkv_heatmaps(groups, block, out / f"qkv_shift_block{block}.png")
        if block is not None
        else None,
        "layer_shift": layer_shift(groups, out / "layer_shift.png"),
        "tracking": optimizer_tracking(groups, out / "optimizer_tracking.png"),
    }
