"""`clbench reproduce` and `clbench sweep` (thin: they parse options and delegate to
clbench/reproduce.py and clbench/sweep.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UserError

console = Console()


# options `reproduce` and `sweep` share
_DRY_RUN = typer.Option(False, "--dry-run", help="print the plan, run nothing")
_DATA_DIR = typer.Option(None, help="dataset folder (default $CLBENCH_DATA)")
_DEVICE = typer.Option(None, help="auto, cpu, cuda[:N] or mps")
_DOWNLOAD = typer.Option(False, "--download", help="download missing datasets")
_BLOCK = typer.Option(None, help="attention block for the QKV heatmaps")
_QUIET = typer.Option(False, "--quiet", help="no progress bars")
_SEEDS = typer.Option(None, help="comma-separated seeds (default: the preset's)")
_MAX_STEPS = typer.Option(None, help="cap on optimizer steps per task (quick runs)")


def register(app: typer.Typer) -> None:
    """Add `reproduce` and `sweep` to the `clbench` application."""
    app.command("reproduce")(reproduce)
    app.command("sweep")(sweep)


def _items(value: str | None, kind: type, flag: str, unique: bool = True) -> list | None:
    """A comma-separated option as a list of `kind` (repeats dropped when `unique`); one
    `UserError` line when it is not."""
    if value is None:
        return None
    try:
        items = [kind(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated {kind.__name__}s, got {value!r}") from None
    if not items:
        raise UserError(f"{flag} is empty: give at least one value")
    return list(dict.fromkeys(items)) if unique else items


def reproduce(
    target: str = typer.Argument(
        ..., help="table4, demo, ablation-criteria, ablation-mask or ablation-lr"
    ),
    model: str = typer.Option(
        None, help="table4: vit-large, resnet101 or resnet18; ablations: any model"
    ),
    tasks: str = typer.Option(None, help="ablations: task sequence (default: the demo's)"),
    preset: str = typer.Option(None, help="ablations: the preset to start from (default demo)"),
    opts: str = typer.Option(
        None, help="optimizers, comma-separated (default nanoadam,microadam,adamw)"
    ),
    seeds: str = _SEEDS,
    out: str = typer.Option(
        None, help="folder of the runs (default runs/<target>[-<model>]; demo: runs/reproduce-demo)"
    ),
    dry_run: bool = _DRY_RUN,
    max_steps: int = _MAX_STEPS,
    data_dir: str = _DATA_DIR,
    device: str = _DEVICE,
    download: bool = _DOWNLOAD,
    block: int = _BLOCK,
    quiet: bool = _QUIET,
) -> None:
    """Run one of the paper's experiments (table4, demo, ablations), then compare the runs.

    One run per optimizer setting and seed, then a comparison. Finished runs are skipped and
    half-finished ones resumed, so the same command continues an interrupted reproduction."""
    from .reproduce import build_plan

    plan = build_plan(
        target,
        model=model,
        task_names=_items(tasks, str, "--tasks"),
        preset=preset,
        opts=_items(opts, str, "--opts"),
        seeds=_items(seeds, int, "--seeds"),
        out=out,
        max_steps=max_steps,
        data_dir=data_dir,
        device=device,
        download=download,
    )
    _run_plan(plan, dry_run, quiet, block)


def sweep(
    opt: str = typer.Option(..., "--opt", help="optimizer(s), comma-separated"),
    preset: str = typer.Option(None, help="named settings to start from (`clbench list presets`)"),
    model: str = typer.Option(None, help="model (a paper model brings its paper preset)"),
    tasks: str = typer.Option(None, help="comma-separated task sequence"),
    lr: list[str] = typer.Option(
        None,
        help="a learning rate of the grid, as `clbench run --lr` takes it (one value, or one per "
        "task: 1e-3,2e-3); repeat for more: --lr 1e-4 --lr 1e-3",
    ),
    density: list[float] = typer.Option(None, help="a density of the grid; repeat for more"),
    mask_interval: list[str] = typer.Option(
        None, help="a mask interval of the grid (`none`: static mask); repeat for more"
    ),
    seeds: str = _SEEDS,
    epochs: str = typer.Option(None, help="epochs per task, as `clbench run --epochs`"),
    max_steps: int = _MAX_STEPS,
    opt_arg: list[str] = typer.Option(None, help="a fixed optimizer hyperparameter, KEY=VALUE"),
    out: str = typer.Option(None, help="folder of the runs (default runs/sweep-<preset|model>)"),
    select: str = typer.Option(
        "average_accuracy",
        help="metric that picks the best setting per optimizer: average_accuracy, avg, t1, t2, "
        "t1_after_t2 (higher wins), mean_forgetting, forgetting (lower wins); ties: less "
        "forgetting",
    ),
    print_commands: bool = typer.Option(
        False, "--print-commands", help="print one `clbench run` command per point, run nothing"
    ),
    dry_run: bool = _DRY_RUN,
    data_dir: str = _DATA_DIR,
    device: str = _DEVICE,
    download: bool = _DOWNLOAD,
    block: int = _BLOCK,
    quiet: bool = _QUIET,
) -> None:
    """Grid search over learning rate, density, mask interval and seed.

    Run every point (skip
    finished, resume half-finished) and compare them, marking the best setting per optimizer;
    or print the points as `clbench run` commands for a scheduler."""
    from reports.compare import SELECT_METRICS

    from .sweep import Grid, build_plan, commands, parse_opt_arg

    if preset is None and model is None:
        raise UserError("clbench sweep needs --preset or --model to say what to train")
    if select not in SELECT_METRICS:
        raise UserError(f"--select takes one of {', '.join(SELECT_METRICS)}, got {select!r}")
    grid = Grid(
        optimizers=tuple(_items(opt, str, "--opt")),
        lrs=tuple(tuple(_items(v, float, "--lr", unique=False)) for v in lr or []),
        densities=tuple(density or []),
        mask_intervals=tuple(_mask_interval(v) for v in mask_interval or []),
        seeds=tuple(_items(seeds, int, "--seeds") or []),
        base={
            k: v
            for k, v in {
                "preset": preset,
                "model": model,
                "tasks": tuple(_items(tasks, str, "--tasks") or ()) or None,
                "epochs": _items(epochs, int, "--epochs", unique=False),
                "max_steps": max_steps,
                "opt_args": dict(parse_opt_arg(p) for p in opt_arg) if opt_arg else None,
                "data_dir": data_dir,
                "device": device,
                "download": download or None,
            }.items()
            if v is not None
        },
    )
    out_dir = Path(out) if out else Path("runs") / f"sweep-{preset or model}"
    plan = build_plan(grid, out_dir, select)  # resolves every point: bad values stop here
    if print_commands:
        for line in commands(grid, out_dir):
            typer.echo(line)
        return
    if len(grid.lrs) == 1 and len(grid.lrs[0]) > 1:
        console.print(
            f"note: --lr {','.join(f'{v:g}' for v in grid.lrs[0])} is one grid point with one "
            "learning rate per task; repeat --lr for a grid of learning rates"
        )
    _run_plan(plan, dry_run, quiet, block)


def _mask_interval(value: str) -> int | None:
    if value.strip().lower() in ("none", "static"):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"--mask-interval takes an integer or `none` (static mask), got {value!r}"
        ) from None


def _run_plan(plan, dry_run: bool, quiet: bool, block: int | None) -> None:
    """Print the plan; unless a dry run, execute it and print the comparison."""
    from reports.compare import console_table

    from . import distributed
    from .reproduce import compare_plan, execute

    _print_plan(plan)
    if dry_run:
        return
    if distributed.world_size() > 1:
        raise UserError(
            "reproduce and sweep run their plan in one process: under torchrun, start each "
            "planned run with `torchrun ... -m clbench run` (docs/gpu.md), then rerun this "
            "command without torchrun to compare"
        )
    n = len(plan.runs)

    def announce(i: int, r, action: str) -> None:
        label = f" ({r.label})" if r.label else ""
        console.print(
            f"[bold]run {i + 1}/{n}[/bold] {escape(r.root.name)}{escape(label)}: {action}",
            highlight=False,
        )

    roots = execute(plan.runs, console=console, progress=not quiet, announce=announce)
    result = compare_plan(plan, roots, block)
    console.print(console_table(result["table"]))
    for optimizer, label in result.get("best", {}).items():
        console.print(f"best {optimizer} by {plan.select}: {escape(label)}", highlight=False)
    if result["table"]["paper_setting"].astype(bool).any():
        console.print("the paper's numbers and our differences are in the report")
    console.print(f"report: {result['report']}", highlight=False)


def _print_plan(plan) -> None:
    from .reproduce import plan_table

    shared, columns, rows = plan_table(plan)
    console.print(
        f"[bold]{escape(plan.title)}[/bold]: {len(rows)} run{'s' * (len(rows) != 1)} in "
        + escape(str(plan.out)),
        highlight=False,
    )
    for keys in (("model", "tasks"), [k for k in shared if k not in ("model", "tasks")]):
        line = " · ".join(f"{k} {escape(shared[k])}" for k in keys)
        console.print(line, highlight=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    longest = max(len(row["run"]) for row in rows)
    for column in columns:
        if column == "run":
            table.add_column(column, min_width=longest, no_wrap=True)
        else:
            table.add_column(column, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*[escape(row[c]) for c in columns])
    console.print(table)
    console.print("lr, steps: per task; interval: steps between mask refreshes", highlight=False)
