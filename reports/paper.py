"""The NanoAdam paper's reference numbers (Tables 4 and 5, appendix G), for the column beside ours.

A run matches a paper setting when its model is one of the paper's three, its tasks are
CIFAR-10 then Flowers102, and its optimizer is one the paper reports.
"""

from __future__ import annotations

#: Table 4: (model, optimizer) -> T1, T2, T1 after T2, Avg, Forgetting (accuracy %, points)
TABLE4: dict[tuple[str, str], dict[str, float]] = {
    (model, opt): dict(zip(("t1", "t2", "t1_after_t2", "avg", "forgetting"), values, strict=True))
    for model, opt, values in (
        ("vit-large", "microadam", (99.12, 88.23, 98.36, 95.23, 0.76)),
        ("vit-large", "nanoadam", (99.37, 98.13, 99.35, 98.95, 0.02)),
        ("vit-large", "adamw", (99.30, 92.51, 98.61, 96.81, 0.69)),
        ("resnet101", "microadam", (95.47, 14.89, 12.49, 40.95, 82.98)),
        ("resnet101", "nanoadam", (96.32, 81.52, 83.77, 87.20, 12.55)),
        ("resnet101", "adamw", (97.72, 52.97, 29.59, 60.09, 68.14)),
        ("resnet18", "microadam", (93.12, 22.53, 25.36, 47.00, 67.76)),
        ("resnet18", "nanoadam", (92.52, 70.67, 64.17, 75.79, 28.36)),
        ("resnet18", "adamw", (95.63, 56.58, 27.59, 59.93, 68.05)),
    )
}

#: Table 5 (ViT-L, heads excluded): L2 distance from the pretrained weights after both tasks
TABLE5_L2: dict[tuple[str, str], float] = {
    ("vit-large", "adamw"): 0.83,
    ("vit-large", "microadam"): 0.75,
    ("vit-large", "nanoadam"): 0.68,
}

PAPER_TASKS = ("cifar10", "flowers102")
_TIMM_NAMES = {
    "vit_large_patch16_224": "vit-large",
    "resnet101": "resnet101",
    "resnet18": "resnet18",
}


def paper_model(model: str) -> str | None:
    """The paper's name for `model` (short or timm name, with or without a weight tag)."""
    if model in ("vit-large", "resnet101", "resnet18"):
        return model
    return _TIMM_NAMES.get(model.split(".")[0])


def paper_setting(model: str, optimizer: str, tasks: list[str]) -> tuple[str, str] | None:
    """The (model, optimizer) key of the paper's tables this run reproduces, or None."""
    key = (paper_model(model) or "", optimizer)
    return key if tuple(tasks) == PAPER_TASKS and key in TABLE4 else None
