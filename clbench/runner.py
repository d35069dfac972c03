"""The continual runner: finetune one model on a sequence of tasks, measuring forgetting as it goes.

`run` is the whole loop, top to bottom; every detail is one call away. See DESIGN.md for the
run-directory contract it writes. Under torchrun every process runs this loop on its share of each
batch (`clbench.distributed`); process 0 alone writes the run directory.
"""

from __future__ import annotations

import math
import platform
import random
import resource
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

import optimizers
import tasks as task_registry
from reports.markdown import write_run_report

from . import __version__, distributed, metrics, shift, storage
from .config import RunConfig, check_processes, config_diff, optimizer_hparams
from .data import batch_index_lists, epoch_order, iterate, seed_everything
from .errors import UserError
from .models import MultiHeadNet, create_backbone, input_spec
from .pretrain import pretrain_backbone
from .training import evaluate, train_step

SCHEMA = 1
TRAIN, EVAL, PRETRAIN = 1, 2, 3  # phases for derived seeds


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message says where and what to try."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the current step finished and a checkpoint was written."""

    def __init__(self, signum: int, step: int, out: str):
        self.signum, self.step, self.out = signum, step, out
        super().__init__(
            f"stopped by signal {signal.Signals(signum).name} after step {step}; checkpoint "
            f"written. Resume with: clbench run --resume --out {out}"
        )


class StopSignals:
    """While active, SIGINT and SIGTERM only set `signum`; the loop checks it after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Position:
    """Where the run is: task, epoch within it, batches done in that epoch, steps done."""

    task: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0  # global optimizer steps
    task_step: int = 0
    loss_sum: float = 0.0  # train loss summed since the last train_log row
    loss_count: int = 0
    nan_skips: int = 0  # batches skipped for a non-finite loss (--on-nan skip)


@dataclass
class Context:
    """What the loop's helpers share."""

    cfg: RunConfig
    rd: storage.RunDir
    model: MultiHeadNet
    data: list[TaskData]
    rec: Recorder
    device: torch.device
    progress: bool = True
    console: Any = None
    stop: StopSignals | None = None
    tracker: Resources | None = None

    def __post_init__(self) -> None:
        self.tracker = Resources(self.device)


@dataclass
class TaskData:
    task: task_registry.Task
    train: Any
    test: Any
    curve_indices: torch.Tensor  # the test subsample used for forgetting curves


class Recorder:
    """Rows of the run's CSV files, kept in memory and flushed atomically as a whole."""

    def __init__(self, rd: storage.RunDir, task_names: list[str]):
        self.rd, self.task_names = rd, task_names
        self.curves: list[dict] = []
        self.train_log: list[dict] = []
        self.acc_rows: list[tuple[str, list[float]]] = []
        self.shift_rows: list[dict] = []

    def counts(self) -> dict[str, int]:
        return {"curves": len(self.curves), "train_log": len(self.train_log)}

    def restore(self, counts: dict[str, int], acc_rows: list, shift_rows: list[dict]) -> None:
        """Reload rows written before the checkpoint; drop any written after it."""
        for attr, path in (("curves", self.rd.curves), ("train_log", self.rd.train_log)):
            rows = storage.read_csv(path) if path.exists() else []
            setattr(self, attr, rows[: counts[attr]])
        self.acc_rows = [(label, list(accs)) for label, accs in acc_rows]
        self.shift_rows = list(shift_rows)

    @distributed.main_only
    def flush(self) -> None:
        storage.write_csv(
            self.rd.curves,
            self.curves,
            header=["step", "task_index", "trained_task", "epoch", "eval_task", "accuracy", "loss"],
        )
        storage.write_csv(self.rd.train_log, self.train_log)
        storage.write_acc_matrix(self.rd.acc_matrix, self.task_names, self.acc_rows)
        storage.write_csv(
            self.rd.shift_csv,
            self.shift_rows,
            header=["name", "after_task", "numel", "l1", "l2", "rel_l2", "frac_changed"],
        )


# --------------------------------------------------------------------------------------------
# the loop


def run(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    console: Any = None,
) -> Path:
    """Run (or resume) the continual sequence of `cfg`; returns the run directory."""
    device = distributed.setup(resolve_device(cfg.device))
    check_processes(cfg)
    progress = progress and distributed.is_main()
    rd = storage.RunDir(cfg.out)
    distributed.run_on_main(prepare_run_dir, rd, cfg, resume, overwrite)
    checkpoint = load_checkpoint(rd.last) if resume and rd.last.exists() else None
    started = time.perf_counter()
    seed_everything(cfg.seed)

    backbone = create_backbone(
        cfg.model, cfg.pretrained, cfg.weights, cfg.image_size, cfg.patch_size
    )
    spec = input_spec(backbone, cfg.image_size)
    model = distributed.prepare_model(MultiHeadNet(backbone), device).to(device)
    data = [load_task(name, spec, cfg, EVAL, t) for t, name in enumerate(cfg.tasks)]
    pretrain_info = None
    if cfg.pretrain:
        pre = load_task(cfg.pretrain, spec, cfg, PRETRAIN)
        pretrain_info = pretrain_backbone(cfg, model.backbone, pre, device, progress, console)
    seed_everything(cfg.seed)  # the sequence starts from the same RNG state, cached or not

    ctx = Context(cfg, rd, model, data, Recorder(rd, list(cfg.tasks)), device, progress, console)
    pos = Position()
    if checkpoint is None:
        theta0 = named_state(model)
        if distributed.is_main():
            storage.write_json(rd.config, config_record(cfg, device, model, pretrain_info))
    else:
        theta0 = storage.load_torch(rd.theta0)
        pos = Position(**checkpoint["position"])
        ctx.rec.restore(checkpoint["rows"], checkpoint["acc_rows"], checkpoint["shift_rows"])
        for t in range(checkpoint["num_heads"]):
            model.add_head(data[t].task.num_classes)
        model.load_state_dict(checkpoint["model"])
        restore_rng(checkpoint["rng"])

    with StopSignals() as ctx.stop:
        for t in range(pos.task, len(data)):
            if len(model.heads) <= t:  # a fresh head for this task
                model.add_head(data[t].task.num_classes)
                head = {k: v for k, v in named_state(model).items() if k.startswith(f"heads.{t}.")}
                theta0.update(head)  # a head's reference point is its initialisation
                if distributed.is_main():
                    storage.save_torch(rd.theta0, theta0)
            distributed.broadcast_parameters(model)  # replicas start each task identical
            total = task_steps(cfg, len(data[t].train), t)
            opt, sched = make_optimizer(cfg, model, t, total)
            # (a checkpoint from the end of the previous task holds that task's optimizer)
            if checkpoint is not None and checkpoint["position"]["task"] == t and pos.task_step:
                opt.load_state_dict(checkpoint["optimizer"])
                sched.load_state_dict(checkpoint["scheduler"])
            if pos.task_step == 0:
                if t == 0:  # the "init" row: before any training, only head 1 exists
                    ctx.rec.acc_rows.append(("init", full_eval_row(ctx, 1)))
                evaluate_seen(ctx, t, pos)

            train_task(ctx, t, opt, sched, pos, total)

            # end of task: curve point, full accuracy-matrix row, parameter shift, checkpoints
            evaluate_seen(ctx, t, pos)
            ctx.rec.acc_rows.append((cfg.tasks[t], full_eval_row(ctx, t + 1)))
            theta = named_state(model)
            ctx.rec.shift_rows.extend(shift.shift_rows(theta0, theta, cfg.tasks[t]))
            if cfg.save_shift_matrices:
                save_shift_matrices(rd.shift_npz(t), theta0, theta)
            pos = Position(task=t + 1, step=pos.step, nan_skips=pos.nan_skips)
            save_checkpoint(ctx, opt, sched, pos, rd.task_checkpoint(t))
            save_checkpoint(ctx, opt, sched, pos)
            checkpoint = None

    if distributed.is_main():
        write_summary(ctx, pos, time.perf_counter() - started, pretrain_info)
        write_run_report(rd.root)
    distributed.barrier()  # every process returns once the files are written
    return rd.root


def train_task(ctx: Context, t: int, opt, sched, pos: Position, total: int) -> None:
    """The epochs of task `t` from `pos` on: step, log, evaluate, checkpoint, obey signals."""
    cfg, task = ctx.cfg, ctx.data[t]
    bar = Bar(
        ctx.progress,
        ctx.console,
        f"task {t + 1}/{len(ctx.data)} {task.task.name}",
        total,
        pos.task_step,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    fused = optimizers.FusedBackward(opt) if cfg.fused_backward else None
    try:
        _train_epochs(ctx, t, opt, sched, pos, total, criterion, fused, bar)
    finally:
        if fused is not None:
            fused.remove()
    bar.close()


def _train_epochs(
    ctx: Context, t: int, opt, sched, pos: Position, total: int, criterion, fused, bar: Bar
) -> None:
    """The loop of `train_task`; `fused`: the optimizer's FusedBackward, or None."""
    cfg, task = ctx.cfg, ctx.data[t]
    first_epoch = cfg.epochs[t] if pos.task_step >= total else pos.epoch  # resumed at its end
    for epoch in range(first_epoch, cfg.epochs[t]):
        order = epoch_order(len(task.train), cfg.seed, TRAIN, t, epoch)
        batches = batch_index_lists(order, cfg.batch_size)[pos.batch :]
        batches = [distributed.shard(b) for b in batches]  # this process's share of each
        pos.epoch = epoch
        for x, y in iterate(task.train, batches, cfg.num_workers, ctx.device.type == "cuda"):
            loss = train_step(ctx.model, opt, sched, criterion, x, y, t, cfg, ctx.device, fused)
            pos.batch += 1
            if not math.isfinite(loss):
                pos.nan_skips += 1
                if cfg.on_nan != "skip":
                    diverged(ctx, pos, t, loss)
            else:
                pos.step += 1
                pos.task_step += 1
                pos.loss_sum += loss
                pos.loss_count += 1
                ctx.tracker.after_step(opt)
                if pos.task_step % cfg.log_every == 0 or pos.task_step == total:
                    ctx.rec.train_log.append(log_row(ctx, pos, t, opt, sched))
                    pos.loss_sum, pos.loss_count = 0.0, 0
                if pos.task_step % cfg.eval_every == 0 and pos.task_step < total:
                    evaluate_seen(ctx, t, pos)
                    ctx.rec.flush()
            if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                save_checkpoint(ctx, opt, sched, pos)
            signum = distributed.any_signal(ctx.stop.signum)  # all processes stop together
            if signum is not None:
                save_checkpoint(ctx, opt, sched, pos)
                distributed.barrier()  # no process exits before the checkpoint is written
                raise Interrupted(signum, pos.step, cfg.out)
            bar.update(pos.task_step, loss)
            if pos.task_step >= total:
                break
        pos.batch, pos.epoch = 0, epoch + 1
        if pos.task_step >= total:
            break
        save_checkpoint(ctx, opt, sched, pos)


def diverged(ctx: Context, pos: Position, t: int, loss: float) -> None:
    """Stop: record the divergence in summary.json and the report (no NaN as a result), raise."""
    message = (
        f"loss became {loss} at step {pos.step + 1} of task {ctx.cfg.tasks[t]}: lower --lr "
        f"(now {ctx.cfg.lr[t]:g}) or pass --on-nan skip"
    )
    if distributed.is_main():
        ctx.rec.flush()
        write_summary(
            ctx,
            pos,
            0.0,
            None,
            status={
                "status": "diverged",
                "message": message,
                "task": ctx.cfg.tasks[t],
                "step": pos.step + 1,
            },
        )
        write_run_report(ctx.rd.root)
    distributed.barrier()  # no process exits before the files are written
    raise TrainingDiverged(message)


# --------------------------------------------------------------------------------------------
# one call away


def prepare_run_dir(rd: storage.RunDir, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    """Never overwrite a run silently; on resume, the configuration must match the saved one."""
    if resume:
        if not rd.config.exists():
            raise UserError(f"nothing to resume in {rd.root}: run without --resume to start it")
        saved = RunConfig.from_dict(storage.read_json(rd.config)["config"])
        diff = config_diff(saved, cfg)
        if diff:
            raise UserError(
                f"--resume with different settings than the saved run ({', '.join(diff)}): "
                "use the same options, or --overwrite to start again"
            )
        return
    storage.fresh_dir(rd.root, overwrite, "pass --resume to continue it, ")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible: use --device cpu or auto")
    return device


def load_task(name: str, spec, cfg: RunConfig, *seed_parts: int) -> TaskData:
    """The task's datasets and its fixed curve subsample (drawn from `seed_parts`)."""
    task = task_registry.get(name)
    train, test = task.datasets(
        spec, Path(cfg.data_dir), download=cfg.download, augment=cfg.augment
    )
    n = len(test)
    k = n if cfg.eval_samples is None else min(cfg.eval_samples, n)
    order = epoch_order(n, cfg.seed, *seed_parts)
    return TaskData(task, train, test, order[:k].sort().values)


def epoch_steps(cfg: RunConfig, n_train: int) -> int:
    return len(batch_index_lists(torch.arange(n_train), cfg.batch_size))


def task_steps(cfg: RunConfig, n_train: int, t: int) -> int:
    total = cfg.epochs[t] * epoch_steps(cfg, n_train)
    return min(total, cfg.max_steps) if cfg.max_steps else total


def load_checkpoint(path: Path) -> dict:
    """last.pt, or one clear error if it cannot be read (the file is left as it is)."""
    try:
        return storage.load_torch(path)
    except Exception as exc:  # truncated, corrupt, or not a checkpoint
        raise UserError(
            f"checkpoint {path} cannot be read ({exc.__class__.__name__}); it is left untouched: "
            "restore it, or start again with --overwrite"
        ) from None


def task_fraction(pos: Position, task: TaskData, cfg: RunConfig) -> float:
    """Epochs into the current task, fractional (for plotting by epoch)."""
    return round(pos.task_step / max(1, epoch_steps(cfg, len(task.train))), 4)


def make_optimizer(cfg: RunConfig, model: nn.Module, t: int, total_steps: int):
    """A new optimizer per task (the paper's protocol: its own LR per task)."""
    spec = optimizers.get(cfg.optimizer)
    hparams = optimizer_hparams(cfg)
    if spec.accepts("total_steps"):
        hparams["total_steps"] = total_steps
    opt = optimizers.create(cfg.optimizer, model, lr=cfg.lr[t], **hparams)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def evaluate_seen(ctx: Context, t: int, pos: Position) -> None:
    """One forgetting-curve point: every task seen so far, each with its own head."""
    data = ctx.data
    for j in range(t + 1):
        acc, loss = evaluate(ctx.model, data[j].test, data[j].curve_indices, j, ctx.cfg, ctx.device)
        ctx.rec.curves.append(
            {
                "step": pos.step,
                "task_index": t + 1,
                "trained_task": data[t].task.name,
                "epoch": task_fraction(pos, data[t], ctx.cfg),
                "eval_task": data[j].task.name,
                "accuracy": acc,
                "loss": loss,
            }
        )


def full_eval_row(ctx: Context, n_heads: int) -> list[float]:
    """Accuracy-matrix row on the full test sets; NaN where the head does not exist yet."""
    return [
        evaluate(ctx.model, d.test, None, j, ctx.cfg, ctx.device)[0] if j < n_heads else math.nan
        for j, d in enumerate(ctx.data)
    ]


def log_row(ctx: Context, pos: Position, t: int, opt, sched) -> dict:
    """A train_log row: mean loss since the last row, LR, and the optimizer's own statistics."""
    row = {
        "step": pos.step,
        "task_index": t + 1,
        "trained_task": ctx.cfg.tasks[t],
        "epoch": task_fraction(pos, ctx.data[t], ctx.cfg),
        "loss": pos.loss_sum / max(1, pos.loss_count),
        "lr": sched.get_last_lr()[0],
        "density": 1.0,
    }
    stats = getattr(opt, "log_stats", None)
    if callable(stats):
        row.update(stats())
    return row


def named_state(model: MultiHeadNet) -> dict[str, torch.Tensor]:
    """CPU copies of every parameter, named as in timm (``backbone.`` dropped) plus ``heads.N``."""
    return {
        name.removeprefix("backbone."): p.detach().to("cpu", copy=True)
        for name, p in model.named_parameters()
    }


@distributed.main_only
def save_shift_matrices(path: Path, theta0, theta) -> None:
    matrices = shift.attention_shift_matrices(theta0, theta)
    if matrices:

        def write(fh):
            np.savez_compressed(fh, **matrices)

        storage._atomic(path, write)


def rng_state() -> dict:
    """RNG states, in types that `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@distributed.main_only
def save_checkpoint(ctx: Context, opt, sched, pos: Position, path: Path | None = None) -> None:
    """Everything needed to continue exactly: written atomically, the old file kept until the
    new one is complete. Replicas are identical, so process 0's state resumes every process."""
    rec, model = ctx.rec, ctx.model
    rec.flush()
    storage.save_torch(
        path or ctx.rd.last,
        {
            "model": model.state_dict(),
            "num_heads": len(model.heads),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "position": asdict(pos),
            "rng": rng_state(),
            "rows": rec.counts(),
            "acc_rows": rec.acc_rows,
            "shift_rows": rec.shift_rows,
        },
    )


class Resources:
    """Peak memory and optimizer-state bytes over the run."""

    def __init__(self, device: torch.device):
        self.device = device
        self.state_bytes = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def after_step(self, opt) -> None:
        if self.state_bytes == 0:
            self.state_bytes = optimizers.state_bytes(opt)

    def peak_memory(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB else
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def config_record(cfg: RunConfig, device, model: MultiHeadNet, pretrain_info) -> dict:
    return {
        "config": cfg.to_dict(),
        "versions": {
            "clbench": __version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
        },
        "git_commit": git_commit(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "processes": distributed.world_size(),
        "timm_model": type(model.backbone).__name__,
        "pretrain": pretrain_info,
    }


def write_summary(
    ctx: Context, pos: Position, wall_s: float, pretrain_info, status: dict | None = None
) -> None:
    """summary.json. A run that did not finish (`status`) has no final figures rather than
    partial or NaN ones."""
    cfg, rec = ctx.cfg, ctx.rec
    names = list(cfg.tasks)
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "name": cfg.name,
        "model": cfg.model,
        "optimizer": cfg.optimizer,
        "tasks": names,
        "seed": cfg.seed,
        "status": "complete",
    }
    if status is None:
        R = [accs for label, accs in rec.acc_rows if label != "init"]
        summary.update(metrics.summarize(R, names))
        last = [r for r in rec.shift_rows if r["after_task"] == names[-1]]
        summary["shift"] = {
            "l2_excl_heads": shift.total_l2(last),
            "frac_unchanged_excl_heads": shift.frac_unchanged(last),
        }
    else:
        summary.update({"final": None, "paper": None, "shift": None, **status})
    summary["nan_skips"] = pos.nan_skips
    summary["resources"] = {
        "wall_s": wall_s,
        "peak_memory_bytes": ctx.tracker.peak_memory(),
        "optimizer_state_bytes": ctx.tracker.state_bytes,
        "params": sum(p.numel() for p in ctx.model.parameters()),
    }
    summary["pretrain"] = pretrain_info
    storage.write_json(ctx.rd.summary, summary)


class Bar:
    """A Rich progress bar for one task (silent when progress is off)."""

    def __init__(self, enabled: bool, console, label: str, total: int, done: int):
        self.progress: Any = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.progress.start()
        self.id = self.progress.add_task(label, total=total, completed=done, loss="-")

    def update(self, done: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.id, completed=done, loss=f"{loss:.3f}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
