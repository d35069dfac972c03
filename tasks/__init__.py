"""Task definitions: one module per dataset family, a registry, task sequences.

``tasks.get("cifar10")``, ``tasks.get("folder:/data/mytask")``, ``tasks.available()``.
"""

from .base import InputSpec, Task, TaskError, available, get, prefixes, register, register_prefix

__all__ = [
    "InputSpec",
    "Task",
    "TaskError",
    "available",
    "get",
    "prefixes",
    "register",
    "register_prefix",
]
