"""`clbench bench`: the optimizers' speed and memory on real models (thin: parses options,
delegates to `clbench.bench`, prints and writes the results)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import storage
from .bench import (
    BenchConfig,
    TextTable,
    quick_config,
    render_markdown,
    run_bench,
    scaling_plot,
    tables,
)
from .errors import UserError

DEFAULTS = BenchConfig()
_DEFAULT_MODELS = ", ".join(DEFAULTS.models)

console = Console()


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def _names(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeated options, each possibly comma-separated."""
    if not values:
        return None
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def bench(
    model: list[str] = typer.Option(
        None,
        "--model",
        help=f"model to measure (repeatable; default {_DEFAULT_MODELS})",
    ),
    opt: list[str] = typer.Option(
        None, "--opt", help="optimizer to measure (repeatable; default every built-in one)"
    ),
    scaling: list[str] = typer.Option(
        None, help="models of the scaling part (repeatable; 'none' skips it)"
    ),
    json_path: Path = typer.Option(None, "--json", help="write the results as JSON"),
    markdown: Path = typer.Option(
        None, help="write a Markdown page (and its scaling plot beside it), e.g. docs/bench.md"
    ),
    repeats: int = typer.Option(
        None, help=f"timed turns per contender (default {DEFAULTS.repeats})"
    ),
    rounds: int = typer.Option(
        None,
        help="rounds of NanoAdam's step against AdamW, spread over the run; its targets take "
        f"their median (default {DEFAULTS.step_rounds})",
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    threads: int = typer.Option(None, help="torch CPU threads (default: torch's)"),
    batch_size: int = typer.Option(
        None, help=f"batch of the training-step parts (default {DEFAULTS.batch_size})"
    ),
    image_size: int = typer.Option(
        None, help=f"image size of the training-step parts (default {DEFAULTS.image_size})"
    ),
    quick: bool = typer.Option(False, "--quick", help="tiny models, few repeats: a smoke test"),
) -> None:
    """Time and size the optimizers side by side, each figure a ratio measured in one run.

    Optimizer step, state bytes, peak memory, training step, runner overhead and scaling."""
    import optimizers

    cfg = quick_config(DEFAULTS) if quick else DEFAULTS
    chosen = {
        "models": _names(model),
        "optimizers": _names(opt),
        "scaling": _names(scaling),
        "repeats": repeats,
        "step_rounds": rounds,
        "threads": threads,
        "batch_size": batch_size,
        "image_size": image_size,
        "device": device,
    }
    cfg = replace(cfg, **{k: v for k, v in chosen.items() if v is not None})
    if cfg.scaling == ("none",):
        cfg = replace(cfg, scaling=())
    _check(cfg, optimizers.available())

    with console.status("clbench bench") as status:
        results = run_bench(cfg, log=lambda message: status.update(f"clbench bench: {message}"))
    results["command"] = shlex.join(["clbench", *sys.argv[1:]])
    for table in tables(results):
        console.print(_rich(table))
        if table.note:
            console.print(table.note, style="dim", highlight=False)
    _write(results, json_path, markdown)


def _check(cfg: BenchConfig, registered: dict) -> None:
    from .models import timm_name

    for name in (*cfg.models, *cfg.scaling):
        timm_name(name)  # unknown model: a UserError naming the fix
    unknown = [o for o in cfg.optimizers if o not in registered]
    if unknown:
        raise UserError(
            f"unknown optimizer {unknown[0]!r}: pass --opt with one of {', '.join(registered)}"
        )
    if not cfg.models:
        raise UserError("--model: name at least one model, e.g. --model resnet18")
    for name, value in (
        ("--repeats", cfg.repeats),
        ("--rounds", cfg.step_rounds),
        ("--batch-size", cfg.batch_size),
    ):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if cfg.image_size < 8:
        raise UserError(f"--image-size must be at least 8, got {cfg.image_size}")
    if cfg.threads is not None and cfg.threads < 1:
        raise UserError(f"--threads must be at least 1, got {cfg.threads}")


def _rich(table: TextTable) -> Table:
    out = Table(title=table.title, title_justify="left")
    for i, col in enumerate(table.columns):
        out.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in table.rows:
        out.add_row(*row)
    return out


def _write(results: dict, json_path: Path | None, markdown: Path | None) -> None:
    """The JSON, the Markdown page and the scaling plot (beside the page, else the JSON)."""
    plot = None
    target = markdown or json_path
    if target is not None and results["scaling"]:
        plot = scaling_plot(results["scaling"], target.with_name(f"{target.stem}-scaling.png"))
        console.print(f"wrote {plot}")
    if json_path is not None:
        storage.write_json(json_path, results)
        console.print(f"wrote {json_path}")
    if markdown is not None:
        storage.write_text(markdown, render_markdown(results, plot.name if plot else None))
        console.print(f"wrote {markdown}")
