"""report.md for one run: settings, accuracy matrix, the paper's Table-4 columns, forgetting
curves, and how much of the network moved."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt

from . import figures
from .rundata import RunData, load_run


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(run: RunData, path: Path) -> bool:
    """Accuracy of every task over training steps, task boundaries marked. False if no curves."""
    if run.curves.empty:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=130)
    for task in run.tasks:
        c = run.curves[run.curves["eval_task"] == task]
        ax.plot(c["step"], c["accuracy"], marker=".", lw=1.5, label=f"eval: {task}")
    starts = run.curves.groupby("task_index")["step"].min()
    for idx, step in starts.items():
        if idx > 1:
            ax.axvline(step, color="grey", ls="--", lw=0.8)
        ax.annotate(
            f"task {idx}: {run.tasks[idx - 1]}",
            (step, 1.0),
            xycoords=("data", "axes fraction"),
            va="top",
            ha="left",
            fontsize=7,
            color="grey",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(
        f"{run.summary['model']} / {run.summary['optimizer']}: forgetting curves", fontsize=9
    )
    fig.tight_layout()
    figures.save(fig, path)
    return True


def _settings(run: RunData) -> list[str]:
    s, cfg = run.summary, run.config.get("config", {})
    hparams = ", ".join(f"{k}={v}" for k, v in cfg.get("opt_hparams", {}).items())
    pre = run.config.get("pretrain") or {}
    if cfg.get("pretrained"):
        start = "timm weights"
    elif cfg.get("pretrain"):
        acc = pre.get("test_accuracy")
        start = f"pretrained here on `{cfg['pretrain']}`" + (f" ({acc:.1f}% test)" if acc else "")
    else:
        start = "random init"
    rows = [
        ["learning rates", ", ".join(f"{v:g}" for v in cfg.get("lr", []))],
        ["epochs", ", ".join(str(v) for v in cfg.get("epochs", []))],
        ["batch size", cfg.get("batch_size")],
        ["optimizer hyperparameters", hparams or "defaults"],
        ["LR schedule / label smoothing", f"{cfg.get('schedule')} / {cfg.get('label_smoothing')}"],
        ["image size", cfg.get("image_size") or "model default"],
        ["starting weights", start],
        ["device", run.config.get("device")],
    ]
    tasks = " → ".join(f"`{t}`" for t in s["tasks"])
    head = (
        f"Model **{s['model']}**, optimizer **{s['optimizer']}**, tasks {tasks}, seed {s['seed']}."
    )
    return [head, "", _table(["setting", "value"], rows), ""]


def _accuracy(run: RunData) -> list[str]:
    acc = run.acc_matrix
    rows = [[idx, *row] for idx, row in zip(acc.index, acc.values.tolist(), strict=True)]
    return [
        "## Accuracy matrix",
        "",
        "Test accuracy (%) on each task (columns) after training on each task (rows); `init` is "
        "before any training. Each task is evaluated with its own head.",
        "",
        _table(["after", *acc.columns], rows),
        "",
    ]


def _forgetting(summary: dict) -> list[str]:
    final = summary["final"]
    rows = [
        ["average accuracy (last row)", final["average_accuracy"]],
        ["mean forgetting (points)", final["mean_forgetting"]],
        ["backward transfer (BWT)", final["bwt"]],
        *[[f"forgetting of `{t}`", v] for t, v in final["forgetting"].items()],
    ]
    out = ["## Forgetting", "", _table(["metric", "value"], rows), ""]
    p = summary.get("paper")
    if p:
        cols = ["T1", "T2", "T1 after T2", "Avg", "Forgetting"]
        vals = [p["t1"], p["t2"], p["t1_after_t2"], p["avg"], p["forgetting"]]
        out += ["The NanoAdam paper's Table-4 columns:", "", _table(cols, [vals]), ""]
    return out


def _shift(summary: dict) -> list[str]:
    sh = summary["shift"]
    unchanged = sh.get("frac_unchanged_excl_heads")
    rows = [
        ["L2 distance from the pretrained weights (heads excluded)", sh.get("l2_excl_heads")],
        [
            "weights never updated (bit-identical to pretrained, heads excluded)",
            f"{100 * unchanged:.2f}%" if unchanged is not None else None,
        ],
    ]
    return [
        "## Where the weights moved",
        "",
        _table(["measure", "value"], rows),
        "",
        "Per-tensor figures are in `shift.csv`; attention q/k/v shift matrices in `shift/`.",
        "",
    ]


def _resources(summary: dict) -> list[str]:
    res = summary.get("resources", {})
    rows = [
        ["wall time (s)", res.get("wall_s")],
        ["peak memory (MiB)", res.get("peak_memory_bytes", 0) / 2**20],
        ["optimizer state (MiB)", res.get("optimizer_state_bytes", 0) / 2**20],
        ["parameters", res.get("params")],
    ]
    if summary.get("nan_skips"):
        rows.append(["batches skipped for a non-finite loss", summary["nan_skips"]])
    return ["## Resources", "", _table(["measure", "value"], rows), ""]


def render_run_report(run: RunData, written: dict[str, Path | None], block: int | None) -> str:
    s = run.summary
    out = [f"# clbench run `{s['name']}`", ""]
    status = s.get("status", "complete")
    if status != "complete":
        out += [
            f"> **This run did not finish: {status}.** {s.get('message', '')}",
            "",
            "> No final figures are reported; the rows below are what was measured before.",
            "",
        ]
    out += _settings(run) + _accuracy(run)
    if s.get("final"):
        out += _forgetting(s)
    sections = [
        ("forgetting_curves", "## Forgetting curves"),
        ("qkv", f"## Attention block {block}: |θ − θ₀| of q, k, v after all tasks"),
        ("layer_shift", "## Layer-wise shift"),
        ("tracking", "## Effective learning rate and weights updated"),
    ]
    if s.get("shift"):
        out += _shift(s)
    for key, title in sections:
        if written.get(key):
            out += [title, "", f"![{key}](figures/{written[key].name})", ""]
    return "\n".join(out + _resources(s))


def write_run_report(root: str | Path, block: int | None = None) -> Path:
    """Write report.md and figures/ into the run directory; returns the report's path."""
    run = load_run(root)
    fig_dir = run.root / "figures"
    group = figures.Group(run.summary["optimizer"], [run])
    figures.assign_styles([group])
    written: dict[str, Path | None] = {}
    if plot_curves(run, fig_dir / "forgetting_curves.png"):
        written["forgetting_curves"] = fig_dir / "forgetting_curves.png"
    if run.summary.get("status", "complete") == "complete":
        depth = figures.depth_of(figures.final_shift_matrices(run))
        block = block if block is not None else (figures.default_block(depth) if depth else None)
        if block is not None:
            written["qkv"] = figures.qkv_heatmaps(
                [group], block, fig_dir / f"qkv_shift_block{block}.png"
            )
        written["layer_shift"] = figures.layer_shift([group], fig_dir / "layer_shift.png")
        written["tracking"] = figures.optimizer_tracking(
            [group], fig_dir / "optimizer_tracking.png"
        )
    return figures.save_text(render_run_report(run, written, block), run.root / "report.md")
