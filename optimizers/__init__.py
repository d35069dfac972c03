"""Optimizers under test, usable on their own: ``from optimizers import NanoAdam``.

`available()` lists the registry, `create(name, model_or_params, **hparams)` builds one, and
`param_groups(model)` splits a model into the sparse and the dense (heads, norms) group.
"""

from . import baselines  # noqa: F401  (registers adamw, sgd)
from .groups import dense_modules, is_norm, param_groups
from .nanoadam import NanoAdam
from .registry import (
    OptimizerError,
    OptimizerSpec,
    available,
    create,
    get,
    register,
    state_bytes,
    tensor_state_bytes,
)

__all__ = [
    "NanoAdam",
    "OptimizerError",
    "OptimizerSpec",
    "available",
    "create",
    "dense_modules",
    "get",
    "is_norm",
    "param_groups",
    "register",
    "state_bytes",
    "tensor_state_bytes",
]
