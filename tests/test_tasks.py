"""Tasks: registry, offline tasks, folder validation, and torchvision's on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import RidgeClassifier
from torch.utils.data import DataLoader

import tasks
from tasks import InputSpec, TaskError, inmemory
from tasks import generated as gen
from tasks.digits import digits_split

SPEC = InputSpec(image_size=24, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def _unnormalise(x: torch.Tensor, spec: InputSpec = SPEC) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return x * std + mean


def _one_line_error(name: str, *args, **kwargs) -> str:
    """The TaskError of looking `name` up (and, given arguments, building its datasets)."""
    with pytest.raises(TaskError) as info:
        task = tasks.get(name)
        if args:
            task.datasets(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_every_builtin_task_with_its_classes():
    found = {name: task.num_classes for name, task in tasks.available().items()}
    assert found == {"cifar10": 10, "flowers102": 102, "digits": 10, "shapes": 10, "gratings": 10}
    assert "folder" in tasks.prefixes()
    assert all(task.description for task in tasks.available().values())
    assert tasks.get("digits").offline and not tasks.get("cifar10").offline


def test_unknown_task_suggests_the_close_match():
    message = _one_line_error("cifar-10")
    assert "did you mean cifar10?" in message and "folder:PATH" in message


# --- digits -----------------------------------------------------------------------------------


def test_digits_items_are_normalised_rgb_at_the_model_size():
    train, test = tasks.get("digits").datasets(SPEC, Path("unused"))
    assert (len(train), len(test)) == (1437, 360)
    image, label = train[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    pixels = _unnormalise(image)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert pixels.min() < 0.05 and pixels.max() > 0.5  # ink on paper, not a flat image
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5)  # grey replicated to RGB


def test_digits_split_is_stratified_complete_and_independent_of_the_run_seed():
    torch.manual_seed(123)
    np.random.seed(123)
    first = digits_split()
    digits_split.cache_clear()
    torch.manual_seed(7)
    np.random.seed(7)
    second = digits_split()
    for split in ("train", "test"):
        assert torch.equal(first[split][0], second[split][0])
        assert torch.equal(first[split][1], second[split][1])
    all_counts = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(first["test"][1].numpy(), minlength=10)
    train_counts = np.bincount(first["train"][1].numpy(), minlength=10)
    assert (train_counts + test_counts == all_counts).all()
    assert np.abs(test_counts - 0.2 * all_counts).max() <= 1  # stratified 80/20


# --- generated --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [gen.SHAPES_SPEC, gen.GRATINGS_SPEC], ids=lambda s: s.name)
def test_generated_task_is_deterministic_balanced_and_shaped(spec):
    images, labels = gen.generate(spec, "train")
    gen.generate.cache_clear()
    torch.manual_seed(99)
    np.random.seed(99)
    again, _ = gen.generate(spec, "train")
    assert torch.equal(images, again)
    test_images, test_labels = gen.generate(spec, "test")
    assert images.shape == (spec.train_per_class * 10, 3, 32, 32)
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    assert np.bincount(labels.numpy()).tolist() == [spec.train_per_class] * 10
    assert np.bincount(test_labels.numpy()).tolist() == [spec.test_per_class] * 10
    assert not torch.equal(images[: len(test_images)], test_images)
    train, test = tasks.get(spec.name).datasets(SPEC, Path("unused"))
    assert (len(train), len(test)) == (len(images), len(test_images))
    assert train[3][0].shape == (3, 24, 24) and train[3][1] == int(labels[3])


def _ridge_accuracy(features: tuple[np.ndarray, np.ndarray], labels) -> float:
    model = RidgeClassifier().fit(features[0], labels[0])
    return model.score(features[1], labels[1])


def _grey(images: torch.Tensor) -> np.ndarray:
    return images.mean(1).numpy()


def _spectrum(grey: np.ndarray) -> np.ndarray:
    centred = grey - grey.mean(axis=(1, 2), keepdims=True)
    return np.log1p(np.abs(np.fft.rfft2(centred))).reshape(len(grey), -1)


def test_shapes_are_learnable_from_pixels_but_not_trivially():
    (x, y), (xt, yt) = gen.generate(gen.SHAPES_SPEC, "train"), gen.generate(gen.SHAPES_SPEC, "test")
    flat = _grey(x).reshape(len(x), -1), _grey(xt).reshape(len(xt), -1)
    accuracy = _ridge_accuracy(flat, (y, yt))
    assert 0.3 < accuracy < 0.9  # chance is 0.1


def test_gratings_hide_the_class_from_pixels_but_not_from_the_spectrum():
    (x, y), (xt, yt) = (
        gen.generate(gen.GRATINGS_SPEC, "train"),
        gen.generate(gen.GRATINGS_SPEC, "test"),
    )
    flat = _grey(x).reshape(len(x), -1), _grey(xt).reshape(len(xt), -1)
    assert _ridge_accuracy(flat, (y, yt)) < 0.2  # random phase: no pixel template
    spectrum = _spectrum(_grey(x)), _spectrum(_grey(xt))
    assert 0.6 < _ridge_accuracy(spectrum, (y, yt)) < 0.99


def test_in_memory_images_resized_on_access_match_the_precomputed_ones(monkeypatch):
    images, labels = gen.generate(gen.SHAPES_SPEC, "test")
    eager = inmemory.InMemoryImages(images[:20], labels[:20], SPEC)
    monkeypatch.setattr(inmemory, "PRECOMPUTE_LIMIT_BYTES", 0)
    lazy = inmemory.InMemoryImages(images[:20], labels[:20], SPEC)
    for i in (0, 7, 19):
        assert torch.allclose(eager[i][0], lazy[i][0], atol=1e-5) and eager[i][1] == lazy[i][1]


# --- folder:PATH ------------------------------------------------------------------------------


def test_folder_task_reads_the_tree(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "pets", classes=("cat", "dog", "eel"), size=20)
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    task = tasks.get(f"folder:{root}")
    assert task.name == f"folder:{root}" and task.num_classes == 3
    assert str(root) in task.description and "18 train / 9 test" in task.description
    train, test = task.datasets(SPEC, Path("unused"), augment=True)
    assert (len(train), len(test)) == (18, 9)
    assert train.classes == test.classes == ["cat", "dog", "eel"]
    image, label = test[4]
    assert image.shape == (3, 24, 24) and label == 1
    batch, labels = next(iter(DataLoader(train, batch_size=18)))
    assert batch.shape == (18, 3, 24, 24) and sorted(labels.tolist()) == [0] * 6 + [1] * 6 + [2] * 6


def test_folder_task_converts_greyscale_and_palette_images_to_rgb(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "t")
    Image.new("L", (10, 12), 128).save(root / "train" / "a" / "grey.png")
    Image.new("P", (9, 9)).save(root / "test" / "b" / "palette.png")
    train, test = tasks.get(f"folder:{root}").datasets(SPEC, Path("unused"))
    assert all(train[i][0].shape == (3, 24, 24) for i in range(len(train)))
    assert all(test[i][0].shape == (3, 24, 24) for i in range(len(test)))


def test_folder_errors_name_the_problem_and_the_fix(tmp_path, make_image_folder):
    assert "does not exist" in _one_line_error(f"folder:{tmp_path / 'nope'}")
    assert "needs a path" in _one_line_error("folder:")

    (tmp_path / "bare").mkdir()
    assert "no train/ folder" in _one_line_error(f"folder:{tmp_path / 'bare'}")

    root = make_image_folder(tmp_path / "no_test")
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert "has no class folders" in _one_line_error(f"folder:{root}")
    (root / "test").rmdir()
    assert "no test/ folder" in _one_line_error(f"folder:{root}")

    root = make_image_folder(tmp_path / "empty_class")
    (root / "train" / "c").mkdir()
    (root / "test" / "c").mkdir()
    (root / "train" / "c" / "notes.txt").write_text("not an image")
    assert "class folder train/c has no images" in _one_line_error(f"folder:{root}")

    root = make_image_folder(tmp_path / "mismatch", classes=("a", "b", "c"))
    (root / "test" / "d").mkdir()
    for path in (root / "test" / "c").iterdir():
        path.rename(root / "test" / "d" / path.name)
    (root / "test" / "c").rmdir()
    message = _one_line_error(f"folder:{root}")
    assert "only in train/: c" in message and "only in test/: d" in message

    root = make_image_folder(tmp_path / "broken")
    (root / "test" / "b" / "bad.jpg").write_bytes(b"\x89PNG not really")
    message = _one_line_error(f"folder:{root}")
    assert "cannot read image test/b/bad.jpg" in message and "fix or remove" in message


# --- torchvision: CIFAR-10 and Flowers102 in their real on-disk formats -------------------------


def _write_cifar10(root: Path, per_batch: int = 4) -> np.ndarray:
    """cifar-10-batches-py as the official tarball unpacks it: pickled dicts of uint8 rows."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    first = None
    for b, name in enumerate(names):
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [(b + i) % 10 for i in range(per_batch)]
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": []}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        first = data if first is None else first
    meta = {
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ],
        "num_cases_per_batch": per_batch,
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return first


def test_cifar10_reads_the_official_batch_files(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    first = _write_cifar10(tmp_path)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    spec = InputSpec(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    train, test = tasks.get("cifar10").datasets(spec, tmp_path)
    assert (len(train), len(test)) == (20, 4)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and label == 0
    expected = torch.from_numpy(first[0].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(_unnormalise(image, spec), expected, atol=1e-5)  # crop_pct 1: no crop
    assert [test[i][1] for i in range(4)] == [5, 6, 7, 8]
    assert train.classes[0] == "airplane"


def test_flowers102_trains_on_the_train_split_and_tests_on_the_test_split(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.flowers102 as flowers

    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = 12
    for i in range(1, n + 1):
        pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "jpg" / f"image_{i:05d}.jpg")
    labels = np.array([[(i * 7) % 102 + 1 for i in range(1, n + 1)]])
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": labels})
    ids = {
        "trnid": np.array([[1, 2, 3, 4]]),
        "valid": np.array([[5, 6]]),
        "tstid": np.array([[7, 8, 9, 10, 11, 12]]),
    }
    scipy.io.savemat(folder / "setid.mat", ids)
    monkeypatch.setattr(flowers, "check_integrity", lambda *args, **kwargs: True)

    train, test = tasks.get("flowers102").datasets(SPEC, tmp_path)
    assert (len(train), len(test)) == (4, 6)
    assert [train[i][1] for i in range(4)] == [(i * 7) % 102 for i in range(1, 5)]
    assert [test[i][1] for i in range(6)] == [(i * 7) % 102 for i in range(7, 13)]
    assert test[0][0].shape == (3, 24, 24)  # non-square photos are resized to the model's square


@pytest.mark.parametrize("name,title", [("cifar10", "CIFAR-10"), ("flowers102", "Flowers102")])
def test_missing_data_offline_says_how_to_get_it(tmp_path, name, title):
    message = _one_line_error(name, SPEC, tmp_path / "data")
    assert message.startswith(f"{title} not found under {tmp_path / 'data'}")
    assert f"clbench fetch --tasks {name}" in message and "--download" in message
    assert not (tmp_path / "data").exists()  # nothing was downloaded or created


def test_corrupted_data_is_a_task_error(tmp_path):
    _write_cifar10(tmp_path)  # real md5 check: our tiny files do not match the official ones
    message = _one_line_error("cifar10", SPEC, tmp_path)
    assert "incomplete or corrupted" in message and "clbench fetch --tasks cifar10" in message


def test_failed_download_is_a_task_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    message = _one_line_error("cifar10", SPEC, tmp_path, download=True)
    assert message.startswith("could not download CIFAR-10") and "internet" in message
