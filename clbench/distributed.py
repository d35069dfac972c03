"""Data-parallel runs under torchrun: `torchrun --nproc-per-node N -m clbench run ...`.

Every process holds a full replica of the model and the optimizer and walks the same global batch
list; each takes its contiguous share of every global batch (`shard`), the gradients are summed
across processes weighted by share size (`sum_gradients`), so each step is the single-process step
on the whole global batch, up to floating-point reduction order. Replicas therefore stay
identical, and with them everything the optimizers derive from weights and gradients (NanoAdam's
masks). Only process 0 touches files (`main_only`, `run_on_main`).

Without torchrun (no WORLD_SIZE in the environment) every helper here is a no-op.
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError

T = TypeVar("T")

#: gradients are all-reduced in flat buckets of at most this many bytes
BUCKET_BYTES = 64 * 2**20


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE) with more than one
    process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """The process group is up and has more than one process: collectives are needed."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Process 0, the one that writes files and shows progress (true in a single process)."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Under torchrun, join the process group (NCCL on CUDA, gloo on the CPU) and return this
    process's device (cuda:LOCAL_RANK on CUDA); otherwise return `device` unchanged."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(
            f"multi-process runs work on CUDA or the CPU, not {device.type}: "
            "pass --device cuda or --device cpu"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend)
        atexit.register(_teardown)
    return device


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers become SyncBatchNorm, so that batch statistics (and the running ones)
    are those of the global batch, as in a single process. torch has SyncBatchNorm on CUDA only,
    so a multi-process CPU run of a BatchNorm model is refused."""
    if not active():
        return model
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if device.type != "cuda":
            raise UserError(
                "multi-process runs of BatchNorm models need CUDA (SyncBatchNorm): run on GPUs, "
                "or use a single process on the CPU"
            )
        from timm.layers import convert_sync_batchnorm  # also converts timm's BatchNormAct2d

        model = convert_sync_batchnorm(model)
    return model


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of `indices` (sizes differ by at most one; all of them in
    a single process)."""
    if not active():
        return indices
    return indices.tensor_split(dist.get_world_size())[dist.get_rank()]


def batch_share(loss: torch.Tensor, n: int) -> tuple[float, float]:
    """(weight of this process's gradient, mean loss over the global batch) for a mean `loss`
    over this process's `n` samples. The weight n / N_global makes the summed gradients those of
    the global mean loss, also when shares differ in size."""
    value = float(loss.detach())
    if not active():
        return 1.0, value
    loss_sum, count = all_reduce(value * n, n)
    return n / count, loss_sum / count


def sum_gradients(model: nn.Module) -> None:
    """All-reduce (sum) the gradients of `model` in flat buckets. Every process has gradients
    for the same parameters (the same graph ran on each), so the buckets match; parameters
    without a gradient (the heads of other tasks) keep none."""
    if not active():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        if bucket and (g.dtype != bucket[0].dtype or size + g.nbytes > BUCKET_BYTES):
            _all_reduce_flat(bucket)
            bucket, size = [], 0
        bucket.append(g)
        size += g.nbytes
    if bucket:
        _all_reduce_flat(bucket)


def _all_reduce_flat(tensors: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    for t, reduced in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(reduced.view_as(t))


def all_reduce(*values: float, op: str = "sum") -> tuple[float, ...]:
    """Sums (or maxima, `op="max"`) over processes of a few numbers (the numbers themselves in a
    single process)."""
    if not active():
        return values
    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else None
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tuple(totals.tolist())


def broadcast_object(obj: T) -> T:
    """Process 0's `obj` on every process (pickled; for small objects)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_parameters(model: nn.Module) -> None:
    """Copy process 0's parameters and buffers to every process (as DDP does at its start), so
    replicas start identical even if an initialisation was not deterministic."""
    if not active():
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if active():
        dist.barrier()


def main_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: `fn` runs on process 0 only (it writes files); elsewhere it returns None."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def run_on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` on process 0 and give every process its result, or raise the exception it raised
    on every process (so a refused run directory stops all processes, not just one)."""
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            error = exc
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def any_signal(signum: int | None) -> int | None:
    """The stop signal received by any process, so that all of them stop after the same step."""
    if not active():
        return signum
    (highest,) = all_reduce(signum or 0, op="max")
    return int(highest) or None
