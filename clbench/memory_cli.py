"""`clbench memory`: optimizer-state memory by the paper's formulas and, for a model, measured
(thin: parses options and delegates to `optimizers.memory`)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError

console = Console()


def register(app: typer.Typer) -> None:
    app.command("memory")(memory)


def memory(
    params: float = typer.Option(
        None, "--params", help="parameter count S, e.g. 6.275e9 (LLaMA-2 7B, the paper's example)"
    ),
    model: str = typer.Option(
        None,
        help="a model (`clbench list models` or any timm name): its S, and each "
        "optimizer's state_bytes() measured after one step (random weights, nothing downloaded)",
    ),
    density: float = typer.Option(0.01, help="density k of the sparse optimizers, in (0, 1]"),
    window: int = typer.Option(10, help="MicroAdam's window m (gradients kept)"),
) -> None:
    """Optimizer-state memory in GB: the NanoAdam paper's formulas (appendix E).

    With --model, also each optimizer's measured state_bytes() beside its formula."""
    from optimizers.memory import PAPER_FORMULAS, format_size

    if (params is None) == (model is None):
        raise UserError(
            "pass exactly one of --params S (a parameter count, e.g. 6.275e9) or --model NAME"
        )
    if not 0 < density <= 1:
        raise UserError(f"--density must lie in (0, 1], e.g. 0.01; got {density:g}")
    if window < 1:
        raise UserError(f"--window must be at least 1, e.g. 10; got {window}")
    if params is not None and params <= 0:
        raise UserError(f"--params must be a positive parameter count, e.g. 6.275e9; got {params}")

    net = None
    if model is not None:
        from .bench import build_model

        net = build_model(model)
        params = sum(p.numel() for p in net.parameters())
    table = Table(
        title=f"optimizer state (paper, appendix E): S = {params:.4g}, k = {density:g}, "
        f"m = {window}"
    )
    for col, justify in (("optimizer", "left"), ("formula", "left"), ("GB", "right")):
        table.add_column(col, justify=justify)
    for f in PAPER_FORMULAS:
        gb = format_size(f.bytes(params, density, window) / 1e9)
        table.add_row(f.label.replace("window m", f"window m = {window}"), f.expression, gb)
    console.print(table)
    if net is not None:
        console.print(_measured_table(model, net, density, window))


def _measured_table(name: str, net, density: float, window: int) -> Table:
    """Each registered optimizer's state after one step on `net`, beside its formula."""
    import optimizers
    from optimizers.benchmark import attach, fixed_gradients, sparse_hparams
    from optimizers.memory import PAPER_ROW, format_size, measured_state_bytes, state_formula

    attach(net, fixed_gradients(net))
    total = sum(p.numel() for p in net.parameters())
    table = Table(
        title=f"state_bytes() after one step on {name} with a 10-class head (S = {total:,}), MB",
        caption="formula: how the optimizer is configured (rounding per chunk or block, heads "
        "and norms updated densely with fp32 AdamW: 8·S_dense); S: the entries its main term "
        "covers; paper: the appendix-E formula on all S parameters",
    )
    columns = ("optimizer", "formula", "S", "formula MB", "measured MB", "diff", "paper MB")
    for col in columns:
        table.add_column(col, justify="left" if col in ("optimizer", "formula") else "right")
    for opt_name in optimizers.available():
        hparams = sparse_hparams(opt_name, density, window)
        try:
            measured = measured_state_bytes(opt_name, net, **hparams)
        except optimizers.OptimizerError as exc:
            table.add_row(opt_name, f"skipped: {exc}", *[""] * 5)
            continue
        formula = state_formula(opt_name, net, **hparams)
        paper = PAPER_ROW.get(opt_name)
        table.add_row(
            opt_name,
            formula.expression if formula else "—",
            f"{formula.params:,}" if formula else "—",
            format_size(formula.bytes / 1e6) if formula else "—",
            format_size(measured / 1e6),
            f"{100 * (measured / formula.bytes - 1):+.2f}%" if formula else "—",
            format_size(paper.bytes(total, density, window) / 1e6) if paper else "—",
        )
    return table
