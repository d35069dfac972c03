"""Shared fixtures: tiny on-disk datasets that any test can build in its tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def _class_image(rng: np.random.Generator, k: int, size: int) -> np.ndarray:
    """An RGB uint8 image whose colour and stripe direction depend on class `k`, plus noise:
    different enough between classes for a small model to learn within a few steps."""
    hue = np.array([(k * 0.37) % 1.0, (k * 0.61 + 0.3) % 1.0, (k * 0.23 + 0.6) % 1.0])
    coords = np.arange(size)
    stripes = ((coords // max(size // 4, 1)) % 2).astype(np.float64)
    pattern = stripes[None, :] if k % 2 == 0 else stripes[:, None]
    pattern = np.broadcast_to(pattern, (size, size))
    image = hue[None, None, :] * (0.5 + 0.5 * pattern[..., None])
    image = image + rng.normal(0, 0.05, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    its tensors are small and time nothing, and on a busy machine a thread pool spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_image_folder() -> Callable[..., Path]:
    """Return ``make(root, classes=("a", "b"), per_class_train=6, per_class_test=3, size=16,
    seed=0) -> root``, which writes an ImageFolder tree ``root/{train,test}/<class>/*.png``."""

    def make(
        root: Path,
        classes: Sequence[str] = ("a", "b"),
        per_class_train: int = 6,
        per_class_test: int = 3,
        size: int = 16,
        seed: int = 0,
    ) -> Path:
        rng = np.random.default_rng(seed)
        for split, count in (("train", per_class_train), ("test", per_class_test)):
            for k, name in enumerate(classes):
                folder = Path(root) / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    Image.fromarray(_class_image(rng, k, size)).save(folder / f"{i:03d}.png")
        return Path(root)

    return make
