"""``digits``: scikit-learn's bundled 8 x 8 handwritten digits, real data that needs no download.

1797 greyscale digits (0-9) ship inside scikit-learn, so the offline demo and the tests can use a
real dataset. Pixels (0-16) are scaled to [0, 1], replicated to three channels and upsampled to the
model's input size. The train/test split is fixed (stratified 80/20, its own seed) and does not
move with the run's seed: every run is scored on the same 360 test digits.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from .base import InputSpec, Task, register
from .inmemory import InMemoryImages

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def digits_split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (images, labels), "test": ...}``, images ``[N, 3, 8, 8]`` in [0, 1]."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0)
    labels = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=TEST_FRACTION,
        stratify=labels.numpy(),
        random_state=SPLIT_SEED,
    )
    rgb = images[:, None].expand(-1, 3, -1, -1).contiguous()
    return {
        "train": (rgb[train_idx], labels[train_idx]),
        "test": (rgb[test_idx], labels[test_idx]),
    }


@register("digits")
class DigitsTask(Task):
    """Handwritten digits 0-9 (scikit-learn's copy of the UCI optical digits test set)."""

    name = "digits"
    num_classes = 10
    offline = True
    description = (
        "Handwritten digits 0-9, 8x8 greyscale bundled with scikit-learn (offline, real data): "
        "1437 train / 360 test images, fixed stratified split, upsampled to the model's size."
    )

    def datasets(
        self, spec: InputSpec, data_dir: Path, download: bool = False, augment: bool = False
    ) -> tuple[Dataset, Dataset]:
        """In-memory (train, test). `augment` is ignored: flips and crops would change digits
        into other digits at 8 px, and data_dir/download have nothing to do."""
        split = digits_split()
        return InMemoryImages(*split["train"], spec), InMemoryImages(*split["test"], spec)
