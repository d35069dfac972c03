"""`clbench sweep`: a grid over learning rate, density, mask interval and seed, as the paper
tuned its learning rates by grid search.

Every grid point is one `clbench run` with the same options; `run_command` writes it out (one
line per point, for a scheduler), `build_plan` resolves it for running in this process (through
`reproduce.execute`, which skips finished runs and resumes half-finished ones). A learning rate
is written as for `clbench run`: one value, or one per task separated by commas; the grid lists
several such values.
"""

from __future__ import annotations

import ast
import itertools
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optimizers
from reports.compare import format_lr

from .config import resolve
from .errors import UserError
from .reproduce import Plan, planned_run

#: option key (as `clbench run` builds it) -> its flag, in the order commands are written
FLAGS = {
    "preset": "--preset",
    "model": "--model",
    "tasks": "--tasks",
    "epochs": "--epochs",
    "optimizer": "--opt",
    "lr": "--lr",
    "density": "--density",
    "mask_interval": "--mask-interval",
    "opt_args": "--opt-arg",
    "seed": "--seed",
    "max_steps": "--max-steps",
    "data_dir": "--data-dir",
    "device": "--device",
    "download": "--download",
    "name": "--name",
    "out": "--out",
}


@dataclass(frozen=True)
class Grid:
    """What a sweep varies, and the options every point shares (keys of `FLAGS`)."""

    optimizers: tuple[str, ...]
    lrs: tuple[tuple[float, ...], ...] = ()  # each one value or one per task; () = preset's
    densities: tuple[float, ...] = ()
    mask_intervals: tuple[int | None, ...] = ()  # None: a static mask
    seeds: tuple[int, ...] = ()
    base: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Point:
    options: dict[str, Any]  # `clbench run` options (keys of `FLAGS`)
    label: str  # what the point sets, e.g. "lr=1e-3 density=0.05"


def points(grid: Grid, out: Path) -> list[Point]:
    """Every grid point, optimizer by optimizer; density and mask interval vary only for the
    optimizers that take them. The run directory (and run name) says what the point sets."""
    if not grid.optimizers:
        raise UserError("--opt is empty: name at least one optimizer")
    takers = {o: optimizers.get(o) for o in grid.optimizers}
    for key, values in (("density", grid.densities), ("mask_interval", grid.mask_intervals)):
        if values and not any(spec.accepts(key) for spec in takers.values()):
            flag = "--" + key.replace("_", "-")
            raise UserError(f"none of {', '.join(grid.optimizers)} takes {flag}: drop it")
    result = []
    for opt, spec in takers.items():
        axes = [
            [("lr", lr) for lr in grid.lrs] or [None],
            [("density", d) for d in grid.densities if spec.accepts("density")] or [None],
            [("mask_interval", m) for m in grid.mask_intervals if spec.accepts("mask_interval")]
            or [None],
            [("seed", s) for s in grid.seeds] or [None],
        ]
        for combo in itertools.product(*axes):
            chosen = dict(c for c in combo if c is not None)
            options = {**grid.base, "optimizer": opt}
            opt_args = dict(grid.base.get("opt_args") or {})
            for key, value in chosen.items():
                if key == "mask_interval" and value is None:
                    opt_args["mask_interval"] = None  # `--mask-interval` takes integers only
                else:
                    options[key] = list(value) if key == "lr" else value
            if opt_args:
                options["opt_args"] = opt_args
            seed = chosen.pop("seed", None)
            if seed is None:
                seed = resolve({**options, "out": str(out / "probe")}).seed
            stem = "-".join([opt, *(_stem(k, v) for k, v in chosen.items())])
            name = f"{stem}-seed{seed}"
            options.update(name=name, out=str(out / name))
            label = " ".join(f"{k}={_show(k, v)}" for k, v in chosen.items())
            result.append(Point(options, label))
    return result


def _show(key: str, value: Any) -> str:
    if key == "mask_interval":
        return "static" if value is None else str(value)
    if key == "lr":
        return "/".join(format_lr(v) for v in value)
    return f"{value:g}"


def _stem(key: str, value: Any) -> str:
    """A grid value in a directory name: lr0.001_0.002, d0.05, mi20, static."""
    if key == "mask_interval":
        return "static" if value is None else f"mi{value}"
    prefix = {"lr": "lr", "density": "d"}[key]
    return prefix + _show(key, value).replace("/", "_")


def build_plan(grid: Grid, out: str | Path, select: str = "average_accuracy") -> Plan:
    """Every grid point resolved, with its steps and directory state; `select` is the metric
    the compare picks each optimizer's best setting by."""
    out = Path(out)
    found = points(grid, out)
    names = [p.options["name"] for p in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"the grid names {repeated[0]} twice: list each value once")
    runs = [planned_run(resolve(p.options), p.label) for p in found]
    return Plan(f"sweep {out.name}", out, runs, select)


def parse_opt_arg(pair: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as `clbench run --opt-arg` reads it: a Python literal, else the text."""
    key, sep, raw = pair.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--opt-arg takes KEY=VALUE, got {pair!r}")
    try:
        return key.strip(), ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key.strip(), raw


def _opt_arg_value(value: Any) -> str:
    """The text `--opt-arg KEY=TEXT` reads back as `value` (`clbench run` tries a Python literal
    first and keeps the text otherwise)."""
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return repr(value)


def run_command(options: dict[str, Any]) -> str:
    """The `clbench run` command line of one grid point (shell-quoted)."""
    argv = ["clbench", "run"]
    for key, flag in FLAGS.items():
        value = options.get(key)
        if value is None or value is False:
            continue
        if key == "download":
            argv.append(flag)
        elif key == "opt_args":
            for k, v in value.items():
                argv += [flag, f"{k}={_opt_arg_value(v)}"]
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)]
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return shlex.join(argv)


def commands(grid: Grid, out: str | Path) -> list[str]:
    """One `clbench run` command per grid point, in the order the sweep runs them."""
    return [run_command(p.options) for p in points(grid, Path(out))]
