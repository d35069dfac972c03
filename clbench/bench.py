"""The harness behind `clbench bench`: speed and memory of the optimizers on real models.

Every figure is a ratio of two timings taken in one process run, never across runs: contenders
take turns (A B C A B C ..., never A A A B B B) after warm-up, CUDA is synchronised around each
timing, every contender has its own copy of the weights and fresh optimizer state, and all see the
same fixed gradients (each its own copy of them: optimizer steps) or the same fixed batch
(training steps); medians are reported. The parts:

1. optimizer step on real models' parameters, ratio to the best of torch's AdamW implementations
   (`optimizers.benchmark`), NanoAdam with and without its mask refresh;
2. optimizer state bytes against their formulas (`optimizers.memory`) and fp32 AdamW;
3. peak memory of a training step (forward, backward, step) above the memory before the
   optimizer exists: CUDA's allocator peak, or on the CPU the peak RSS of a fresh process per
   optimizer;
4. training step time against AdamW;
5. the runner's own training loop (`runner.train_task`, evaluation off) against a bare loop;
6. step and refresh time over model sizes.

`run_bench` returns everything as one JSON-ready dict; `render_markdown` turns it into a page.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import os
import platform
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

import optimizers
from optimizers.benchmark import (
    ADAMW_IMPLEMENTATIONS,
    Timer,
    alternate,
    benchmark_steps,
    medians,
    refresh_figures,
    sparse_hparams,
    step_factories,
)
from optimizers.memory import format_size, state_formula

from . import __version__

SCHEMA = 2  # 2: NanoAdam's step targets are medians over rounds
OPTIMIZERS = ("nanoadam", "microadam", "adamw", "adamw8bit", "galore", "sgd")
HEAD_CLASSES = 10  # every model gets one task head, as in a run's first task (CIFAR-10)

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What `clbench bench` measures, and how."""

    models: tuple[str, ...] = ("resnet18", "resnet101", "vit-small")
    scaling: tuple[str, ...] = (
        "resnet18",
        "resnet50",
        "resnet101",
        "vit-tiny",
        "vit-small",
        "vit-base",
    )
    optimizers: tuple[str, ...] = OPTIMIZERS
    runner_optimizers: tuple[str, ...] = ("adamw", "nanoadam")
    device: str = "auto"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    repeats: int = 5  # timed turns per contender
    # rounds of NanoAdam's step against torch's AdamW: part 1, then again after each later part
    # (the rest at the end), so that they sample the machine at different times; its targets
    # take the median over rounds (AdamW's step, bound by memory bandwidth, moves with the
    # neighbours on a shared machine)
    step_rounds: int = 5
    warmup: int = 1  # untimed turns per contender after its first step
    density: float = 0.01
    mask_interval: int = 100  # NanoAdam's refresh is amortized over this many steps
    window: int = 10
    batch_size: int = 8  # training steps (parts 3-5)
    image_size: int = 64
    runner_steps: int = 10  # steps per turn in the runner comparison
    memory_steps: int = 3  # training steps per peak-memory measurement
    quick: bool = False


#: `--quick`: a smoke test on tiny models, seconds rather than minutes (figures mean little).
QUICK = {
    "models": ("vit-micro",),
    "scaling": ("vit-micro", "test_resnet"),
    "repeats": 2,
    "warmup": 0,
    "batch_size": 4,
    "image_size": 32,
    "runner_steps": 3,
    "step_rounds": 2,
    "quick": True,
}


def quick_config(cfg: BenchConfig) -> BenchConfig:
    return replace(cfg, **QUICK)


# -- shared pieces -------------------------------------------------------------------------------
def build_model(name: str, image_size: int | None = None, seed: int = 0) -> nn.Module:
    """A clbench model as a run trains it (timm backbone, random weights, one task head)."""
    from .models import MultiHeadNet, create_backbone

    torch.manual_seed(seed)
    net = MultiHeadNet(create_backbone(name, False, None, image_size, None))
    net.add_head(HEAD_CLASSES)
    return net


def fixed_batch(batch_size: int, image_size: int, device: torch.device, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=g)
    y = torch.randint(0, HEAD_CLASSES, (batch_size,), generator=g)
    return x.to(device), y.to(device)


def bare_step(model: nn.Module, opt: torch.optim.Optimizer, x, y) -> None:
    """The training step anyone would write: forward, loss, backward, step (bf16 autocast on
    CUDA, as the runner trains)."""
    from .training import autocast

    opt.zero_grad(set_to_none=True)
    with autocast(x.device):
        loss = nn.functional.cross_entropy(model(x, 0), y)
    loss.backward()
    opt.step()


def create_optimizer(name: str, model: nn.Module, cfg: BenchConfig) -> torch.optim.Optimizer:
    """Registry optimizers with the bench's density and window; "adamw_fused" etc. are torch's
    AdamW implementations."""
    return step_factories([name], cfg.density, cfg.window)[name](model)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


# -- 1 and 2: optimizer step and state bytes ----------------------------------------------------
def step_contenders(cfg: BenchConfig) -> list[str]:
    """torch's three AdamW implementations, NanoAdam with a static mask and with a refresh at
    every step, then every other optimizer asked for."""
    others = [o for o in cfg.optimizers if o not in ("adamw", "nanoadam")]
    nano = ["nanoadam", "nanoadam_refresh"] if "nanoadam" in cfg.optimizers else []
    return [*ADAMW_IMPLEMENTATIONS, *nano, *others]


def optimizer_steps(
    name: str, cfg: BenchConfig, device: torch.device, dtype: torch.dtype, timer: Timer
) -> tuple[dict, list[dict]]:
    """Part 1 (step times) and part 2 (state bytes) on model `name`."""
    model = build_model(name).to(device=device, dtype=dtype)
    factories = step_factories(step_contenders(cfg), cfg.density, cfg.window)
    bench = benchmark_steps(model, factories, cfg.repeats, timer, cfg.warmup)
    med = bench.medians
    best_name, best = bench.best_adamw()
    row: dict[str, Any] = {
        "model": name,
        "params": _param_count(model),
        "best_adamw": best_name,
        "step_ms": {k: 1e3 * v for k, v in med.items()},
        "ratio_to_best_adamw": {k: v / best for k, v in med.items()},
        "skipped": bench.skipped,
        "gradients_intact": bench.gradients_intact,
    }
    if "nanoadam" in med and "nanoadam_refresh" in med:
        row["nanoadam"] = nanoadam_figures(med, best_name, cfg)
        row["nanoadam"]["rounds"] = [_round_record(row["nanoadam"])]
    states = []
    for opt_name in cfg.optimizers:
        key = best_name if opt_name == "adamw" else opt_name
        if key not in bench.optimizers:
            continue
        states.append(state_row(name, opt_name, bench.optimizers[key], bench.models[key], cfg))
    fp32_adamw = 8 * row["params"] + 4 * len(list(model.parameters()))  # m, v and step count
    for s in states:
        s["vs_adamw_fp32"] = s["measured_bytes"] / fp32_adamw
    return row, states


def nanoadam_figures(med: dict[str, float], best_name: str, cfg: BenchConfig) -> dict:
    """NanoAdam's step, refresh and amortized step (ms), and their ratios to the best AdamW
    step `med[best_name]`, from the median step times (s) of "nanoadam" (static mask) and
    "nanoadam_refresh" (a refresh at every step)."""
    best = med[best_name]
    nano = refresh_figures(med["nanoadam"], med["nanoadam_refresh"], cfg.mask_interval)
    return {
        **{f"{k}_ms": 1e3 * v for k, v in nano.items()},
        "mask_interval": cfg.mask_interval,
        "best_adamw": best_name,
        "best_adamw_ms": 1e3 * best,
        "amortized_ratio": nano["amortized"] / best,
        "refresh_in_adamw_steps": nano["refresh"] / best,
    }


def _round_record(figures: dict) -> dict:
    """What a round keeps of `nanoadam_figures`."""
    keys = ("best_adamw_ms", "step_ms", "amortized_ms", "amortized_ratio", "refresh_in_adamw_steps")
    return {k: figures[k] for k in keys}


def step_round(
    name: str, cfg: BenchConfig, device: torch.device, dtype: torch.dtype, timer: Timer
) -> dict:
    """One more round of part 1 restricted to NanoAdam and torch's AdamW implementations on
    model `name`: `_round_record` of `nanoadam_figures`."""
    model = build_model(name).to(device=device, dtype=dtype)
    names = [*ADAMW_IMPLEMENTATIONS, "nanoadam", "nanoadam_refresh"]
    bench = benchmark_steps(
        model, step_factories(names, cfg.density, cfg.window), cfg.repeats, timer, cfg.warmup
    )
    return _round_record(nanoadam_figures(bench.medians, bench.best_adamw()[0], cfg))


def summarize_rounds(figures: dict) -> None:
    """Add to NanoAdam's figures of a model the median over its rounds of the amortized ratio
    and of the refresh in AdamW steps (`*_median`), and their range (`*_range`)."""
    for key in ("amortized_ratio", "refresh_in_adamw_steps"):
        values = [r[key] for r in figures["rounds"]]
        figures[f"{key}_median"] = statistics.median(values)
        figures[f"{key}_range"] = [min(values), max(values)]


def state_row(
    model_name: str, opt_name: str, opt: torch.optim.Optimizer, model: nn.Module, cfg: BenchConfig
) -> dict:
    """Measured `state_bytes()` beside the optimizer's formula (and, for NanoAdam, the bytes
    above 6kS per sparse tensor: the per-tensor overhead the issue bounds by 64 B)."""
    measured = optimizers.state_bytes(opt)
    formula = state_formula(opt_name, model, **sparse_hparams(opt_name, cfg.density, cfg.window))
    row = {
        "model": model_name,
        "optimizer": opt_name,
        "measured_bytes": measured,
        "formula_bytes": None if formula is None else formula.bytes,
        "formula": None if formula is None else formula.expression,
        "formula_params": None if formula is None else formula.params,
        "vs_formula": None if formula is None else measured / formula.bytes - 1,
        "bytes_per_param": measured / _param_count(model),
    }
    if opt_name == "nanoadam" and formula is not None:
        overhead = measured - formula.other_bytes - 6 * cfg.density * formula.params
        row["bytes_above_6kS_per_tensor"] = overhead / max(1, formula.tensors)
    return row


# -- 3: peak memory of a training step ------------------------------------------------------------
def fused_backward_available() -> bool:
    """Whether `optimizers` offers the fused backward (each parameter updated inside backward,
    its gradient freed at once): part 3 then measures it beside the plain step."""
    return hasattr(optimizers, "FusedBackward")


def fused_backward_support(name: str, cfg: BenchConfig) -> dict | None:
    """None when optimizer `name` runs under `optimizers.FusedBackward`, else {"unsupported":
    the reason} (checked on a two-parameter model, in the calling process)."""
    probe = nn.Linear(2, 2)
    try:
        optimizers.FusedBackward(create_optimizer(name, probe, cfg)).remove()
    except optimizers.FusedBackwardError as exc:
        return {"unsupported": _one_line(exc)}
    return None


def training_step_fn(name: str, variant: str, model: nn.Module, cfg: BenchConfig) -> Callable:
    """The training step of optimizer `name` on `model`: "step" (`bare_step`) or
    "fused_backward" (`optimizers.FusedBackward`; raises `FusedBackwardError` for an optimizer
    that cannot update one parameter at a time)."""
    opt = create_optimizer(name, model, cfg)
    if variant == "step":
        return lambda x, y: bare_step(model, opt, x, y)
    from .training import autocast

    fused = optimizers.FusedBackward(opt)

    def step(x, y) -> None:
        with autocast(x.device):
            loss = nn.functional.cross_entropy(model(x, 0), y)
        fused.backward(loss)

    return step


def measure_peak(request: dict) -> dict:
    """Peak memory of `memory_steps` training steps of one optimizer on a fresh model, above the
    memory held once the model and batch exist and before the optimizer does. Runs in the
    calling process: on CUDA, torch's allocator peak; on the CPU, call it in a fresh process
    (`PeakServer`) so that no memory freed earlier hides the optimizer's."""
    cfg = BenchConfig(**request["cfg"])
    device = torch.device(request["device"])
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = build_model(request["model"], cfg.image_size).to(device)
    x, y = fixed_batch(cfg.batch_size, cfg.image_size, device)
    _free(device)
    probe = _MemoryProbe(device)
    probe.start()
    step = training_step_fn(request["optimizer"], request["variant"], model, cfg)
    for _ in range(cfg.memory_steps):
        step(x, y)
    return probe.stop()


class _MemoryProbe:
    """Memory above a baseline: CUDA's allocator peak, or the process's RSS high-water mark
    (Linux: reset through /proc/self/clear_refs; elsewhere ru_maxrss, which cannot be reset)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0
        self.method = ""

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        elif _reset_hwm():
            self.baseline = _proc_status("VmRSS")
            self.method = "VmHWM after clear_refs, fresh process"
        else:
            self.baseline = _ru_maxrss()
            self.method = "ru_maxrss, fresh process (lower bound: not reset)"

    def stop(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = _proc_status("VmHWM")
        else:
            peak = _ru_maxrss()
        return {
            "baseline_bytes": self.baseline,
            "peak_bytes": peak,
            "above_baseline_bytes": max(0, peak - self.baseline),
            "method": self.method,
        }


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status("VmHWM") > 0
    except OSError:
        return False


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    return 0


def _ru_maxrss() -> int:
    import resource

    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakServer:
    """A helper process that forks one child per measurement (`serve_peaks`).

    Each child starts from the helper's small, clean heap (the helper only imports torch, timm
    and the optimizers, and computes nothing, so its children may run torch's thread pool), so
    the peak RSS a child reports is its own. One helper instead of one interpreter per
    measurement saves the imports, several seconds each."""

    def __init__(self, optimizers: tuple[str, ...] = (), timeout_s: float = 900.0) -> None:
        self.optimizers = optimizers
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> PeakServer:
        """Start the helper (once; it imports while the caller goes on)."""
        if self.proc is None:
            code = f"from clbench.bench import serve_peaks; serve_peaks({list(self.optimizers)!r})"
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def measure(self, request: dict) -> dict:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise RuntimeError("the peak-memory helper process stopped answering")
        return json.loads(line)


def serve_peaks(preload: list[str]) -> None:
    """The helper of `PeakServer`: one JSON request per line on stdin, one JSON answer per line
    on stdout, each request measured by `measure_peak` in a forked child. The optional packages
    of the `preload` optimizers are imported once here, for every child."""
    import timm  # noqa: F401 (loaded once here, inherited by every child)

    from optimizers import external

    from . import models, training  # noqa: F401

    loaders = {"adamw8bit": external._adamw8bit_class, "galore": external._galore_class}
    for name in preload:
        try:
            loaders.get(name, lambda: None)()
        except optimizers.OptimizerError:
            pass  # reported by the measurement that needs it
    for line in sys.stdin:
        request = json.loads(line)
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: measure, answer through the pipe, leave without cleanup
            os.close(read_end)
            os.dup2(2, 1)  # nothing a library prints may reach the answer channel
            try:
                answer = measure_peak(request)
            except Exception as exc:  # reported, not raised: the bench goes on
                answer = {"error": _one_line(exc)}
            with os.fdopen(write_end, "w") as fh:
                fh.write(json.dumps(answer))
            os._exit(0)
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        text = b"".join(chunks).decode()
        if not text:
            text = json.dumps({"error": f"measurement process died (wait status {status})"})
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def peak_memory(
    cfg: BenchConfig, device: torch.device, log: Log, server: PeakServer | None = None
) -> list[dict]:
    """Part 3, for every model and optimizer (and the fused-backward variant when available).
    On the CPU through `server` (started here when not given)."""
    names = ["adamw", *[o for o in cfg.optimizers if o != "adamw"]]
    fused = {o: fused_backward_support(o, cfg) for o in names} if fused_backward_available() else {}
    requests = [
        {
            "model": m,
            "optimizer": o,
            "variant": v,
            "device": str(device),
            "cfg": {**asdict(cfg), "threads": cfg.threads or torch.get_num_threads()},
        }
        for m in cfg.models
        for o in names
        for v in ["step"] + (["fused_backward"] if o in fused and fused[o] is None else [])
    ]
    rows = []
    if server is None and device.type == "cpu":
        server = PeakServer(cfg.optimizers)
    with server or contextlib.nullcontext():
        for r in requests:
            log(f"peak memory: {r['model']} / {r['optimizer']} ({r['variant']})")
            if server is not None:
                answer = server.measure(r)
            else:
                try:
                    answer = measure_peak(r)
                except Exception as exc:  # reported in the results, the bench goes on
                    answer = {"error": _one_line(exc)}
                _free(device)
            rows.append({k: r[k] for k in ("model", "optimizer", "variant")} | answer)
        for m in cfg.models:
            for o, why in fused.items():
                if why is not None:
                    rows.append({"model": m, "optimizer": o, "variant": "fused_backward"} | why)
    adamw = {
        r["model"]: r.get("above_baseline_bytes")
        for r in rows
        if r["optimizer"] == "adamw" and r["variant"] == "step"
    }
    for row in rows:
        row["vs_adamw"] = ratio(row.get("above_baseline_bytes"), adamw.get(row["model"]))
    return rows


# -- 4: training step time ------------------------------------------------------------------------
def training_steps(name: str, cfg: BenchConfig, device: torch.device, timer: Timer) -> dict:
    """Part 4: forward + backward + step of every optimizer on its own copy of the same model,
    on the same batch, in turns. AdamW appears as the registry builds it (what runs use) and
    fused; the faster is the reference."""
    base = build_model(name, cfg.image_size).to(device)
    x, y = fixed_batch(cfg.batch_size, cfg.image_size, device)
    steps, skipped = {}, {}
    for opt_name in ["adamw", "adamw_fused", *[o for o in cfg.optimizers if o != "adamw"]]:
        model = copy.deepcopy(base)
        try:
            opt = create_optimizer(opt_name, model, cfg)
            bare_step(model, opt, x, y)
        except (optimizers.OptimizerError, RuntimeError, ValueError, NotImplementedError) as exc:
            skipped[opt_name] = _one_line(exc)
            continue
        steps[opt_name] = lambda m=model, o=opt: bare_step(m, o, x, y)
    med = medians(alternate(steps, cfg.repeats, timer, cfg.warmup))
    reference = min(v for k, v in med.items() if k.startswith("adamw") and k != "adamw8bit")
    return {
        "model": name,
        "params": _param_count(base),
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "step_ms": {k: 1e3 * v for k, v in med.items()},
        "ratio_to_adamw": {k: v / reference for k, v in med.items()},
        "skipped": skipped,
    }


# -- 5: runner overhead ---------------------------------------------------------------------------
def runner_overhead(name: str, cfg: BenchConfig, device: torch.device, timer: Timer) -> list[dict]:
    """Part 5: `runner.train_task` (the loop every run uses: train step, loss and optimizer
    statistics logged every `log_every` steps, resource tracking; curve evaluation and
    checkpoints off) against a bare loop over the same batches of the same in-memory data, on
    copies of the same model, in turns of `runner_steps` steps."""
    import tempfile

    from tasks import InMemoryImages

    from . import runner, storage
    from .config import RunConfig
    from .data import batch_index_lists
    from .models import input_spec

    base = build_model(name, cfg.image_size).to(device)
    n = cfg.runner_steps * cfg.batch_size
    g = torch.Generator().manual_seed(2)
    images = torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=g)
    labels = torch.randint(0, HEAD_CLASSES, (n,), generator=g)
    data = InMemoryImages(images, labels, input_spec(base.backbone, cfg.image_size))
    batches = batch_index_lists(torch.arange(n), cfg.batch_size)
    turns, tmp = {}, tempfile.TemporaryDirectory(prefix="clbench-bench-")
    names = [o for o in cfg.runner_optimizers if o in cfg.optimizers or o == "adamw"]
    for opt_name in names:
        run_cfg = RunConfig(
            name="bench",
            out=tmp.name,
            model=name,
            tasks=("bench",),
            epochs=(1,),
            lr=(1e-4,),
            batch_size=cfg.batch_size,
            optimizer=opt_name,
            eval_every=10**9,  # no curve evaluation inside the loop
            device=str(device),
        )
        model = copy.deepcopy(base)
        opt, sched = runner.make_optimizer(run_cfg, model, 0, cfg.runner_steps)
        task = runner.TaskData(_BenchTask(), data, None, torch.arange(0))
        rd = storage.RunDir(tmp.name)
        ctx = runner.Context(run_cfg, rd, model, [task], runner.Recorder(rd, ["bench"]), device)
        ctx.progress, ctx.stop = False, runner.StopSignals()

        def loop(ctx=ctx, opt=opt, sched=sched) -> None:
            runner.train_task(ctx, 0, opt, sched, runner.Position(), cfg.runner_steps)

        bare_model = copy.deepcopy(base)
        bare_opt, _ = runner.make_optimizer(run_cfg, bare_model, 0, cfg.runner_steps)

        def bare(model=bare_model, opt=bare_opt) -> None:
            for idx in batches:
                x, y = data.get_batch(idx)
                bare_step(model, opt, x.to(device), y.to(device))

        turns[f"runner/{opt_name}"], turns[f"bare/{opt_name}"] = loop, bare
    try:  # one untimed turn at least: the first allocates the optimizer state
        med = medians(alternate(turns, cfg.repeats, timer, max(1, cfg.warmup)))
    finally:
        tmp.cleanup()
    rows = []
    for opt_name in names:
        r, b = med[f"runner/{opt_name}"], med[f"bare/{opt_name}"]
        rows.append(
            {
                "model": name,
                "optimizer": opt_name,
                "steps_per_turn": cfg.runner_steps,
                "runner_steps_per_s": cfg.runner_steps / r,
                "bare_steps_per_s": cfg.runner_steps / b,
                "throughput_ratio": b / r,
            }
        )
    return rows


@dataclass(frozen=True)
class _BenchTask:
    name: str = "bench"
    num_classes: int = HEAD_CLASSES


# -- 6: scaling -----------------------------------------------------------------------------------
def scaling(
    cfg: BenchConfig, device: torch.device, dtype: torch.dtype, timer: Timer, log: Log
) -> list[dict]:
    """Part 6: AdamW (fused and foreach, the faster) and NanoAdam's step and refresh over model
    sizes."""
    names = ["adamw_fused", "adamw_foreach", "nanoadam", "nanoadam_refresh"]
    rows = []
    for name in cfg.scaling:
        log(f"scaling: {name}")
        model = build_model(name).to(device=device, dtype=dtype)
        bench = benchmark_steps(
            model, step_factories(names, cfg.density), cfg.repeats, timer, cfg.warmup
        )
        med = bench.medians
        best_name, best = bench.best_adamw()
        nano = refresh_figures(med["nanoadam"], med["nanoadam_refresh"], cfg.mask_interval)
        rows.append(
            {
                "model": name,
                "params": _param_count(model),
                "adamw_ms": 1e3 * best,
                "adamw": best_name,
                "nanoadam_step_ms": 1e3 * nano["step"],
                "nanoadam_refresh_ms": 1e3 * nano["refresh"],
                "nanoadam_amortized_ms": 1e3 * nano["amortized"],
            }
        )
        del bench, model
        _free(device)
    return rows


def scaling_plot(rows: list[dict], path: Path) -> Path:
    """Log-log plot of the scaling rows, one line per series and model family (written
    atomically)."""
    from reports.figures import plt, save

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = [
        ("adamw_ms", "AdamW step", "#1f77b4"),
        ("nanoadam_step_ms", "NanoAdam step", "#d62728"),
        ("nanoadam_refresh_ms", "NanoAdam mask refresh", "#ff7f0e"),
    ]
    markers, styles = iter("os^Dv"), iter(["-", "--", ":", "-."] * 2)
    for family in dict.fromkeys(_family(r["model"]) for r in rows):
        group = sorted((r for r in rows if _family(r["model"]) == family), key=_params)
        marker, style = next(markers, "o"), next(styles, "-")
        for key, label, color in series:
            points = [(r["params"], r[key]) for r in group if r[key] > 0]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, marker=marker, color=color, label=f"{label}, {family}")
        for r in group:
            ax.annotate(r["model"], (r["params"], r["adamw_ms"]), fontsize=7, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("parameters")
    ax.set_ylabel("time (ms)")
    ax.set_title("optimizer step and mask refresh over model size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def _family(model: str) -> str:
    return "ViT" if "vit" in model else "ResNet" if "resnet" in model else "other"


def _params(row: dict) -> int:
    return row["params"]


# -- the whole bench ------------------------------------------------------------------------------
def run_bench(cfg: BenchConfig, log: Log = lambda message: None) -> dict:
    """Every part, in one process; returns the JSON-ready results."""
    from .runner import resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    with contextlib.ExitStack() as stack:
        server = None
        if cfg.quick and device.type == "cpu":
            # --quick starts the peak-memory helper now, so that its imports (seconds) overlap
            # the first parts, whose timings mean little there; a full bench starts it in part
            # 3, where it overlaps nothing.
            server = stack.enter_context(PeakServer(cfg.optimizers))
        return _run_parts(cfg, device, log, server)


def _run_parts(cfg: BenchConfig, device: torch.device, log: Log, server: PeakServer | None) -> dict:
    step_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    timer = Timer(device)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        "versions": versions(),
        "settings": {
            **asdict(cfg),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "step_dtype": str(step_dtype).removeprefix("torch."),
            "training_dtype": "bf16 autocast" if device.type == "cuda" else "float32",
        },
        "optimizer_step": [],
        "state_bytes": [],
        "training_step": [],
        "runner": [],
    }
    for name in cfg.models:
        log(f"optimizer step: {name}")
        row, states = optimizer_steps(name, cfg, device, step_dtype, timer)
        results["optimizer_step"].append(row)
        results["state_bytes"] += states
        _free(device)
    for name in cfg.models:
        log(f"training step: {name}")
        results["training_step"].append(training_steps(name, cfg, device, timer))
        _free(device)
    rounds = iter(_spread(cfg.step_rounds - 1, 4))  # the later rounds of part 1, spread out
    _more_rounds(results, next(rounds), cfg, device, step_dtype, timer, log)
    log(f"runner overhead: {cfg.models[0]}")
    results["runner"] = runner_overhead(cfg.models[0], cfg, device, timer)
    _free(device)
    _more_rounds(results, next(rounds), cfg, device, step_dtype, timer, log)
    results["peak_memory"] = peak_memory(cfg, device, log, server)
    _more_rounds(results, next(rounds), cfg, device, step_dtype, timer, log)
    results["scaling"] = scaling(cfg, device, step_dtype, timer, log)
    _more_rounds(results, next(rounds), cfg, device, step_dtype, timer, log)
    for row in results["optimizer_step"]:
        if "nanoadam" in row:
            summarize_rounds(row["nanoadam"])
    results["targets"] = targets(results)
    results["machine"]["load_average_after"] = _load_average()
    results["wall_s"] = time.perf_counter() - started
    return results


def _spread(n: int, slots: int) -> list[int]:
    """`n` rounds over `slots` places: one each from the first, the rest at the last."""
    counts = [1 if i < n else 0 for i in range(slots)]
    counts[-1] += max(0, n - slots)
    return counts


def _more_rounds(
    results: dict,
    n: int,
    cfg: BenchConfig,
    device: torch.device,
    dtype: torch.dtype,
    timer: Timer,
    log: Log,
) -> None:
    """`n` more rounds of NanoAdam's step against AdamW (`step_round`) on every model of part 1
    that has NanoAdam's figures."""
    for _ in range(n):
        for row in results["optimizer_step"]:
            nano = row.get("nanoadam")
            if nano:
                log(f"optimizer step, round {len(nano['rounds']) + 1}: {row['model']}")
                nano["rounds"].append(step_round(row["model"], cfg, device, dtype, timer))
                _free(device)


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average_before": _load_average(),
    }
    return info


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict:
    import timm

    from .runner import git_commit

    out = {
        "clbench": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
    }
    for dist in ("triton", "bitsandbytes", "galore-torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# -- targets --------------------------------------------------------------------------------------
def targets(results: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it is met."""
    rows = []

    def add(
        what: str,
        model: str,
        value: float | None,
        limit: float,
        at_most: bool,
        rounds: list[float] | None = None,
    ) -> None:
        def meets(v: float) -> bool:
            return v <= limit if at_most else v >= limit

        row = {
            "target": what,
            "model": model,
            "value": value,
            "limit": limit,
            "at_most": at_most,
            "met": None if value is None else meets(value),
        }
        if rounds and len(rounds) > 1:  # value: their median
            row["rounds"] = rounds
            row["rounds_met"] = sum(meets(v) for v in rounds)
        rows.append(row)

    for r in results["optimizer_step"]:
        nano = r.get("nanoadam")
        if nano:
            for what, key, limit in (
                ("NanoAdam step (amortized) / best AdamW", "amortized_ratio", 0.35),
                ("NanoAdam refresh / AdamW step", "refresh_in_adamw_steps", 2.0),
            ):
                # the median over rounds (`summarize_rounds`) where there are rounds
                value = nano.get(f"{key}_median", nano[key])
                rounds = [x[key] for x in nano.get("rounds", [])]
                add(what, r["model"], value, limit, True, rounds)
    for s in results["state_bytes"]:
        if s["optimizer"] == "nanoadam" and "bytes_above_6kS_per_tensor" in s:
            add(
                "NanoAdam state bytes above 6kS, per sparse tensor",
                s["model"],
                s["bytes_above_6kS_per_tensor"],
                64.0,
                True,
            )
    for r in results["training_step"]:
        if "nanoadam" in r["ratio_to_adamw"]:
            add(
                "training step NanoAdam / AdamW",
                r["model"],
                r["ratio_to_adamw"]["nanoadam"],
                1.0,
                True,
            )
    for r in results["runner"]:
        add(
            f"runner / bare loop throughput ({r['optimizer']})",
            r["model"],
            r["throughput_ratio"],
            0.95,
            False,
        )
    return rows


# -- presentation ---------------------------------------------------------------------------------
@dataclass
class TextTable:
    """A table of strings: `clbench bench` prints it with Rich, `render_markdown` as Markdown."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def _ratio_ms(r: float | None, ms: float | None) -> str:
    return "—" if r is None else f"{r:.3f} ({_num(ms)} ms)"


def _num(x: float) -> str:
    """Three significant digits, never an exponent (1410, 14.2, 5.78, 0.0123)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def _mb(n: float | None) -> str:
    return "—" if n is None else format_size(n / 1e6)


def _models(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows))


def tables(results: dict) -> list[TextTable]:
    """Every table of the results, in the order of the parts."""
    out = [_targets_table(results)]
    steps = results["optimizer_step"]
    models = _models(steps)
    contenders = list(dict.fromkeys(k for r in steps for k in r["step_ms"]))
    rows = []
    for c in contenders:
        label = {"nanoadam": "nanoadam (no refresh)"}.get(c, c)
        rows.append(
            [label]
            + [_ratio_ms(r["ratio_to_best_adamw"].get(c), r["step_ms"].get(c)) for r in steps]
        )
        if c == "nanoadam":
            rows.append(
                [f"nanoadam (refresh every {results['settings']['mask_interval']})"]
                + [
                    _ratio_ms(r["nanoadam"]["amortized_ratio"], r["nanoadam"]["amortized_ms"])
                    if "nanoadam" in r
                    else "—"
                    for r in steps
                ]
            )
    out.append(
        TextTable(
            "optimizer_step",
            "1. Optimizer step: ratio to the best torch AdamW (median step time)",
            ["optimizer", *models],
            rows,
            "best AdamW: "
            + ", ".join(f"{r['model']} {r['best_adamw']}" for r in steps)
            + ". nanoadam_refresh refreshes its mask at every step.",
        )
    )
    out.append(
        TextTable(
            "refresh",
            "1b. NanoAdam's mask refresh",
            [
                "model",
                "step ms",
                "refresh step ms",
                "refresh ms",
                "refresh / AdamW step",
                "amortized ms",
                "amortized / best AdamW",
            ],
            [
                [
                    r["model"],
                    _num(n["step_ms"]),
                    _num(n["refresh_step_ms"]),
                    _num(n["refresh_ms"]),
                    f"{n['refresh_in_adamw_steps']:.2f}",
                    _num(n["amortized_ms"]),
                    f"{n['amortized_ratio']:.3f}",
                ]
                for r in steps
                if (n := r.get("nanoadam"))
            ],
        )
    )
    rounds = _rounds_table(results)
    if rounds.rows:
        out.append(rounds)
    out.append(
        TextTable(
            "state_bytes",
            "2. Optimizer state: measured state_bytes() against its formula and fp32 AdamW",
            [
                "model",
                "optimizer",
                "measured MB",
                "formula MB",
                "measured / formula - 1",
                "bytes / param",
                "vs fp32 AdamW",
                "formula",
            ],
            [
                [
                    s["model"],
                    s["optimizer"],
                    _mb(s["measured_bytes"]),
                    _mb(s["formula_bytes"]),
                    "—" if s["vs_formula"] is None else f"{100 * s['vs_formula']:+.2f}%",
                    f"{s['bytes_per_param']:.3f}",
                    "—" if s["vs_adamw_fp32"] is None else f"{s['vs_adamw_fp32']:.4f}",
                    s["formula"] or "—",
                ]
                for s in results["state_bytes"]
            ],
            "S in the formulas: the entries the main term covers (sparse group for NanoAdam and "
            "MicroAdam: every parameter but heads and norms, which get fp32 AdamW, 8·S_dense).",
        )
    )
    out.append(_peak_table(results))
    train = results["training_step"]
    out.append(
        TextTable(
            "training_step",
            "4. Training step (forward + backward + step): ratio to the faster AdamW",
            ["optimizer", *_models(train)],
            [
                [c] + [_ratio_ms(r["ratio_to_adamw"].get(c), r["step_ms"].get(c)) for r in train]
                for c in dict.fromkeys(k for r in train for k in r["step_ms"])
            ],
            "adamw: as the registry builds it (what runs use); adamw_fused: torch's fused kernel.",
        )
    )
    out.append(
        TextTable(
            "runner",
            "5. Runner overhead: clbench's training loop against a bare loop",
            ["model", "optimizer", "runner steps/s", "bare steps/s", "throughput ratio"],
            [
                [
                    r["model"],
                    r["optimizer"],
                    _num(r["runner_steps_per_s"]),
                    _num(r["bare_steps_per_s"]),
                    f"{r['throughput_ratio']:.3f}",
                ]
                for r in results["runner"]
            ],
        )
    )
    out.append(
        TextTable(
            "scaling",
            "6. Scaling: step and mask refresh over model size",
            [
                "model",
                "params",
                "AdamW ms",
                "NanoAdam step ms",
                "refresh ms",
                "amortized ms",
                "amortized / AdamW",
            ],
            [
                [
                    r["model"],
                    f"{r['params'] / 1e6:.2f} M",
                    _num(r["adamw_ms"]),
                    _num(r["nanoadam_step_ms"]),
                    _num(r["nanoadam_refresh_ms"]),
                    _num(r["nanoadam_amortized_ms"]),
                    f"{r['nanoadam_amortized_ms'] / r['adamw_ms']:.3f}",
                ]
                for r in results["scaling"]
            ],
        )
    )
    return out


def _targets_table(results: dict) -> TextTable:
    rows = []
    for t in results["targets"]:
        value = "—" if t["value"] is None else _num(t["value"])
        if "rounds" in t:
            n = len(t["rounds"])
            value += (
                f" (median of {n} rounds; {_num(min(t['rounds']))}-{_num(max(t['rounds']))}, "
                f"{t['rounds_met']} of {n} met)"
            )
        limit = f"{'≤' if t['at_most'] else '≥'} {t['limit']:g}"
        met = {True: "yes", False: "NO", None: "—"}[t["met"]]
        rows.append([t["target"], t["model"], value, limit, met])
    return TextTable(
        "targets",
        "Targets",
        ["target", "model", "measured", "target", "met"],
        rows,
        "NanoAdam's step ratios: the median over rounds of part 1's comparison spread over the "
        "run (section 1c); the other figures come from one measurement each.",
    )


def _rounds_table(results: dict) -> TextTable:
    """Section 1c: every round of NanoAdam's step against the best AdamW, per model."""
    rows = []
    for r in results["optimizer_step"]:
        for i, x in enumerate(r.get("nanoadam", {}).get("rounds", []), start=1):
            rows.append(
                [
                    r["model"],
                    str(i),
                    _num(x["best_adamw_ms"]),
                    _num(x["step_ms"]),
                    _num(x["amortized_ms"]),
                    f"{x['amortized_ratio']:.3f}",
                    f"{x['refresh_in_adamw_steps']:.2f}",
                ]
            )
    return TextTable(
        "rounds",
        "1c. NanoAdam against the best AdamW, round by round",
        [
            "model",
            "round",
            "best AdamW ms",
            "NanoAdam step ms",
            "amortized ms",
            "amortized / best AdamW",
            "refresh / AdamW step",
        ],
        rows,
        "Round 1 is part 1 above; each later round repeats it for NanoAdam and torch's AdamW "
        "implementations after another part of the run (the last ones at its end). NanoAdam's "
        "step is bound by memory latency, AdamW's by memory bandwidth, which a shared machine's "
        "neighbours move.",
    )


def _peak_table(results: dict) -> TextTable:
    """Part 3: one row per optimizer, one column per model (and variant)."""
    peaks = results["peak_memory"]
    variants = list(dict.fromkeys(r["variant"] for r in peaks))
    cells = {(r["model"], r["optimizer"], r["variant"]): _peak_cell(r) for r in peaks}
    columns = [(m, v) for m in _models(peaks) for v in variants]
    rows = [
        [opt, *[cells.get((m, opt, v), "—") for m, v in columns]]
        for opt in dict.fromkeys(r["optimizer"] for r in peaks)
    ]
    headers = [m if len(variants) == 1 else f"{m} {v.replace('_', ' ')}" for m, v in columns]
    method = next((r["method"] for r in peaks if "method" in r), "")
    note = (
        f"{method}; {results['settings']['memory_steps']} training steps per optimizer; ratio to "
        "AdamW's plain step in brackets."
    )
    if len(variants) > 1:
        note += (
            " fused backward: `optimizers.FusedBackward`, each parameter updated inside backward "
            "and its gradient freed at once (n/a: the optimizer cannot update one parameter at "
            "a time)."
        )
    return TextTable(
        "peak_memory",
        "3. Peak memory of a training step above the memory before the optimizer exists",
        ["optimizer", *headers],
        rows,
        note,
    )


def _peak_cell(r: dict) -> str:
    if "unsupported" in r:
        return "n/a"
    if "error" in r:
        return f"error: {r['error']}"
    vs = "—" if r["vs_adamw"] is None else f"{r['vs_adamw']:.2f}×"
    return f"{_mb(r['above_baseline_bytes'])} MB ({vs})"


def markdown_table(table: TextTable) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [row(table.columns), row(["---"] * len(table.columns))]
    lines += [row(r) for r in table.rows]
    return "\n".join(lines)


_PARTS = {
    "optimizer_step": "One optimizer step on the parameters of each model (heads and norms in "
    "the dense group where the optimizer has one), the same fixed random gradients for every "
    "optimizer, each optimizer on its own copy of the weights and of the gradients (so that no "
    "optimizer finds in cache what the previous one read). NanoAdam's plain step is timed "
    "with a static mask and its refresh step with a refresh at every step; the refresh is their "
    "difference, amortized over `mask_interval` steps. GaLore's projection refresh (every 200 "
    "steps) happens in its first, untimed step and is not amortized here.",
    "state_bytes": "State bytes after the timed steps: what each optimizer's `state_bytes()` "
    "counts, beside the formula of `optimizers.memory` for the same model and settings (`clbench "
    "memory --model M` prints the same comparison).",
    "peak_memory": "Peak memory of a few training steps (forward, backward, step) with a fresh "
    "model, above the memory held before the optimizer exists (weights and batch). On the CPU "
    "each optimizer runs in its own fresh process, so memory freed by an earlier one cannot hide "
    "its own; the figure includes activations and gradients, which are the same for every "
    "optimizer. The fused-backward columns run the same steps under `optimizers.FusedBackward` "
    "(each parameter updated inside backward, its gradient freed at once) for the optimizers "
    "that support it.",
    "training_step": "Forward, backward and optimizer step on one fixed batch, every optimizer "
    "on its own copy of the same model, in turns.",
    "runner": "`runner.train_task` (the loop every `clbench run` uses, with its train step, "
    "loss and optimizer statistics logged every 10 steps, and resource tracking; curve "
    "evaluation and checkpoints off) against a bare PyTorch loop (zero_grad, forward, loss, "
    "backward, step) over the same batches of the same in-memory data, in turns.",
    "scaling": "AdamW (the faster of fused and foreach), NanoAdam's plain step and its mask "
    "refresh over model size.",
}


def render_markdown(results: dict, plot: str | None = None) -> str:
    """The page docs/bench.md: how it was measured, on what, and every table."""
    s, m, v = results["settings"], results["machine"], results["versions"]
    command = results.get("command", "clbench bench")
    lines = [
        "# Optimizer speed and memory (`clbench bench`)",
        "",
        f"Generated by `{command}` on {results['created'][:10]} in "
        f"{results['wall_s'] / 60:.1f} minutes. Regenerate it with the same command; on a GPU "
        "machine `clbench bench --device cuda --markdown docs/bench-gpu.md` runs the same "
        "parts with bf16 parameters for the optimizer steps (NanoAdam's Triton path), bf16 "
        "autocast for the training steps (as `clbench run` trains), CUDA synchronised around "
        "every timing and `torch.cuda.max_memory_allocated` for peak memory.",
        "",
        "Every figure is a ratio of timings taken in the same process run: the contenders take "
        "turns (A B C A B C ...), after warm-up turns, each with its own copy of the weights and "
        "fresh optimizer state, all on the same fixed gradients (each its own copy) or the same "
        "fixed batch; each "
        f"time is the median of {s['repeats']} timed turns, after {s['warmup']} untimed "
        "warm-up turn(s) besides each contender's first step. "
        "Timings on a shared machine are noisy; the ratios are what carries over. NanoAdam's "
        f"step against torch's AdamW is measured in {s.get('step_rounds', 1)} round(s) spread "
        "over the run (section 1c), and its targets take the median over rounds.",
        "",
        "## Machine and settings",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, torch threads: {m['torch_threads']}; "
        f"CUDA device: {m['cuda_device'] or 'none'}; load average before / after: "
        f"{_load(m.get('load_average_before'))} / {_load(m.get('load_average_after'))}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- device {s['device']}; optimizer steps in {s['step_dtype']}, training steps in "
        f"{s['training_dtype']}; density k = {s['density']}, NanoAdam mask interval "
        f"{s['mask_interval']}, MicroAdam window {s['window']}; training steps: batch "
        f"{s['batch_size']} of {s['image_size']} x {s['image_size']} images, one 10-class "
        "head; random (not pretrained) weights",
        "",
    ]
    notes = [
        f"{r['model']}: {name} skipped ({why})"
        for part in ("optimizer_step", "training_step")
        for r in results[part]
        for name, why in r.get("skipped", {}).items()
    ]
    notes += [
        f"{r['model']}: gradients changed during the step benchmark"
        for r in results["optimizer_step"]
        if not r.get("gradients_intact", True)
    ]
    for table in tables(results):
        lines += [f"## {table.title}", ""]
        if table.key in _PARTS:
            lines += [_PARTS[table.key], ""]
        lines += [markdown_table(table), ""]
        if table.note:
            lines += [table.note, ""]
        if table.key == "scaling" and plot:
            lines += [f"![step and refresh time over model size]({plot})", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def _load(values: list[float] | None) -> str:
    return "—" if not values else ", ".join(f"{x:g}" for x in values)
