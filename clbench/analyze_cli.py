"""`clbench analyze ...`: studies of how models finetune (thin: parses options and delegates)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError

analyze_app = typer.Typer(
    no_args_is_help=True,
    help="Analyses of finetuning: the gradient-weight study of the NanoAdam paper.",
)
console = Console()


def _steps(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UserError(
            f"--capture-steps takes three comma-separated integers, got {value!r}"
        ) from None


@analyze_app.command("grad-weight")
def grad_weight(
    model: str = typer.Option(..., help="short name or any timm model name"),
    task: str = typer.Option(..., help="the task to finetune on, e.g. cifar10 or digits"),
    steps: int = typer.Option(300, help="AdamW steps of finetuning (>= 3)"),
    capture_steps: str = typer.Option(
        None, help="early,middle,late steps to capture (default: 1, steps/2, steps)"
    ),
    tensors: str = typer.Option(
        None,
        help="comma-separated tensors: parameter names or NAME:q|k|v for fused qkv weights "
        "(default: q, k, v of five blocks over depth; five convolutions for CNNs)",
    ),
    lr: float = typer.Option(3e-3, help="learning rate (paper Table 6: 3e-3)"),
    weight_decay: float = typer.Option(0.1, help="AdamW weight decay (paper Table 6: 0.1)"),
    label_smoothing: float = typer.Option(0.1, help="label smoothing (paper Table 6: 0.1)"),
    batch_size: int = typer.Option(128, help="batch size (paper Table 6: 128)"),
    samples: int = typer.Option(20_000, help="(|w|, |grad|) pairs kept per tensor and phase"),
    seed: int = typer.Option(0, help="random seed"),
    image_size: int = typer.Option(None, help="input size in pixels (ViTs adapt their patch size)"),
    patch_size: int = typer.Option(None, help="ViT patch size (default: keeps >= 8x8 patches)"),
    pretrained: bool = typer.Option(
        None, "--pretrained/--no-pretrained", help="start from timm's pretrained weights"
    ),
    weights: str = typer.Option(None, help="local state dict to start from"),
    pretrain: str = typer.Option(None, help="pretrain the backbone on this task first (cached)"),
    pretrain_epochs: int = typer.Option(None, help="epochs of the pretraining stage"),
    out: str = typer.Option(None, help="output folder (default runs/gradweight-<model>-<task>)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
    device: str = typer.Option(None, help="auto, cpu, cuda[:N] or mps"),
    data_dir: str = typer.Option(None, help="dataset folder (default $CLBENCH_DATA)"),
    download: bool = typer.Option(None, "--download", help="download missing datasets"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Finetune MODEL on TASK with dense AdamW and compare |w| with |grad| at an early, a middle
    and a late step: scatter plots and the paper's hyperbolic ratio r per tensor."""
    from reports.gradweight import fmt_r, load_ratios, ratio_table

    from .config import resolve
    from .gradweight import StudyConfig, default_out, run_study

    if steps < 3:
        raise UserError(f"--steps must be >= 3 (early, middle and late), got {steps}")
    cfg = resolve(
        {
            "model": model,
            "tasks": (task,),
            "epochs": (1,),
            "lr": (lr,),
            "optimizer": "adamw",
            "batch_size": batch_size,
            "label_smoothing": label_smoothing,
            "seed": seed,
            "image_size": image_size,
            "patch_size": patch_size,
            "pretrained": pretrained,
            "weights": weights,
            "pretrain": pretrain,
            "pretrain_epochs": pretrain_epochs,
            "device": device,
            "data_dir": data_dir,
            "download": download,
            "name": f"gradweight-{model}-{task}",
            "out": out or default_out(model, task),
        }
    )
    study = StudyConfig(
        steps=steps,
        capture_steps=_steps(capture_steps) or (1, max(2, steps // 2), steps),
        tensors=tuple(t.strip() for t in tensors.split(",") if t.strip()) if tensors else None,
        weight_decay=weight_decay,
        samples=samples,
    )
    console.print(
        f"[bold]clbench analyze grad-weight[/bold]: {cfg.model} on {task}, {steps} AdamW steps "
        f"(lr {lr:g}) -> {cfg.out}"
    )
    root = run_study(cfg, study, overwrite=overwrite, progress=not quiet, console=console)

    table = ratio_table(load_ratios(root))
    phase_cols = [c for c in table.columns if c.split(" ")[0] in ("early", "middle", "late")]
    has_paper = table["paper (early)"].notna().any()
    rich_table = Table(title="hyperbolic ratio r (smaller = more hyperbolic)")
    rich_table.add_column("tensor", overflow="fold")
    rich_table.add_column("part")
    for col in phase_cols + (["paper (early)"] if has_paper else []):
        rich_table.add_column(col.replace(" (", "\n("), justify="right")
    for _, row in table.iterrows():
        cells = [row["tensor"].removesuffix(".weight"), row["part"]]
        cells += [fmt_r(row[c]) for c in phase_cols]
        rich_table.add_row(*cells, *([fmt_r(row["paper (early)"])] if has_paper else []))
    console.print(rich_table)
    console.print(f"report: {root / 'gradweight.md'}")
