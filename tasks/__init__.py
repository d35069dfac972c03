"""Task definitions: one module per dataset family, a registry, task sequences.

``tasks.get("cifar10")``, ``tasks.get("folder:/data/mytask")``, ``tasks.available()``.
Importing this package registers every built-in task: ``cifar10``, ``flowers102`` (torchvision,
downloaded on request), ``digits`` (bundled with scikit-learn), ``shapes`` and ``gratings``
(generated) and the ``folder:PATH`` family.
"""

from . import digits, folder, generated, torchvision_tasks  # noqa: F401  (they register tasks)
from .base import InputSpec, Task, TaskError, available, get, prefixes, register, register_prefix
from .inmemory import InMemoryImages
from .transforms import image_transform, resize_normalise

__all__ = [
    "InMemoryImages",
    "InputSpec",
    "Task",
    "TaskError",
    "available",
    "get",
    "image_transform",
    "prefixes",
    "register",
    "register_prefix",
    "resize_normalise",
]
