"""NanoAdam's Triton step against its torch path, on the device that will run it.

    python -m optimizers.gpu_check [--device cuda] [--out DIR] [--benchmark MODEL ...]

For each combination of parameter dtype (fp32, bf16), moment dtype (fp32, bf16) and weight decay
(0, 0.1), two copies of the same parameters (tensors with several chunks, a short last chunk, a
scalar, and a dense group) take the same steps with the same gradients, one through the fused
Triton kernel and one through the torch path, refreshing the mask every 3 steps (7 steps in fp32,
one where anything is bf16: see `cases`). The parameters,
the masks and the moments must agree (masks exactly; values within tolerances set by the dtypes),
and the Triton copy must have taken one kernel launch per step of its sparse group. Two more
cases run the Triton copy inside backward (`optimizers.FusedBackward`: one launch per sparse
tensor) against the torch path's usual step. Prints a table;
with `--out`, writes ``gpu_check.json`` and ``gpu_check.md`` there. Exit status 0 when every case
agrees, 1 when one does not, 2 when the device or Triton is missing.

With `--benchmark MODEL ...` it also times NanoAdam's step against torch's AdamW on those timm
models' parameters (`optimizers.benchmark`, bf16 by default: `--dtype`). `clbench bench --device
cuda` measures the rest; `docs/gpu.md` lists the whole check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .nanoadam import NanoAdam

#: Shapes of the sparse parameters: several chunks with a short last one, a tensor shorter than
#: a chunk, a scalar; then the dense group's.
SPARSE_SHAPES = ((300, 70), (300,), (1,))
DENSE_SHAPES = ((2, 3, 40, 40),)

#: How far the two paths may differ, by dtype: fp32 up to reassociation; bf16 by two bf16 steps
#: (the update and the new value are each rounded to bf16; a GPU rounds to nearest even, as torch
#: does, while Triton's CPU interpreter truncates, so there each rounding may differ by a step),
#: or, for bf16 parameters, by 1e-4 where a parameter and its update (about lr = 1e-2) nearly
#: cancel. A wrong update is off by about lr.
PARAM_TOL = {
    torch.float32: {"rtol": 1e-6, "atol": 1e-7},
    torch.bfloat16: {"rtol": 2**-6, "atol": 1e-4},
}
STATE_TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-8},
    torch.bfloat16: {"rtol": 2**-6, "atol": 1e-12},
}


@dataclass
class Case:
    """One comparison of the two paths and what it found."""

    param_dtype: str
    state_dtype: str
    weight_decay: float
    fused_backward: bool  # the Triton copy updates inside backward, tensor by tensor
    steps: int
    launches: int  # Triton launches counted for the sparse group
    masks_equal: bool
    params_max_abs_diff: float
    moments_max_abs_diff: float
    agrees: bool
    problem: str = ""


def _copies(param_dtype: torch.dtype, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = SPARSE_SHAPES + DENSE_SHAPES
    return [torch.randn(s, generator=generator).to(device, param_dtype) for s in shapes]


def compare(
    device: torch.device,
    param_dtype: torch.dtype = torch.float32,
    state_dtype: torch.dtype = torch.float32,
    weight_decay: float = 0.0,
    steps: int = 7,
    mask_interval: int = 3,
    fused_backward: bool = False,
) -> Case:
    """Run both paths on the same parameters and gradients; see the module docstring. With
    `fused_backward`, the Triton copy steps inside backward (`optimizers.FusedBackward`), one
    launch per sparse tensor, against the torch path's usual step."""
    from . import _nanoadam_triton as fused
    from .fused_backward import FusedBackward

    start = _copies(param_dtype, device)
    runs = []
    launches: list[int] = []
    kernel_step = fused.sparse_adamw_triton

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        launches.append(1)
        return kernel_step(*args, **kwargs)

    fused.sparse_adamw_triton = counted
    try:
        for backend in ("torch", "triton"):
            params = [nn.Parameter(t.clone()) for t in start]
            n_sparse = len(SPARSE_SHAPES)
            opt = NanoAdam(
                [{"params": params[:n_sparse]}, {"params": params[n_sparse:], "sparse": False}],
                lr=1e-2,
                density=0.05,
                mask_interval=mask_interval,
                weight_decay=weight_decay,
                state_dtype=state_dtype,
                chunk_size=1024,
            )
            opt.backend = backend
            inside = FusedBackward(opt) if fused_backward and backend == "triton" else None
            generator = torch.Generator().manual_seed(1)
            for _ in range(steps):
                grads = [
                    torch.randn(p.shape, generator=generator).to(device, param_dtype)
                    for p in params
                ]
                if inside is not None:  # d/dp of sum(p * g) is g
                    inside.backward(sum((p * g).sum() for p, g in zip(params, grads, strict=True)))
                    continue
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                opt.step()
            runs.append((params, opt))
    finally:
        fused.sparse_adamw_triton = kernel_step
    (pa, oa), (pb, ob) = runs
    problems = []
    expected = steps * (len(SPARSE_SHAPES) if fused_backward else 1)
    if len(launches) != expected:
        problems.append(f"{len(launches)} Triton launches for {steps} steps, not {expected}")
    moved = all(not torch.equal(p, s) for p, s in zip(pb, start, strict=True))
    if not moved:
        problems.append("a parameter did not move")
    params_diff = max(
        (p.float() - q.float()).abs().max().item() for p, q in zip(pa, pb, strict=True)
    )
    params_close = all(
        torch.allclose(p.float(), q.float(), **PARAM_TOL[param_dtype])
        for p, q in zip(pa, pb, strict=True)
    )
    if not params_close:
        problems.append("parameters differ")
    masks_equal, moments_diff, moments_close = True, 0.0, True
    for p, q in zip(pa[: len(SPARSE_SHAPES)], pb[: len(SPARSE_SHAPES)], strict=True):
        masks_equal &= torch.equal(oa.state[p]["offsets"], ob.state[q]["offsets"])
        for name in ("exp_avg", "exp_avg_sq"):
            a, b = oa.state[p][name].float(), ob.state[q][name].float()
            moments_diff = max(moments_diff, (a - b).abs().max().item())
            moments_close &= torch.allclose(a, b, **STATE_TOL[state_dtype])
    if not masks_equal:
        problems.append("masks differ")
    if not moments_close:
        problems.append("moments differ")
    return Case(
        param_dtype=str(param_dtype).removeprefix("torch."),
        state_dtype=str(state_dtype).removeprefix("torch."),
        weight_decay=weight_decay,
        fused_backward=fused_backward,
        steps=steps,
        launches=len(launches),
        masks_equal=masks_equal,
        params_max_abs_diff=params_diff,
        moments_max_abs_diff=moments_diff,
        agrees=not problems,
        problem="; ".join(problems),
    )


def cases(device: torch.device, steps: int = 7) -> list[Case]:
    """Every combination of parameter dtype, moment dtype and weight decay: `steps` steps (two
    refreshes with carried moments at 7) where parameters and moments are fp32, one step where
    either is bf16. Over several steps, two correct paths drift apart in bf16: where their fp32
    results differ by reassociation, a stored bf16 value can round to either side, and from the
    next refresh on the masks (chosen by the parameters' magnitudes) differ too."""
    usual = [
        compare(device, param_dtype, state_dtype, weight_decay, steps if exact else 1)
        for param_dtype in (torch.float32, torch.bfloat16)
        for state_dtype in (torch.float32, torch.bfloat16)
        for weight_decay in (0.0, 0.1)
        for exact in [param_dtype == state_dtype == torch.float32]
    ]
    inside_backward = [
        compare(device, torch.float32, torch.float32, 0.1, steps, fused_backward=True),
        compare(device, torch.bfloat16, torch.bfloat16, 0.1, 1, fused_backward=True),
    ]
    return usual + inside_backward


def markdown(results: list[Case], device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    lines = [
        "# NanoAdam: Triton step against the torch path",
        "",
        f"Device {name}, torch {torch.__version__}; a refresh every 3 steps, density 5%, "
        "chunks of 1024.",
        "",
        "| params | moments | weight decay | step | steps | launches | masks equal "
        "| max abs diff params | max abs diff moments | agrees |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results:
        verdict = "yes" if c.agrees else f"NO: {c.problem}"
        lines.append(
            f"| {c.param_dtype} | {c.state_dtype} | {c.weight_decay} "
            f"| {'inside backward' if c.fused_backward else 'usual'} | {c.steps} | {c.launches} "
            f"| {'yes' if c.masks_equal else 'no'} | {c.params_max_abs_diff:.3g} "
            f"| {c.moments_max_abs_diff:.3g} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def _unavailable(device: torch.device) -> str | None:
    """Why the check cannot run on `device`, or None."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed: pip install triton (it comes with torch on Linux)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device here: run it on a GPU machine (or --device cpu, TRITON_INTERPRET=1)"
    if device.type == "cpu" and not _interpreting():
        return "Triton runs on the CPU only under its interpreter: set TRITON_INTERPRET=1"
    return None


def _bad_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments (checked before any work), or None."""
    import timm

    for name, value in (("--steps", args.steps), ("--repetitions", args.repetitions)):
        if value < 1:
            return f"{name} must be at least 1, got {value}"
    unknown = [m for m in args.benchmark if not timm.is_model(m)]
    if unknown:
        return f"unknown timm model {unknown[0]!r}: pass a name from timm.list_models()"
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def step_times(
    device: torch.device, models: list[str], dtype: torch.dtype, repetitions: int
) -> tuple[list[dict], str]:
    """`optimizers.benchmark.benchmark_model` on each timm model (parameters in `dtype`,
    density 1%, a refresh every 100 steps): the results and a Markdown table of them."""
    from .benchmark import benchmark_model

    results = [benchmark_model(m, device, dtype, repetitions, 0.01, 100) for m in models]
    lines = [
        "",
        f"## NanoAdam's step against the best torch AdamW ({str(dtype).removeprefix('torch.')} "
        f"parameters, density 1%, refresh every 100 steps, median of {repetitions} steps)",
        "",
        "| model | parameters | best AdamW | NanoAdam step | refresh step | amortized "
        "| amortized / AdamW | refresh / AdamW step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        best = r["best_adamw"]
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['adamw_ms'][best]:.3f} ms ({best}) "
            f"| {r['nanoadam_step_ms']:.3f} ms | {r['nanoadam_refresh_step_ms']:.3f} ms "
            f"| {r['nanoadam_amortized_ms']:.3f} ms | {r['ratio_amortized_vs_best_adamw']:.3f} "
            f"| {r['refresh_vs_adamw_step']:.2f} |"
        )
    return results, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=7, help="steps per case (default 7)")
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument(
        "--benchmark",
        nargs="+",
        metavar="MODEL",
        default=[],
        help="also time NanoAdam against torch's AdamW on these timm models' parameters, e.g. "
        "resnet18 vit_small_patch16_224 vit_large_patch16_224",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repetitions", type=int, default=20, help="timed steps per optimizer")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"error: unknown device {args.device!r}: use cuda, cuda:N or cpu", file=sys.stderr)
        return 2
    reason = _unavailable(device) or _bad_arguments(args)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    results = cases(device, args.steps)
    text = markdown(results, device)
    timings: list[dict] = []
    if args.benchmark:
        timings, table = step_times(
            device, args.benchmark, getattr(torch, args.dtype), args.repetitions
        )
        text += table
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(text)
        record = {"device": str(device), "cases": [asdict(c) for c in results], "steps": timings}
        (args.out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    return 0 if all(c.agrees for c in results) else 1


if __name__ == "__main__":
    sys.exit(main())
