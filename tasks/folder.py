"""``folder:PATH``: any ImageFolder-style tree becomes a task.

The tree holds ``train/`` and ``test/``, each with one subfolder per class (``train/cat/*.jpg``).
The tree is checked completely when the task is looked up, before any model is built or trained,
and every problem is a one-line `TaskError` naming the fix: a typo in a path should cost seconds,
not a failed run an hour in. Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) are ignored.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .base import InputSpec, Task, TaskError, register_prefix
from .transforms import image_transform

SPLITS = ("train", "test")


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the class folders of a split (hidden folders skipped)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(class_dir: Path) -> list[Path]:
    """The files of a class folder that ImageFolder would load (by extension, hidden skipped)."""
    return sorted(
        p
        for p in class_dir.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMG_EXTENSIONS
    )


def _readable(path: Path) -> str | None:
    """None when PIL can open and verify the image, else the reason it cannot."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises many types for broken files
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def validate_tree(root: Path, label: str) -> tuple[list[str], dict[str, int]]:
    """Check the tree; return its classes and the image count per split, or raise `TaskError`."""
    if not root.exists():
        raise TaskError(
            f"{label}: {root} does not exist: give the path of a folder with train/ and test/"
        )
    if not root.is_dir():
        raise TaskError(f"{label}: {root} is not a folder: give a folder with train/ and test/")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise TaskError(
                f"{label}: no {split}/ folder in {root}: it needs train/ and test/ subfolders "
                f"with one folder of images per class (e.g. {split}/<class>/image.png)"
            )
    classes = {split: class_folders(root / split) for split in SPLITS}
    for split in SPLITS:
        if not classes[split]:
            raise TaskError(
                f"{label}: {root / split} has no class folders: put each class's images in "
                f"{split}/<class>/"
            )
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        diff = "; ".join(
            f"only in {split}/: {', '.join(names)}"
            for split, names in (("train", only_train), ("test", only_test))
            if names
        )
        raise TaskError(
            f"{label}: train/ and test/ have different classes ({diff}): give both the same "
            f"class folders"
        )
    counts = {}
    for split in SPLITS:
        counts[split] = 0
        for name in classes[split]:
            files = image_files(root / split / name)
            if not files:
                raise TaskError(
                    f"{label}: class folder {split}/{name} has no images "
                    f"({', '.join(IMG_EXTENSIONS)}): add images or remove the folder"
                )
            for path in files:
                reason = _readable(path)
                if reason is not None:
                    raise TaskError(
                        f"{label}: cannot read image {path.relative_to(root)} ({reason}): "
                        f"fix or remove the file"
                    )
            counts[split] += len(files)
    return classes["train"], counts


class _VisibleImageFolder(ImageFolder):
    """ImageFolder that skips hidden class folders, matching `validate_tree`."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = class_folders(Path(directory))
        return classes, {name: i for i, name in enumerate(classes)}


def _load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class FolderTask(Task):
    """A task read from an ImageFolder tree; validated on construction."""

    offline = True

    def __init__(self, path: str) -> None:
        if not path:
            raise TaskError(
                "folder task needs a path: write folder:PATH (PATH holds train/, test/)"
            )
        self.name = f"folder:{path}"
        self.root = Path(path).expanduser()
        self.classes, counts = validate_tree(self.root, f"task {self.name}")
        self.num_classes = len(self.classes)
        self.description = (
            f"ImageFolder tree at {self.root.resolve()}: {self.num_classes} classes, "
            f"{counts['train']} train / {counts['test']} test images"
        )

    def datasets(
        self, spec: InputSpec, data_dir: Path, download: bool = False, augment: bool = False
    ) -> tuple[Dataset, Dataset]:
        """(train, test) from the tree; `data_dir` and `download` do not apply."""
        train = _VisibleImageFolder(
            self.root / "train", transform=image_transform(spec, augment), loader=_load_rgb
        )
        test = _VisibleImageFolder(
            self.root / "test", transform=image_transform(spec, False), loader=_load_rgb
        )
        return train, test


@register_prefix("folder")
def folder(path: str) -> Task:
    return FolderTask(path)
