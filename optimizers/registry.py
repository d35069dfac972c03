"""The optimizer registry: one `OptimizerSpec` per optimizer, nothing else to edit to add one.

Third-party packages register through the entry-point group ``clbench.optimizers``; an entry point
may be an `OptimizerSpec` or a zero-argument callable returning one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch
from torch import nn

from .groups import param_groups


class OptimizerError(ValueError):
    """A mistake the user can fix (unknown name, unsupported hyperparameter); one line."""


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer.

    factory: called as ``factory(param_groups, **hparams)``; returns a `torch.optim.Optimizer`.
    defaults: every hyperparameter the optimizer takes besides ``lr``, with its default. Only these
        (and ``lr``) may be passed to `create`.
    memory: the optimizer-state memory as a formula in S (parameters) and its hyperparameters.
    sparse: whether it honours ``sparse=False`` param groups (dense optimizers ignore them).
    groups: how `create` splits a model into param groups (default: `param_groups`); for an
        optimizer that treats some layers specially (GaLore: attention and MLP weights).
    """

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    memory: str = ""
    sparse: bool = False
    groups: Callable[[nn.Module], list[dict]] | None = None

    def accepts(self, hparam: str) -> bool:
        return hparam == "lr" or hparam in self.defaults


_REGISTRY: dict[str, OptimizerSpec] = {}
_ENTRY_POINTS_LOADED = False


def register(spec: OptimizerSpec, *, replace: bool = False) -> OptimizerSpec:
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in metadata.entry_points(group="clbench.optimizers"):
        obj = ep.load()
        spec = obj if isinstance(obj, OptimizerSpec) else obj()
        register(spec, replace=True)


def available() -> dict[str, OptimizerSpec]:
    """All registered optimizers by name, built-ins and entry points."""
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> OptimizerSpec:
    specs = available()
    if name not in specs:
        close = difflib.get_close_matches(name, list(specs), n=1)
        hint = f" — did you mean {close[0]}?" if close else ""
        raise OptimizerError(
            f"unknown optimizer {name!r}{hint} (see `clbench list optimizers`: {', '.join(specs)})"
        )
    return specs[name]


def create(
    name: str, model_or_params: nn.Module | Iterable[Any], **hparams: Any
) -> torch.optim.Optimizer:
    """Build optimizer `name` for a model (param groups from the spec's `groups`, by default
    `param_groups`) or for given params.

    Hyperparameters not given take the spec's defaults; one the optimizer does not take is an
    error rather than silently ignored.
    """
    spec = get(name)
    unknown = sorted(k for k in hparams if not spec.accepts(k))
    if unknown:
        takes = ", ".join(["lr", *spec.defaults]) or "lr"
        raise OptimizerError(
            f"optimizer {name!r} does not take {', '.join(unknown)} (it takes: {takes})"
        )
    kwargs = {**spec.defaults, "lr": spec.lr, **hparams}
    if isinstance(model_or_params, nn.Module):
        params: Any = (spec.groups or param_groups)(model_or_params)
    else:
        params = list(model_or_params)
    return spec.factory(params, **kwargs)


def tensor_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in ``optimizer.state``."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer's own `state_bytes()` when it has one, else `tensor_state_bytes`."""
    own = getattr(optimizer, "state_bytes", None)
    return int(own()) if callable(own) else tensor_state_bytes(optimizer)
