"""`clbench toy`: the paper's two-layer teacher-student experiment (thin: parses and delegates)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError
from .toy import ToyConfig

console = Console()
_D = ToyConfig()  # the defaults

_EXTRA = {"1": (1,), "2": (2,), "both": (1, 2)}


def toy(
    extra_neurons: str = typer.Option(
        "both", help="extra teacher neurons to learn: 1 (Table 7), 2 (Table 8) or both"
    ),
    seeds: int = typer.Option(_D.seeds, help="number of seeds, run as one batch"),
    seed: int = typer.Option(_D.seed, help="first seed (seeds are SEED, SEED+1, ...)"),
    density: float = typer.Option(
        _D.density,
        help="fraction of each layer updated in finetuning, ceil(density x size) entries: "
        f"{_D.kept(40)} of 40 first-layer and {_D.kept(20)} of 20 second-layer weights by "
        "default (the paper gives no count; this is the smallest of 0.1, 0.25, 0.5 at which "
        "both criteria learn the extra neurons, see docs/toy.md)",
    ),
    mask_interval: int = typer.Option(
        _D.mask_interval,
        help="re-select the updated entries every N steps (0: one mask, chosen at the start)",
    ),
    pretrain_steps: int = typer.Option(
        _D.pretrain_steps, help="gradient-descent steps on the teacher"
    ),
    finetune_steps: int = typer.Option(_D.finetune_steps, help="steps on teacher + extra"),
    pretrain_lr: float = typer.Option(
        _D.pretrain_lr,
        help="pretraining step size on the mean squared error (paper: 2, which "
        "diverges here; see docs/toy.md)",
    ),
    finetune_lr: float = typer.Option(
        _D.finetune_lr, help="finetuning step size on the mean squared error (paper: 1)"
    ),
    train_samples: int = typer.Option(
        _D.train_samples, help="fixed training inputs per seed (full batch)"
    ),
    test_samples: int = typer.Option(_D.test_samples, help="independent test inputs per seed"),
    out: Path = typer.Option(Path("runs/toy"), help="folder for toy.json, toy.md and toy.png"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """The paper's teacher-student toy (appendix C, Tables 7-8, Figure 7).

    Pretrain a 20-neuron ReLU student on a 2-neuron teacher, then finetune it on the teacher plus
    1 or 2 extra neurons updating, per layer, only the smallest-|weight| or only the
    largest-|gradient| entries.
    Reports test loss and L2 distance from the pretrained student beside the paper's numbers."""
    from .runner import Bar
    from .toy import PAPER_TABLE, describe, fmt, run_toy, write_outputs

    if extra_neurons not in _EXTRA:
        raise UserError(f"--extra-neurons takes 1, 2 or both, got {extra_neurons!r}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder")
    cfg = ToyConfig(
        extra_neurons=_EXTRA[extra_neurons],
        seeds=seeds,
        seed=seed,
        pretrain_steps=pretrain_steps,
        pretrain_lr=pretrain_lr,
        finetune_steps=finetune_steps,
        finetune_lr=finetune_lr,
        density=density,
        mask_interval=mask_interval,
        train_samples=train_samples,
        test_samples=test_samples,
    )
    console.print(f"[bold]clbench toy[/bold]: {seeds} seeds, +{extra_neurons} neurons -> {out}")
    bars: dict[str, Bar] = {}

    def progress(phase: str, done: int, total: int, loss: float) -> None:
        if phase not in bars:
            bars[phase] = Bar(not quiet, console, phase, total, 0)
        bars[phase].update(done, loss)
        if done == total:
            bars[phase].close()

    start = time.perf_counter()
    result = run_toy(cfg, progress=progress)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    try:
        paths = write_outputs(result, out)
    except OSError as exc:
        raise UserError(f"cannot write to {out} ({exc.strerror}): pass a writable --out") from None

    table = Table(title="teacher-student toy: mean ± std over seeds, ours over the paper's")
    table.add_column("extra")
    table.add_column("criterion")
    table.add_column("test loss", justify="right")
    table.add_column("L2 from pretrained", justify="right")
    for r in result["results"]:
        k = r["extra_neurons"]
        table.add_row(
            f"+{k}\n{PAPER_TABLE[k]}",
            r["criterion"].replace("_", " "),
            f"{fmt(r['test_loss'])}\n[dim]paper {fmt(r['paper']['test_loss'])}[/dim]",
            f"{fmt(r['l2'])}\n[dim]paper {fmt(r['paper']['l2'])}[/dim]",
        )
    console.print(table)
    console.print(describe(result), highlight=False)
    for v in result["verdicts"]:
        colour = {"agrees": "green", "disagrees": "red"}.get(v["verdict"], "yellow")
        console.print(f"[{colour}]{v['text']}[/{colour}]", highlight=False)
    console.print(f"wall time {result['wall_s']:.1f} s; report: {paths['md']}")


def register(app: typer.Typer) -> None:
    """Add `clbench toy` to the command line."""
    app.command("toy")(toy)
