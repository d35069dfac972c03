"""What a task is, and the registry that names them.

A task knows its name, its number of classes, and how to build its train and test datasets for a
model's input (size and normalisation from the model's timm data config). Datasets yield
``(image: float tensor [3, H, W], label: int)``.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset


class TaskError(ValueError):
    """A data problem the user can fix (unknown task, missing files, bad folder); one line that
    names the fix."""


@dataclass(frozen=True)
class InputSpec:
    """The model's expected input: what every task's transforms produce."""

    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"


class Task(ABC):
    """One classification task of a continual sequence."""

    name: str
    num_classes: int
    description: str = ""
    #: True when the data ships with the project or is generated (no download ever needed).
    offline: bool = False

    @abstractmethod
    def datasets(
        self, spec: InputSpec, data_dir: Path, download: bool = False, augment: bool = False
    ) -> tuple[Dataset, Dataset]:
        """(train, test) datasets. Raises `TaskError` naming the fix when data is missing."""

    def fetch(self, data_dir: Path) -> None:  # noqa: B027 (optional hook: offline tasks keep it)
        """Download the data into `data_dir` (no-op for offline tasks)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, classes={self.num_classes})"


_FACTORIES: dict[str, Callable[[], Task]] = {}
_PREFIXED: dict[str, Callable[[str], Task]] = {}


def register(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Decorator: register a zero-argument factory (often the Task class) under `name`."""

    def deco(factory: Callable[[], Task]) -> Callable[[], Task]:
        if name in _FACTORIES:
            raise ValueError(f"task {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return deco


def register_prefix(prefix: str) -> Callable[[Callable[[str], Task]], Callable[[str], Task]]:
    """Decorator: tasks named ``prefix:ARG`` (e.g. ``folder:PATH``) built by ``factory(ARG)``."""

    def deco(factory: Callable[[str], Task]) -> Callable[[str], Task]:
        _PREFIXED[prefix] = factory
        return factory

    return deco


def available() -> dict[str, Task]:
    """Every named task (prefix families such as ``folder:`` are not listed)."""
    return {name: factory() for name, factory in sorted(_FACTORIES.items())}


def prefixes() -> list[str]:
    return sorted(_PREFIXED)


def get(name: str) -> Task:
    """The task called `name`; ``prefix:ARG`` names go to their family. Unknown -> `TaskError`."""
    prefix, sep, arg = name.partition(":")
    if sep and prefix in _PREFIXED:
        return _PREFIXED[prefix](arg)
    if name in _FACTORIES:
        return _FACTORIES[name]()
    choices = list(_FACTORIES) + [f"{p}:PATH" for p in _PREFIXED]
    close = difflib.get_close_matches(name, list(_FACTORIES), n=1)
    hint = f" — did you mean {close[0]}?" if close else ""
    raise TaskError(f"unknown task {name!r}{hint} (known: {', '.join(choices)})")
