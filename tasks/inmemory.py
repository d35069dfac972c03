"""A dataset of images held in memory, for the offline tasks (digits, generated images).

These tasks are small and used by the demo and the tests, so their images are resized and
normalised once, up front, and indexing is a tensor lookup. At large input sizes (a 224 px model)
that copy would take gigabytes, so past `PRECOMPUTE_LIMIT_BYTES` each item is resized on access.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .base import InputSpec
from .transforms import resize_normalise

PRECOMPUTE_LIMIT_BYTES = 256 * 2**20


class InMemoryImages(Dataset):
    """``(image [3, S, S], label)`` pairs from a tensor of images ``[N, 3, h, w]`` in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: InputSpec) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or len(images) != len(labels):
            raise ValueError(f"want images [N, 3, h, w] and N labels, got {tuple(images.shape)}")
        self.spec = spec
        self.labels = labels.long()
        #: Labels as a list, named like torchvision's datasets so callers can stratify alike.
        self.targets: list[int] = self.labels.tolist()
        size = len(images) * 3 * spec.image_size**2 * 4
        self._precomputed = size <= PRECOMPUTE_LIMIT_BYTES
        self._images = resize_normalise(images, spec) if self._precomputed else images

    def __len__(self) -> int:
        return len(self.targets)

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [B, 3, S, S], labels [B])`` in one indexing operation (no per-item
        collation): the runner's fast path for in-memory data."""
        if self._precomputed:
            return self._images[indices], self.labels[indices]
        return resize_normalise(self._images[indices], self.spec), self.labels[indices]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._precomputed:
            image = self._images[index]
        else:
            image = resize_normalise(self._images[index : index + 1], self.spec)[0]
        return image, self.targets[index]
