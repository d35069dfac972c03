"""RunConfig: every setting of one run, resolved from defaults, a preset and explicit options,
validated before any work starts, and saved as config.json."""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optimizers
import tasks

from . import distributed, models
from .errors import UserError
from .presets import MODEL_PRESETS, PRESETS


def cache_dir() -> Path:
    """Where clbench caches pretraining results: $CLBENCH_CACHE, else ~/.cache/clbench."""
    return Path(os.environ.get("CLBENCH_CACHE", Path.home() / ".cache" / "clbench"))


def default_data_dir() -> Path:
    return Path(os.environ.get("CLBENCH_DATA", cache_dir() / "data"))


@dataclass(frozen=True)
class RunConfig:
    name: str
    out: str
    model: str = "resnet18"
    pretrained: bool = True
    weights: str | None = None
    image_size: int | None = None
    patch_size: int | None = None
    tasks: tuple[str, ...] = ("cifar10", "flowers102")
    epochs: tuple[int, ...] = (5, 5)
    lr: tuple[float, ...] = (1e-3, 1e-3)
    batch_size: int = 128
    optimizer: str = "adamw"
    opt_hparams: dict[str, Any] = field(default_factory=dict)
    label_smoothing: float = 0.0
    schedule: str = "none"
    eval_every: int = 50
    eval_samples: int | None = 1000
    eval_batch_size: int = 256
    log_every: int = 10
    pretrain: str | None = None
    pretrain_epochs: int = 5
    pretrain_lr: float = 1e-3
    seed: int = 42
    device: str = "auto"
    data_dir: str = ""
    download: bool = False
    max_steps: int | None = None
    checkpoint_every: int | None = None
    augment: bool = False
    freeze_bn_stats: bool = False
    fused_backward: bool = False
    on_nan: str = "stop"
    num_workers: int = 0
    save_shift_matrices: bool = True
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        for key in ("tasks", "epochs", "lr"):
            kw[key] = tuple(kw[key])
        return cls(**kw)


#: options that may differ between a run and its resumption
RESUME_FREE = {"device", "data_dir", "download", "num_workers", "out"}

_SCHEDULES = ("none", "cosine")


def _per_task(value: Any, n: int, what: str, explicit: bool) -> tuple:
    """A per-task list: one value is broadcast; an explicit list must have one value per task;
    a preset's list is cut or extended with its last value."""
    values = tuple(value) if isinstance(value, list | tuple) else (value,)
    if len(values) == 1:
        return values * n
    if len(values) == n:
        return values
    if explicit:
        raise UserError(
            f"--{what} has {len(values)} values but there are {n} tasks: give one value or {n}"
        )
    return (values + (values[-1],) * n)[:n]


def resolve(options: dict[str, Any]) -> RunConfig:
    """Defaults < preset (explicit, or the paper's for a paper model) < explicit `options`.

    `options` holds only what the user gave (None-valued entries are dropped). Special keys:
    ``density``/``mask_interval``/``opt_args`` go to the optimizer's hyperparameters.
    """
    options = {k: v for k, v in options.items() if v is not None}
    preset_name = options.pop("preset", None)
    if preset_name is None and options.get("model") in MODEL_PRESETS:
        preset_name = MODEL_PRESETS[options["model"]]
    preset = None
    if preset_name is not None:
        if preset_name not in PRESETS:
            close = difflib.get_close_matches(preset_name, list(PRESETS), n=1)
            hint = f" — did you mean {close[0]}?" if close else ""
            raise UserError(f"unknown preset {preset_name!r}{hint} (known: {', '.join(PRESETS)})")
        preset = PRESETS[preset_name]

    values: dict[str, Any] = dict(preset.options) if preset else {}
    explicit = {
        k: v for k, v in options.items() if k not in ("density", "mask_interval", "opt_args")
    }
    values.update(explicit)
    opt = values.get("optimizer", "adamw")
    spec = optimizers.get(opt)

    n_tasks = len(values.get("tasks", RunConfig.tasks))
    if n_tasks == 0:
        raise UserError("--tasks is empty: name at least one task")
    if "lr" in explicit:
        values["lr"] = _per_task(explicit["lr"], n_tasks, "lr", True)
    else:
        preset_lr = preset.lrs.get(opt) if preset else None
        values["lr"] = _per_task(preset_lr or spec.lr, n_tasks, "lr", False)
    values["epochs"] = _per_task(
        values.get("epochs", RunConfig.epochs), n_tasks, "epochs", "epochs" in explicit
    )

    hparams = dict(preset.opt_hparams.get(opt, {})) if preset else {}
    for key in ("density", "mask_interval"):
        if key in options:
            if not spec.accepts(key):
                flag = "--" + key.replace("_", "-")
                raise UserError(f"optimizer {opt!r} does not take {flag}; drop it or pick another")
            hparams[key] = options[key]
    hparams.update(options.get("opt_args", {}))
    values["opt_hparams"] = hparams
    values["preset"] = preset_name
    if not values.get("data_dir"):
        values["data_dir"] = str(default_data_dir())
    if "name" not in values:
        values["name"] = (
            "-".join(
                [values.get("model", RunConfig.model), opt, *values.get("tasks", RunConfig.tasks)]
            )
            .replace("/", "_")
            .replace(":", "_")
        )
    if "out" not in values:
        values["out"] = str(Path("runs") / values["name"])
    cfg = RunConfig(**{k: v for k, v in values.items() if k in _FIELDS})
    validate(cfg)
    return cfg


_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


#: integer options and their smallest valid value (None, where allowed, means "not set")
_MINIMUMS = {
    "batch_size": 1,
    "eval_every": 1,
    "log_every": 1,
    "eval_samples": 1,
    "max_steps": 1,
    "checkpoint_every": 1,
    "image_size": 8,
    "patch_size": 1,
    "pretrain_epochs": 1,
    "num_workers": 0,
}


def optimizer_hparams(cfg: RunConfig) -> dict[str, Any]:
    """The optimizer hyperparameters as the optimizer takes them: config.json keeps plain JSON
    values, so dtypes given as text ("bfloat16", "torch.float32") become torch dtypes here."""
    import torch

    out = dict(cfg.opt_hparams)
    for key, value in out.items():
        if key.endswith("dtype") and isinstance(value, str):
            dtype = getattr(torch, value.removeprefix("torch."), None)
            if not isinstance(dtype, torch.dtype):
                raise UserError(
                    f"--opt-arg {key}={value}: not a torch dtype (e.g. float32, bfloat16)"
                )
            out[key] = dtype
    return out


def _check_optimizer(cfg: RunConfig) -> None:
    """Build the optimizer once on a dummy parameter so a bad hyperparameter value is one line
    now, not a traceback after the model is built."""
    import torch

    dummy = [torch.nn.Parameter(torch.zeros(8))]
    try:
        opt = optimizers.create(cfg.optimizer, dummy, lr=cfg.lr[0], **optimizer_hparams(cfg))
        if cfg.fused_backward:
            optimizers.FusedBackward(opt).remove()
    except optimizers.FusedBackwardError as exc:
        raise UserError(f"--fused-backward: {exc}") from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, UserError | optimizers.OptimizerError):
            raise  # already one line that names the fix
        raise UserError(f"optimizer {cfg.optimizer!r} rejects its settings: {exc}") from None


def validate(cfg: RunConfig) -> None:
    """Every check that can be made before work starts; each failure is one `UserError` line."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    models.timm_name(cfg.model)
    repeated = sorted({t for t in cfg.tasks if cfg.tasks.count(t) > 1})
    need(not repeated, f"--tasks names {', '.join(repeated)} twice: each task may appear once")
    for name in cfg.tasks + ((cfg.pretrain,) if cfg.pretrain else ()):
        tasks.get(name)
    spec = optimizers.get(cfg.optimizer)
    for key in cfg.opt_hparams:
        need(
            spec.accepts(key),
            f"optimizer {cfg.optimizer!r} does not take {key!r} "
            f"(it takes: {', '.join(['lr', *spec.defaults])})",
        )
    need(all(lr > 0 for lr in cfg.lr), f"--lr must be > 0, got {list(cfg.lr)}")
    need(all(e >= 1 for e in cfg.epochs), f"--epochs must be >= 1, got {list(cfg.epochs)}")
    for key, low in _MINIMUMS.items():
        value = getattr(cfg, key)
        flag = "--" + key.replace("_", "-")
        need(value is None or value >= low, f"{flag} must be >= {low}, got {value}")
    need(
        0.0 <= cfg.label_smoothing < 1.0,
        f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}",
    )
    need(
        cfg.schedule in _SCHEDULES,
        f"--schedule must be one of {', '.join(_SCHEDULES)}, got {cfg.schedule!r}",
    )
    need(cfg.on_nan in ("stop", "skip"), f"--on-nan must be stop or skip, got {cfg.on_nan!r}")
    need(cfg.pretrain_lr > 0, f"--pretrain-lr must be > 0, got {cfg.pretrain_lr}")
    density = cfg.opt_hparams.get("density")
    need(density is None or 0 < density <= 1, f"--density must be in (0, 1], got {density}")
    interval = cfg.opt_hparams.get("mask_interval")
    need(interval is None or interval >= 1, f"--mask-interval must be >= 1, got {interval}")
    need(
        cfg.device == "auto" or cfg.device.split(":")[0] in ("cpu", "cuda", "mps"),
        f"--device must be auto, cpu, cuda[:N] or mps, got {cfg.device!r}",
    )
    check_processes(cfg)
    _check_optimizer(cfg)
    if cfg.weights is not None:
        need(
            Path(cfg.weights).is_file(),
            f"weights file {cfg.weights!r} not found: pass an existing --weights PATH",
        )


def check_processes(cfg: RunConfig) -> None:
    """Under torchrun `--batch-size` is the global batch, shared out evenly over the processes.
    (Also checked when a run is resumed, possibly with another number of processes.)"""
    n = distributed.world_size()
    if cfg.fused_backward and n > 1:
        raise UserError(
            "--fused-backward updates each parameter inside backward, before gradients could be "
            "summed over processes: run it in one process, or drop --fused-backward"
        )
    if cfg.batch_size % n:
        raise UserError(
            f"--batch-size {cfg.batch_size} (the global batch) does not split evenly over {n} "
            f"processes: pass a multiple of {n}"
        )


def saved_config(out: str) -> RunConfig:
    """The configuration a run directory was started with (for `--resume` alone)."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise UserError(f"nothing to resume in {out}: run without --resume to start it")
    import json

    cfg = RunConfig.from_dict(json.loads(path.read_text())["config"])
    return dataclasses.replace(cfg, out=str(out))


def config_diff(saved: RunConfig, new: RunConfig) -> list[str]:
    """Keys whose values differ, ignoring those free to change on resume."""
    a, b = saved.to_dict(), new.to_dict()
    return sorted(k for k in a if k not in RESUME_FREE and a[k] != b.get(k))
