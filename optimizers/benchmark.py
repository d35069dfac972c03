"""Step time of NanoAdam against torch's AdamW on the parameters of real timm models.

    python -m optimizers.benchmark [--models resnet18 vit_small_patch16_224] [--json FILE]

Every optimizer gets its own copy of the model's parameters and the same fixed random gradients;
the optimizers take turns (alternating repetitions) in one process and medians are reported.
NanoAdam runs on `param_groups(model)` (heads and norms dense), as in training, at density 1%
with a mask refresh every 100 steps; its step time is amortized over the 100-step cycle:
(99 plain steps + 1 refresh step) / 100. It runs twice: with its default `flatten=True` (sparse
parameters moved into one shared buffer) and with `flatten=False` (parameters left where they
are). AdamW is timed fused, foreach and as a single-tensor loop on all parameters; the best of
the three is the reference.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch

from . import NanoAdam, param_groups

ADAMW_IMPLEMENTATIONS = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "loop": {"foreach": False},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _with_gradients(model: torch.nn.Module, grads: list[torch.Tensor]) -> torch.nn.Module:
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    return model


def benchmark_model(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    repetitions: int,
    adamw_steps: int,
    density: float,
    mask_interval: int,
) -> dict[str, object]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).to(device=device, dtype=dtype)
    grads = [torch.randn_like(p) * 1e-3 for p in model.parameters()]
    contenders: dict[str, tuple[torch.optim.Optimizer, torch.nn.Module]] = {}
    for label, kwargs in ADAMW_IMPLEMENTATIONS.items():
        m = _with_gradients(copy.deepcopy(model), grads)
        try:
            contenders[f"adamw_{label}"] = (torch.optim.AdamW(m.parameters(), **kwargs), m)
        except (RuntimeError, ValueError):  # e.g. no fused kernel for this device / dtype
            continue
    nanos = {}
    for key, flatten in (("nanoadam", True), ("nanoadam_per_tensor", False)):
        m = _with_gradients(copy.deepcopy(model), grads)
        nanos[key] = NanoAdam(
            param_groups(m), density=density, mask_interval=mask_interval, flatten=flatten
        )
        contenders[key] = (nanos[key], m)
    nano = nanos["nanoadam"]

    times: dict[str, list[float]] = {key: [] for key in contenders}
    refresh_times: dict[str, list[float]] = {key: [] for key in nanos}
    for opt, _ in contenders.values():  # warm-up: allocate state, first mask
        opt.step()
    for _ in range(repetitions):
        for key, (opt, _) in contenders.items():
            if key in nanos:
                for _ in range(mask_interval):
                    refresh = opt._runtime[0].step % mask_interval == 0
                    timed = _timed(opt.step, device)
                    (refresh_times[key] if refresh else times[key]).append(timed)
            else:
                times[key] += [_timed(opt.step, device) for _ in range(adamw_steps)]

    medians = {key: statistics.median(values) for key, values in times.items()}
    nano_ms = {}
    for key in nanos:
        plain = medians.pop(key)
        refresh_step = statistics.median(refresh_times[key])
        amortized = ((mask_interval - 1) * plain + refresh_step) / mask_interval
        nano_ms[key] = (plain, refresh_step, amortized)
    best_key = min(medians, key=medians.get)
    best = medians[best_key]
    plain, refresh_step, amortized = nano_ms["nanoadam"]
    per_tensor = nano_ms["nanoadam_per_tensor"]
    sparse = [p for g in nano.param_groups if g["sparse"] for p in g["params"]]
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "sparse_tensors": len(sparse),
        "selected": sum(nano.state[p]["offsets"].numel() for p in sparse),
        "adamw_ms": {key[len("adamw_") :]: 1e3 * t for key, t in medians.items()},
        "best_adamw": best_key[len("adamw_") :],
        "nanoadam_step_ms": 1e3 * plain,
        "nanoadam_refresh_step_ms": 1e3 * refresh_step,
        "nanoadam_amortized_ms": 1e3 * amortized,
        "ratio_amortized_vs_best_adamw": amortized / best,
        "refresh_vs_adamw_step": (refresh_step - plain) / best,
        "nanoadam_state_bytes": nano.state_bytes(),
        "per_tensor_step_ms": 1e3 * per_tensor[0],
        "per_tensor_refresh_step_ms": 1e3 * per_tensor[1],
        "per_tensor_amortized_ms": 1e3 * per_tensor[2],
        "per_tensor_ratio": per_tensor[2] / best,
    }


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vit_small_patch16_224"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--adamw-steps", type=int, default=5, help="AdamW steps per repetition")
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--mask-interval", type=int, default=100)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    results = []
    print(
        f"device {device} ({torch.get_num_threads()} CPU threads), params {args.dtype}, "
        f"torch {torch.__version__}, density {args.density}, refresh every {args.mask_interval}"
    )
    header = (
        f"{'model':<24}{'AdamW best (ms)':>18}{'NanoAdam step':>15}{'refresh step':>14}"
        f"{'amortized':>11}{'ratio':>8}{'refresh/AdamW':>15}"
    )
    print(header)
    for name in args.models:
        r = benchmark_model(
            name,
            device,
            dtype,
            args.repetitions,
            args.adamw_steps,
            args.density,
            args.mask_interval,
        )
        results.append(r)
        best = f"{r['adamw_ms'][r['best_adamw']]:.2f} {r['best_adamw']}"
        print(
            f"{name:<24}{best:>18}{r['nanoadam_step_ms']:>15.2f}"
            f"{r['nanoadam_refresh_step_ms']:>14.2f}{r['nanoadam_amortized_ms']:>11.2f}"
            f"{r['ratio_amortized_vs_best_adamw']:>8.3f}{r['refresh_vs_adamw_step']:>15.2f}"
        )
        others = ", ".join(f"{k} {v:.2f}" for k, v in r["adamw_ms"].items())
        print(f"{'':<24}AdamW ms: {others}")
        print(
            f"{'':<24}NanoAdam flatten=False: step {r['per_tensor_step_ms']:.2f}, refresh step "
            f"{r['per_tensor_refresh_step_ms']:.2f}, amortized {r['per_tensor_amortized_ms']:.2f}"
            f", ratio {r['per_tensor_ratio']:.3f}"
        )
    if args.json:
        meta = {"device": str(device), "threads": torch.get_num_threads(), "dtype": args.dtype}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
