"""``cifar10`` and ``flowers102``: the paper's two tasks, read through torchvision.

Data lives under the run's data directory in torchvision's own layout and is downloaded only when
asked (``download=True``, i.e. ``--download``, or `Task.fetch`, i.e. ``clbench fetch``). Without it
and offline, `datasets` raises a one-line `TaskError` that names the fix, before any training.

Flowers102 split: the paper finetunes on Flowers102's official ``train`` split (1020 images, 10 per
class) and reports accuracy on the official ``test`` split (6149 images). We do the same; the
``val`` split (another 1020 images) is left unused, so that numbers stay comparable with the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets as tvd

from .base import InputSpec, Task, TaskError, register
from .transforms import image_transform


def _one_line(error: BaseException) -> str:
    """The first line of an exception's message, for error messages that must stay one line."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class TorchvisionTask(Task):
    """A task backed by a torchvision dataset class; subclasses say which files it needs and how
    to build each split."""

    #: Human name used in messages, e.g. "CIFAR-10".
    title: str
    #: Files and folders (relative to data_dir) that must exist before reading without download.
    required: tuple[str, ...]

    def build(self, root: Path, train: bool, transform: Callable, download: bool) -> Dataset:
        """One split, as the torchvision dataset class."""
        raise NotImplementedError

    def _fetch_hint(self, data_dir: Path) -> str:
        return (
            f"run `clbench fetch --tasks {self.name}` on a machine with internet and copy the "
            f"data to {data_dir}, or pass --download"
        )

    def missing(self, data_dir: Path) -> list[str]:
        """Required files absent under `data_dir` (empty when the data looks present)."""
        return [rel for rel in self.required if not (data_dir / rel).exists()]

    def datasets(
        self, spec: InputSpec, data_dir: Path, download: bool = False, augment: bool = False
    ) -> tuple[Dataset, Dataset]:
        data_dir = Path(data_dir).absolute()
        if not download:
            missing = self.missing(data_dir)
            if missing:
                raise TaskError(
                    f"{self.title} not found under {data_dir} (missing {missing[0]}): "
                    f"{self._fetch_hint(data_dir)}"
                )
        else:
            self.fetch(data_dir)
        try:
            train = self.build(data_dir, True, image_transform(spec, augment), False)
            test = self.build(data_dir, False, image_transform(spec, False), False)
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            raise TaskError(
                f"{self.title} under {data_dir} is incomplete or corrupted "
                f"({_one_line(error)}): delete it and {self._fetch_hint(data_dir)}"
            ) from None
        return train, test

    def fetch(self, data_dir: Path) -> None:
        """Download (and check) both splits into `data_dir`; a no-op when already there."""
        data_dir = Path(data_dir).absolute()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            for train in (True, False):
                self.build(data_dir, train, None, True)
        except Exception as error:  # network, disk, checksum: all end the same way for the user
            raise TaskError(
                f"could not download {self.title} into {data_dir} ({_one_line(error)}): check the "
                f"internet connection, or fetch it on another machine with `clbench fetch --tasks "
                f"{self.name}` and copy the folder here"
            ) from None


CIFAR10_FILES = tuple(
    f"{tvd.CIFAR10.base_folder}/{name}"
    for name in [n for n, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list]
    + [tvd.CIFAR10.meta["filename"]]
)


@register("cifar10")
class Cifar10Task(TorchvisionTask):
    name = "cifar10"
    num_classes = 10
    title = "CIFAR-10"
    description = (
        "CIFAR-10 (torchvision): 10 classes of 32x32 photos, 50000 train / 10000 test; "
        "the paper's task 1. Download with --download or `clbench fetch`."
    )
    required = CIFAR10_FILES

    def build(self, root: Path, train: bool, transform: Callable, download: bool) -> Dataset:
        return tvd.CIFAR10(root, train=train, transform=transform, download=download)


@register("flowers102")
class Flowers102Task(TorchvisionTask):
    name = "flowers102"
    num_classes = 102
    title = "Flowers102"
    description = (
        "Oxford Flowers102 (torchvision): 102 flower species; trains on the official train "
        "split (1020 images) and tests on the official test split (6149), as the paper does; "
        "the paper's task 2. Download with --download or `clbench fetch`."
    )
    required = ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat")

    def build(self, root: Path, train: bool, transform: Callable, download: bool) -> Dataset:
        split = "train" if train else "test"
        return tvd.Flowers102(root, split=split, transform=transform, download=download)
