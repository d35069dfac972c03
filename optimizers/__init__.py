"""Optimizers under test, usable on their own: ``from optimizers import NanoAdam``.

`available()` lists the registry, `create(name, model_or_params, **hparams)` builds one, and
`param_groups(model)` splits a model into the sparse and the dense (heads, norms) group.
"""

# Registering modules: adamw, sgd; adamw8bit, galore (their packages load on use).
from . import baselines, external  # noqa: F401
from .fused_backward import FusedBackward, FusedBackwardError
from .groups import dense_modules, is_norm, param_groups
from .microadam import MicroAdam
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
    "FusedBackward",
    "FusedBackwardError",
    "MicroAdam",
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
