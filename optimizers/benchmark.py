"""Step time of the optimizers on the parameters of real timm models, measured side by side.

    python -m optimizers.benchmark [--models resnet18 vit_small_patch16_224] [--json FILE]

Every optimizer gets its own copy of the model's parameters, fresh state and the same fixed random
gradients; after warm-up the optimizers take turns (A B C A B C ..., never A A A B B B) in one
process, the device is synchronised around every timed step, and medians are reported.
NanoAdam runs on `param_groups(model)` (heads and norms dense), as in training, at density 1%.
Its plain step is timed with a static mask, its refresh step with a refresh at every step
(`mask_interval=1`); the refresh is their difference, and the step amortized over a cycle of
`mask_interval` steps is ((interval - 1) x plain + refresh step) / interval. It runs twice: with
its default `flatten=True` (sparse parameters moved into one shared buffer) and with
`flatten=False`. AdamW is timed fused, foreach and as a single-tensor loop on all parameters;
the best of the three is the reference. `clbench bench` builds on this module.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .baselines import AdamW
from .groups import param_groups
from .registry import OptimizerError, create, get

Factory = Callable[[nn.Module], torch.optim.Optimizer]

#: torch's three AdamW implementations, by the name the results use.
ADAMW_IMPLEMENTATIONS = {
    "adamw_fused": {"fused": True},
    "adamw_foreach": {"foreach": True},
    "adamw_loop": {"foreach": False},
}


class Timer:
    """Seconds one call takes, with the device synchronised before and after it (CUDA runs
    asynchronously). `clock` and `sync` can be replaced, e.g. by a fake clock in tests."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        clock: Callable[[], float] = time.perf_counter,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self.clock, self.sync = clock, sync or _synchronizer(torch.device(device))

    def __call__(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = self.clock()
        fn()
        self.sync()
        return self.clock() - start


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work (CUDA and MPS run asynchronously)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def alternate(
    contenders: Mapping[str, Callable[[], object]],
    repeats: int,
    timer: Timer,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Time every contender `repeats` times, taking turns in a fixed order (A B C A B C ...),
    after `warmup` untimed turns each (taken in turns too). Returns each contender's times."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {key: [] for key in contenders}
    for _ in range(repeats):
        for key, fn in contenders.items():
            times[key].append(timer(fn))
    return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    return {key: statistics.median(values) for key, values in times.items() if values}


def fixed_gradients(model: nn.Module, seed: int = 0, scale: float = 1e-3) -> list[torch.Tensor]:
    """One random gradient per parameter, the same for every optimizer."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(p.shape, generator=generator) * scale).to(p.device, p.dtype)
        for p in model.parameters()
    ]


def attach(model: nn.Module, grads: list[torch.Tensor]) -> nn.Module:
    """Give the parameters these gradient tensors (not copied)."""
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g
    return model


def step_factories(
    names: Iterable[str],
    density: float = 0.01,
    window: int = 10,
) -> dict[str, Factory]:
    """How to build each contender on a model. Names: `ADAMW_IMPLEMENTATIONS` (torch AdamW on
    all parameters); "nanoadam" (static mask: its step without refresh); "nanoadam_refresh"
    (a refresh at every step); "nanoadam_per_tensor" and "nanoadam_per_tensor_refresh" (the
    same with `flatten=False`); any registered optimizer by name (registry defaults, with the
    density and window of the sparse ones)."""
    factories: dict[str, Factory] = {}
    for name in names:
        if name in ADAMW_IMPLEMENTATIONS:
            kwargs = ADAMW_IMPLEMENTATIONS[name]
            factories[name] = lambda m, kw=kwargs: AdamW(m.parameters(), **kw)
        elif name.startswith("nanoadam"):
            refresh = 1 if name.endswith("_refresh") else None
            flatten = "per_tensor" not in name
            factories[name] = lambda m, r=refresh, f=flatten: create(
                "nanoadam", param_groups(m, flatten=f), density=density, mask_interval=r
            )
        else:
            hparams = sparse_hparams(name, density, window)
            factories[name] = lambda m, n=name, h=hparams: create(n, m, **h)
    return factories


def sparse_hparams(name: str, density: float, window: int) -> dict[str, object]:
    """The density (and MicroAdam's window) for the optimizers that take them."""
    spec = get(name)
    out: dict[str, object] = {}
    if spec.accepts("density"):
        out["density"] = density
    if spec.accepts("window"):
        out["window"] = window
    return out


@dataclass
class StepBenchmark:
    """Step times of the contenders on one model (seconds, in the order measured)."""

    times: dict[str, list[float]]
    optimizers: dict[str, torch.optim.Optimizer] = field(repr=False)
    models: dict[str, nn.Module] = field(repr=False)
    skipped: dict[str, str]
    gradients_intact: bool

    @property
    def medians(self) -> dict[str, float]:
        return medians(self.times)

    def best_adamw(self) -> tuple[str, float] | None:
        """The fastest of torch's AdamW implementations: (name, median seconds)."""
        m = {k: v for k, v in self.medians.items() if k in ADAMW_IMPLEMENTATIONS}
        if not m:
            return None
        best = min(m, key=m.get)
        return best, m[best]


def refresh_figures(plain: float, refresh_step: float, mask_interval: int) -> dict[str, float]:
    """NanoAdam's refresh from the median plain step and the median refresh step (seconds):
    the refresh alone, and the step amortized over one cycle of `mask_interval` steps."""
    return {
        "step": plain,
        "refresh_step": refresh_step,
        "refresh": refresh_step - plain,
        "amortized": ((mask_interval - 1) * plain + refresh_step) / mask_interval,
    }


def benchmark_steps(
    model: nn.Module,
    factories: Mapping[str, Factory],
    repeats: int,
    timer: Timer,
    warmup: int = 1,
    grads: list[torch.Tensor] | None = None,
) -> StepBenchmark:
    """Time one optimizer step of every contender on its own copy of `model` (which must hold
    no gradients) and its own copy of the same fixed gradients: shared gradients would let a
    contender find in cache the entries the previous one just read (two NanoAdams with the same
    mask read the same ones). A contender that cannot be built or fails its first step (a
    missing package, no kernel for this device) is skipped with the reason. `gradients_intact`
    says whether every contender's gradients still equal the originals afterwards."""
    grads = fixed_gradients(model) if grads is None else grads
    checksum = _checksum(grads)
    optimizers, models, skipped = {}, {}, {}
    for name, build in factories.items():
        m = attach(copy.deepcopy(model), [g.clone() for g in grads])
        try:
            opt = build(m)
            opt.step()  # the first step allocates the state (and the first mask)
        except (OptimizerError, RuntimeError, ValueError, NotImplementedError) as exc:
            skipped[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        optimizers[name], models[name] = opt, m
    steps = {name: opt.step for name, opt in optimizers.items()}
    times = alternate(steps, repeats, timer, warmup)
    intact = all(_checksum([p.grad for p in m.parameters()]) == checksum for m in models.values())
    return StepBenchmark(times, optimizers, models, skipped, intact)


def _checksum(tensors: list[torch.Tensor]) -> float:
    return float(sum(t.double().sum() * (i + 1) for i, t in enumerate(tensors)))


# -- command line ------------------------------------------------------------------------------
CONTENDERS = (
    *ADAMW_IMPLEMENTATIONS,
    "nanoadam",
    "nanoadam_refresh",
    "nanoadam_per_tensor",
    "nanoadam_per_tensor_refresh",
)


def benchmark_model(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    repetitions: int,
    density: float,
    mask_interval: int,
) -> dict[str, object]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).to(device=device, dtype=dtype)
    bench = benchmark_steps(
        model, step_factories(CONTENDERS, density), repetitions, Timer(device), warmup=2
    )
    med = bench.medians
    best_key, best = bench.best_adamw()
    nano = refresh_figures(med["nanoadam"], med["nanoadam_refresh"], mask_interval)
    per_tensor = refresh_figures(
        med["nanoadam_per_tensor"], med["nanoadam_per_tensor_refresh"], mask_interval
    )
    opt = bench.optimizers["nanoadam"]
    sparse = [p for g in opt.param_groups if g["sparse"] for p in g["params"]]
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "sparse_tensors": len(sparse),
        "selected": sum(opt.state[p]["offsets"].numel() for p in sparse),
        "adamw_ms": {k.removeprefix("adamw_"): 1e3 * v for k, v in med.items() if "adamw" in k},
        "best_adamw": best_key.removeprefix("adamw_"),
        "nanoadam_step_ms": 1e3 * nano["step"],
        "nanoadam_refresh_step_ms": 1e3 * nano["refresh_step"],
        "nanoadam_amortized_ms": 1e3 * nano["amortized"],
        "ratio_amortized_vs_best_adamw": nano["amortized"] / best,
        "refresh_vs_adamw_step": nano["refresh"] / best,
        "nanoadam_state_bytes": opt.state_bytes(),
        "per_tensor_step_ms": 1e3 * per_tensor["step"],
        "per_tensor_refresh_step_ms": 1e3 * per_tensor["refresh_step"],
        "per_tensor_amortized_ms": 1e3 * per_tensor["amortized"],
        "per_tensor_ratio": per_tensor["amortized"] / best,
    }


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vit_small_patch16_224"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repetitions", type=int, default=20, help="timed steps per optimizer")
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
        r = benchmark_model(name, device, dtype, args.repetitions, args.density, args.mask_interval)
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
