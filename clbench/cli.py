"""The `clbench` command line. Thin: it parses options and delegates."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .analyze_cli import analyze_app
from .bench_cli import register as register_bench
from .errors import USER_ERRORS, UserError
from .memory_cli import register as register_memory
from .reproduce_cli import register as register_reproduce
from .toy_cli import register as register_toy

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="clbench: a continual-learning benchmark for optimizers. Finetune a model on a sequence "
    "of tasks and measure how much each optimizer forgets.",
)
console = Console()


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _numbers(value: str | None, kind: type, flag: str) -> list | None:
    items = _split(value)
    if items is None:
        return None
    try:
        return [kind(v) for v in items]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated {kind.__name__}s, got {value!r}") from None


def _opt_args(pairs: list[str] | None) -> dict | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--opt-arg takes KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


@app.command()
def run(
    preset: str = typer.Option(None, help="named settings (`clbench list presets`)"),
    model: str = typer.Option(None, help="short name or any timm model name"),
    opt: str = typer.Option(None, "--opt", help="optimizer (`clbench list optimizers`)"),
    tasks: str = typer.Option(None, help="comma-separated task sequence, e.g. cifar10,flowers102"),
    epochs: str = typer.Option(None, help="epochs per task: one value or one per task"),
    lr: str = typer.Option(None, help="learning rate per task: one value or one per task"),
    batch_size: int = typer.Option(None, help="training batch size"),
    density: float = typer.Option(None, help="update density for sparse optimizers, in (0, 1]"),
    mask_interval: int = typer.Option(None, help="steps between mask refreshes (NanoAdam)"),
    opt_arg: list[str] = typer.Option(None, help="any optimizer hyperparameter, KEY=VALUE"),
    eval_every: int = typer.Option(None, help="steps between forgetting-curve evaluations"),
    eval_samples: int = typer.Option(None, help="test samples per task for the curves"),
    image_size: int = typer.Option(None, help="input size in pixels (ViTs adapt their patch size)"),
    patch_size: int = typer.Option(None, help="ViT patch size (default: keeps >= 8x8 patches)"),
    pretrained: bool = typer.Option(
        None, "--pretrained/--no-pretrained", help="start from timm's pretrained weights"
    ),
    weights: str = typer.Option(None, help="local state dict to start from"),
    pretrain: str = typer.Option(None, help="pretrain the backbone on this task first (cached)"),
    pretrain_epochs: int = typer.Option(None, help="epochs of the pretraining stage"),
    label_smoothing: float = typer.Option(None, help="label smoothing of the training loss"),
    schedule: str = typer.Option(None, help="LR schedule within each task: none or cosine"),
    seed: int = typer.Option(None, help="random seed"),
    device: str = typer.Option(None, help="auto, cpu, cuda[:N] or mps"),
    out: str = typer.Option(None, help="run directory (default runs/<name>)"),
    name: str = typer.Option(None, help="run name (default from model, optimizer and tasks)"),
    download: bool = typer.Option(None, "--download", help="download missing datasets"),
    data_dir: str = typer.Option(None, help="dataset folder (default $CLBENCH_DATA)"),
    max_steps: int = typer.Option(None, help="cap on optimizer steps per task (quick runs)"),
    checkpoint_every: int = typer.Option(None, help="also checkpoint every N steps"),
    freeze_bn_stats: bool = typer.Option(
        None, "--freeze-bn-stats", help="keep BatchNorm running statistics fixed"
    ),
    augment: bool = typer.Option(None, "--augment", help="light training augmentation"),
    fused_backward: bool = typer.Option(
        None,
        "--fused-backward",
        help="update each parameter inside backward and free its gradient at once (less memory; "
        "same results)",
    ),
    on_nan: str = typer.Option(None, help="non-finite loss: stop (exit 3) or skip the batch"),
    num_workers: int = typer.Option(None, help="data-loader worker processes"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run in --out"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Finetune a model on a task sequence and measure forgetting."""
    from .config import resolve, saved_config
    from .distributed import is_main
    from .runner import run as run_sequence

    console.quiet = not is_main()  # under torchrun, process 0 speaks for all

    options = {
        "preset": preset,
        "model": model,
        "optimizer": opt,
        "tasks": _split(tasks),
        "epochs": _numbers(epochs, int, "--epochs"),
        "lr": _numbers(lr, float, "--lr"),
        "batch_size": batch_size,
        "density": density,
        "mask_interval": mask_interval,
        "opt_args": _opt_args(opt_arg),
        "eval_every": eval_every,
        "eval_samples": eval_samples,
        "image_size": image_size,
        "patch_size": patch_size,
        "pretrained": pretrained,
        "weights": weights,
        "pretrain": pretrain,
        "pretrain_epochs": pretrain_epochs,
        "label_smoothing": label_smoothing,
        "schedule": schedule,
        "seed": seed,
        "device": device,
        "out": out,
        "name": name,
        "download": download,
        "data_dir": data_dir,
        "max_steps": max_steps,
        "checkpoint_every": checkpoint_every,
        "freeze_bn_stats": freeze_bn_stats,
        "fused_backward": fused_backward,
        "augment": augment,
        "on_nan": on_nan,
        "num_workers": num_workers,
    }
    if options["tasks"] is not None:
        options["tasks"] = tuple(options["tasks"])
    given = {k for k, v in options.items() if v is not None} - {"out", "device", "num_workers"}
    if resume and out is not None and not given:
        cfg = saved_config(out)  # `clbench run --resume --out DIR` continues with its settings
    else:
        cfg = resolve(options)
    console.print(
        f"[bold]clbench run[/bold] {cfg.name}: {cfg.model} / {cfg.optimizer} on "
        f"{' -> '.join(cfg.tasks)}  (lr {', '.join(f'{v:g}' for v in cfg.lr)}) -> {cfg.out}"
    )
    root = run_sequence(
        cfg, resume=resume, overwrite=overwrite, progress=not quiet, console=console
    )
    _print_summary(root)


def _print_summary(root: Path) -> None:
    from reports import load_run

    data = load_run(root)
    if data.summary.get("status", "complete") != "complete":
        console.print(f"[red]{data.summary['status']}[/red]: {data.summary.get('message', '')}")
        return
    table = Table(title=f"accuracy matrix (%) — {data.summary['name']}")
    table.add_column("after")
    for task in data.tasks:
        table.add_column(task, justify="right")
    for label, row in zip(data.acc_matrix.index, data.acc_matrix.values.tolist(), strict=True):
        table.add_row(str(label), *["—" if v != v else f"{v:.2f}" for v in row])
    console.print(table)
    final = data.summary["final"]
    console.print(
        f"average accuracy {final['average_accuracy']:.2f}   mean forgetting "
        f"{_num(final['mean_forgetting'])}   BWT {_num(final['bwt'])}"
    )
    unchanged = data.summary.get("shift", {}).get("frac_unchanged_excl_heads")
    if unchanged is not None:
        console.print(f"weights never updated: {100 * unchanged:.2f}% (heads excluded)")
    console.print(f"report: {root / 'report.md'}")


def _num(value) -> str:
    return "—" if value is None else f"{value:.2f}"


@app.command("list")
def list_(what: str = typer.Argument(..., help="models, tasks, optimizers or presets")) -> None:
    """List the registered models, tasks, optimizers or presets."""
    choices = ("models", "tasks", "optimizers", "presets")
    if what not in choices:
        raise UserError(f"clbench list takes one of {', '.join(choices)}, got {what!r}")
    table = Table(title=what)
    if what == "models":
        from .models import MODELS

        for col in ("name", "timm model", "description"):
            table.add_column(col)
        for m in MODELS.values():
            table.add_row(m.short, m.timm_name, m.description)
        table.caption = "any other timm model name works too"
    elif what == "tasks":
        import tasks as registry

        for col in ("name", "classes", "offline", "description"):
            table.add_column(col)
        for task_name, task in registry.available().items():
            table.add_row(
                task_name,
                str(task.num_classes),
                "yes" if task.offline else "download",
                task.description,
            )
        table.caption = "also: " + ", ".join(f"{p}:PATH" for p in registry.prefixes())
    elif what == "optimizers":
        import optimizers

        for col in ("name", "default lr", "defaults", "state memory", "description"):
            table.add_column(col)
        for spec in optimizers.available().values():
            defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
            table.add_row(spec.name, f"{spec.lr:g}", defaults, spec.memory, spec.description)
    else:
        from .presets import PRESETS

        for col in ("name", "model", "tasks", "description"):
            table.add_column(col)
        for p in PRESETS.values():
            table.add_row(p.name, p.options["model"], ",".join(p.options["tasks"]), p.description)
    console.print(table)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a finished run directory")) -> None:
    """Write report.md and figures for one run and print its summary."""
    from reports import write_run_report

    path = write_run_report(run_dir)
    _print_summary(run_dir)
    console.print(f"wrote {path}")


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="run directories (several seeds allowed)"),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="output folder"),
    block: int = typer.Option(None, help="attention block for the QKV heatmaps"),
) -> None:
    """Put runs side by side: Table 4/5, curves, QKV heatmaps, layer-wise shift."""
    from reports import compare as compare_runs
    from reports.compare import console_table

    result = compare_runs(run_dirs, out, block)
    table = result["table"]
    rich = console_table(table, "comparison (mean ± std over seeds)", std=True)
    console.print(rich)
    if table["paper_setting"].astype(bool).any():
        console.print("the paper's numbers and our differences are in the report")
    console.print(f"report: {result['report']}")


@app.command()
def fetch(
    preset: str = typer.Option(None, help="fetch the model and tasks of this preset"),
    model: str = typer.Option(None, help="model whose pretrained weights to download"),
    tasks: str = typer.Option(None, help="comma-separated tasks to download"),
    data_dir: str = typer.Option(None, help="dataset folder (default $CLBENCH_DATA)"),
) -> None:
    """Download datasets and pretrained weights ahead of time (for offline compute nodes)."""
    import tasks as registry

    from .config import default_data_dir
    from .models import fetch_weights
    from .presets import PRESETS

    names = _split(tasks) or []
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        model = model or PRESETS[preset].options["model"]
        names = names or list(PRESETS[preset].options["tasks"])
    if model is None and not names:
        raise UserError("nothing to fetch: pass --preset, --model or --tasks")
    root = Path(data_dir) if data_dir else default_data_dir()
    for task_name in names:
        registry.get(task_name).fetch(root)
        console.print(f"dataset {task_name}: ready in {root}")
    if model is not None:
        console.print(f"weights {model}: {fetch_weights(model)}")


app.add_typer(analyze_app, name="analyze")
register_memory(app)
register_bench(app)
register_toy(app)
register_reproduce(app)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    from reports import ReportError

    from .runner import Interrupted, TrainingDiverged

    try:
        app()
    except (*USER_ERRORS, ReportError) as exc:
        Console(stderr=True).print(
            f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except Interrupted as exc:
        Console(stderr=True).print(
            f"interrupted: {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(128 + exc.signum)
    except TrainingDiverged as exc:
        Console(stderr=True).print(
            f"[red]diverged:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(3)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
