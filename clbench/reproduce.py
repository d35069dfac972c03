"""`clbench reproduce`: the paper's experiments as plans of runs, executed one after another.

A plan is a list of run configurations, one run directory per (setting, seed) under one folder.
Executing it skips runs that already finished with the same configuration, resumes half-finished
ones, refuses a folder that holds a run of other settings, and ends in `reports.compare` over the
plan's runs. The same machinery executes `clbench sweep` grids (clbench/sweep.py).

Targets (PAPER.md §4 and appendices D, G.4):
- ``table4``: the paper's CIFAR-10 -> Flowers102 runs of one model (presets paper-<model>).
- ``demo``: the same three optimizers on the offline demo (preset ``demo``).
- ``ablation-criteria``: NanoAdam selecting small weights, large weights, random entries or large
  gradients.
- ``ablation-mask``: NanoAdam with its dynamic mask against a static one (``mask_interval=None``).
- ``ablation-lr``: learning rates 1e-5, 1e-4, 1e-3 for NanoAdam, MicroAdam and AdamW.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optimizers
import tasks as task_registry
from reports.compare import format_lr
from tasks import InputSpec

from . import storage
from .config import RunConfig, config_diff, resolve
from .errors import UserError
from .presets import MODEL_PRESETS

TARGETS = ("table4", "demo", "ablation-criteria", "ablation-mask", "ablation-lr")
#: the optimizers of the paper's Table 4, in its order of discussion
PAPER_OPTIMIZERS = ("nanoadam", "microadam", "adamw")
#: appendix G.4: the learning rates of the LR ablation
ABLATION_LRS = (1e-5, 1e-4, 1e-3)
#: appendix D: NanoAdam's selection criteria (the paper's small weights first)
ABLATION_CRITERIA = ("small_weights", "large_weights", "random", "large_grads")
#: training-set sizes of the tasks that need a download, so that a plan counts its steps without
#: the data (CIFAR-10: 50000 train images; Flowers102: its official train split, 1020 images).
#: Offline tasks are counted by building their training set.
TRAIN_SIZES = {"cifar10": 50_000, "flowers102": 1_020}

#: states of a planned run's directory
NEW, COMPLETE, DIVERGED, PARTIAL, CONFLICT = "new", "complete", "diverged", "partial", "conflict"
NOT_A_RUN = "no config.json"


@dataclass(frozen=True)
class Variant:
    """One setting of an experiment: the optimizer, the run options that set it apart, the
    run-directory stem and a human label of what is varied."""

    optimizer: str
    stem: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class PlannedRun:
    cfg: RunConfig
    label: str  # what sets this run apart, e.g. "criterion=random" ("" for the optimizer alone)
    steps: tuple[int | None, ...]  # optimizer steps per task (None: unknown without the data)
    state: str  # NEW, COMPLETE, DIVERGED, PARTIAL or CONFLICT
    differs: tuple[str, ...] = ()  # CONFLICT: the settings that differ from the saved run

    @property
    def root(self) -> Path:
        return Path(self.cfg.out)


@dataclass(frozen=True)
class Plan:
    title: str
    out: Path
    runs: list[PlannedRun]
    #: `reports.compare` picks the best group per optimizer by this metric (None: no pick)
    select: str | None = None

    @property
    def compare_dir(self) -> Path:
        return self.out / "compare"


# --------------------------------------------------------------------------------------------
# plans


def variants(target: str, opts: list[str] | None, common: dict[str, Any]) -> list[Variant]:
    """The settings `target` compares; `common` holds the run options they share."""
    if opts is not None and target in ("ablation-criteria", "ablation-mask"):
        raise UserError(f"{target} varies NanoAdam alone: drop --opts")
    if target in ("table4", "demo"):
        return [Variant(o, o) for o in opts or PAPER_OPTIMIZERS]
    if target == "ablation-lr":
        return [
            Variant(o, f"{o}-lr{format_lr(lr)}", {"lr": [lr]}, f"lr={format_lr(lr)}")
            for o in opts or PAPER_OPTIMIZERS
            for lr in ABLATION_LRS
        ]
    if target == "ablation-criteria":
        return [
            Variant(
                "nanoadam",
                f"nanoadam-{c.replace('_', '-')}",
                {"opt_args": {"criterion": c}},
                f"criterion={c}",
            )
            for c in ABLATION_CRITERIA
        ]
    if target == "ablation-mask":
        interval = _nanoadam_hparams(common).get("mask_interval") or 100
        return [
            Variant(
                "nanoadam",
                "nanoadam-dynamic-mask",
                {"opt_args": {"mask_interval": interval}},
                f"mask_interval={interval}",
            ),
            Variant(
                "nanoadam",
                "nanoadam-static-mask",
                {"opt_args": {"mask_interval": None}},
                "mask_interval=static",
            ),
        ]
    raise UserError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")


def _nanoadam_hparams(common: dict[str, Any]) -> dict[str, Any]:
    """NanoAdam's hyperparameters in the setting `common` (its preset's, else its defaults)."""
    probe = resolve({**common, "optimizer": "nanoadam"})
    return {**optimizers.get("nanoadam").defaults, **probe.opt_hparams}


def build_plan(
    target: str,
    *,
    model: str | None = None,
    task_names: list[str] | None = None,
    preset: str | None = None,
    opts: list[str] | None = None,
    seeds: list[int] | None = None,
    out: str | Path | None = None,
    max_steps: int | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    download: bool | None = None,
) -> Plan:
    """Every run of `target` with its resolved configuration, step counts and directory state."""
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    if target == "table4":
        if model not in MODEL_PRESETS:
            raise UserError(
                f"reproduce table4 needs --model {' | '.join(MODEL_PRESETS)}"
                + (f", got {model!r}" if model else "")
            )
        if task_names or preset:
            raise UserError("table4 is the paper's CIFAR-10 -> Flowers102: drop --tasks/--preset")
        preset = MODEL_PRESETS[model]
    elif target == "demo":
        if model or task_names or preset:
            raise UserError(
                "reproduce demo runs the `demo` preset: drop --model/--tasks/--preset, or use an "
                "ablation or `clbench sweep` for other settings"
            )
        preset = "demo"
    elif preset is None and model is None:
        preset = "demo"  # ablations default to the offline demo's model and tasks
    common = {
        "preset": preset,
        "model": model,
        "tasks": tuple(task_names) if task_names else None,
        "max_steps": max_steps,
        "data_dir": data_dir,
        "device": device,
        "download": download or None,
    }
    base = resolve(common)  # every check of the shared options, once
    tag = f"table4-{model}" if target == "table4" else target
    if target.startswith("ablation") and model:
        tag = f"{target}-{model}"
    default = "reproduce-demo" if target == "demo" else tag  # runs/demo: the quick start's run
    out = Path(out) if out is not None else Path("runs") / default
    runs = []
    for variant in variants(target, opts, common):
        for seed in seeds or [base.seed]:
            stem = f"{variant.stem}-seed{seed}"
            options = {
                **common,
                **variant.options,
                "optimizer": variant.optimizer,
                "seed": seed,
                "name": f"{tag}-{stem}",
                "out": str(out / stem),
            }
            runs.append(planned_run(resolve(options), variant.label))
    select = "average_accuracy" if target == "ablation-lr" else None
    return Plan(f"reproduce {tag}", out, runs, select)


def planned_run(cfg: RunConfig, label: str = "") -> PlannedRun:
    state, differs = run_state(cfg)
    return PlannedRun(cfg, label, planned_steps(cfg), state, tuple(differs))


def run_state(cfg: RunConfig) -> tuple[str, list[str]]:
    """What `cfg.out` holds: nothing yet, a finished (or diverged) run of these settings, a
    half-finished one, or something else (CONFLICT, with the settings that differ)."""
    root = Path(cfg.out)
    if not root.exists() or not any(root.iterdir()):
        return NEW, []
    config = root / "config.json"
    if not config.is_file():
        return CONFLICT, [NOT_A_RUN]
    saved = RunConfig.from_dict(storage.read_json(config)["config"])
    differs = config_diff(saved, cfg)
    if differs:
        return CONFLICT, differs
    summary = root / "summary.json"
    if summary.is_file():
        status = storage.read_json(summary).get("status", COMPLETE)
        return (COMPLETE if status == COMPLETE else DIVERGED), []
    return PARTIAL, []


def check_conflicts(runs: list[PlannedRun]) -> None:
    """One `UserError` naming the first folder that holds a run of other settings, and the fix."""
    for r in runs:
        if r.state == CONFLICT:
            what = (
                "files that are not a run"
                if r.differs == (NOT_A_RUN,)
                else f"a run with other settings ({', '.join(r.differs)})"
            )
            raise UserError(
                f"{r.root} holds {what}: pass another --out, or delete that folder to start the "
                "run again"
            )


# --------------------------------------------------------------------------------------------
# step counts


def train_size(name: str, cfg: RunConfig) -> int | None:
    """Training images of task `name`: from `TRAIN_SIZES`, else by building an offline task's
    training set; None for a task that would need its data downloaded."""
    if name in TRAIN_SIZES:
        return TRAIN_SIZES[name]
    return _offline_train_size(name, cfg.image_size or 32, cfg.data_dir)


@functools.lru_cache(maxsize=32)
def _offline_train_size(name: str, image_size: int, data_dir: str) -> int | None:
    task = task_registry.get(name)
    if not task.offline:
        return None
    train, _ = task.datasets(InputSpec(image_size), Path(data_dir))
    return len(train)


def planned_steps(cfg: RunConfig) -> tuple[int | None, ...]:
    """Optimizer steps per task, counted as the runner counts them (`--max-steps` included)."""
    from .runner import task_steps

    sizes = {name: train_size(name, cfg) for name in dict.fromkeys(cfg.tasks)}
    return tuple(
        None if sizes[name] is None else task_steps(cfg, sizes[name], t)
        for t, name in enumerate(cfg.tasks)
    )


# --------------------------------------------------------------------------------------------
# execution


def execute(
    runs: list[PlannedRun],
    console: Any = None,
    progress: bool = True,
    announce: Callable[[int, PlannedRun, str], None] | None = None,
) -> list[Path]:
    """Run the plan in order, in this process: skip finished runs, resume half-finished ones.
    A run that diverges is recorded (summary.json says so) and the plan goes on. Returns the
    run directories that hold a result (finished or diverged)."""
    from .runner import TrainingDiverged
    from .runner import run as run_sequence

    check_conflicts(runs)
    done = []
    for i, r in enumerate(runs):
        state, _ = run_state(r.cfg)  # again: an earlier run of the plan may share the folder
        action = {COMPLETE: "skip (finished)", DIVERGED: "skip (diverged before)"}.get(
            state, "resume" if state == PARTIAL else "run"
        )
        if announce is not None:
            announce(i, r, action)
        if state in (NEW, PARTIAL):
            try:
                run_sequence(r.cfg, resume=state == PARTIAL, progress=progress, console=console)
            except TrainingDiverged as exc:  # recorded in its summary.json; the plan goes on
                if console is not None:
                    console.print(f"[red]diverged:[/red] {exc}", highlight=False)
        if (r.root / "summary.json").is_file():
            done.append(r.root)
    return done


def compare_plan(plan: Plan, roots: list[Path], block: int | None = None) -> dict:
    """`reports.compare` over the plan's runs that hold a result, into `plan.compare_dir`."""
    from reports import compare

    if not roots:
        raise UserError(f"no run of {plan.title} has a result to compare in {plan.out}")
    return compare(roots, plan.compare_dir, block, select=plan.select)


# --------------------------------------------------------------------------------------------
# the plan as text


def _effective_hparams(cfg: RunConfig) -> dict[str, Any]:
    return {**optimizers.get(cfg.optimizer).defaults, **cfg.opt_hparams}


def _per_task(values: tuple, fmt: Callable[[Any], str], sep: str = " / ") -> str:
    return sep.join(fmt(v) for v in values)


def describe(r: PlannedRun) -> dict[str, str]:
    """A planned run's settings as the plan table shows them."""
    cfg, hp = r.cfg, _effective_hparams(r.cfg)
    density = hp.get("density")
    interval = hp.get("mask_interval", "—")
    sparse = optimizers.get(cfg.optimizer).accepts("mask_interval")
    return {
        "run": Path(cfg.out).name,
        "optimizer": cfg.optimizer,
        "setting": r.label,
        "seed": str(cfg.seed),
        "lr": _per_task(cfg.lr, format_lr, "/"),
        "density": "—" if density is None else f"{100 * density:g}%",
        "interval": ("static" if interval is None else str(interval)) if sparse else "—",
        "window": str(hp["window"]) if "window" in hp else "—",
        "epochs": _per_task(cfg.epochs, str, " + "),
        "batch": str(cfg.batch_size),
        "label smoothing": f"{cfg.label_smoothing:g}",
        "schedule": cfg.schedule,
        "steps": _per_task(r.steps, lambda s: "?" if s is None else str(s), " + "),
        "state": r.state,
    }


#: plan-table columns that, when every run has the same value, are shown once above the table
SHARED_COLUMNS = ("epochs", "batch", "label smoothing", "schedule")
#: what the run directory's name already says
_NAMED = ("optimizer", "seed", "setting")


def plan_table(plan: Plan) -> tuple[dict[str, str], list[str], list[dict[str, str]]]:
    """(settings shared by every run, columns, one row per run) for printing a plan: a setting
    every run shares is shown once, a column no run uses ("—" throughout) not at all."""
    rows = [describe(r) for r in plan.runs]
    first = plan.runs[0].cfg
    shared = {
        "model": first.model,
        "tasks": " -> ".join(first.tasks),
        **{c: rows[0][c] for c in SHARED_COLUMNS if all(row[c] == rows[0][c] for row in rows)},
    }
    columns = [
        c
        for c in rows[0]
        if c not in shared and c not in _NAMED and any(row[c] != "—" for row in rows)
    ]
    return shared, columns, rows
