"""The run directory on disk. Every file is written atomically (temp file in the same folder,
then rename), so a killed run never leaves a half-written file behind."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from reports.figures import atomic_write


def _atomic(path: Path, write) -> None:
    """`write(binary file)`, flushed to disk, then renamed onto `path` (`atomic_write`)."""

    def to_disk(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, to_disk)


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda fh: fh.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: write null instead, so no reader mistakes it for a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(_finite_or_none(data), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(
    path: Path, rows: Sequence[dict[str, Any]], header: Sequence[str] | None = None
) -> None:
    """Rows of dicts; the header is `header` or the union of keys in first-seen order."""
    if header is None:
        header = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in header})
    write_text(path, buf.getvalue())


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def save_torch(path: Path, obj: Any) -> None:
    _atomic(path, lambda fh: torch.save(obj, fh))


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def fresh_dir(root: Path, overwrite: bool, other_fix: str = "") -> None:
    """An empty, writable output folder. An existing non-empty one is replaced only with
    `overwrite`; otherwise one `UserError` line that names the fixes (`other_fix` first)."""
    from .errors import UserError

    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise UserError(
                f"{root} already exists: {other_fix}pass --overwrite to replace it, "
                "or --out elsewhere"
            )
        shutil.rmtree(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to {root} ({exc.strerror}): pass a writable --out") from None


class RunDir:
    """Paths of the run-directory contract (DESIGN.md)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    curves = property(lambda self: self.root / "curves.csv")
    train_log = property(lambda self: self.root / "train_log.csv")
    acc_matrix = property(lambda self: self.root / "acc_matrix.csv")
    shift_csv = property(lambda self: self.root / "shift.csv")
    shift_dir = property(lambda self: self.root / "shift")
    summary = property(lambda self: self.root / "summary.json")
    report = property(lambda self: self.root / "report.md")
    figures = property(lambda self: self.root / "figures")
    checkpoints = property(lambda self: self.root / "checkpoints")
    last = property(lambda self: self.root / "checkpoints" / "last.pt")
    theta0 = property(lambda self: self.root / "checkpoints" / "theta0.pt")

    def task_checkpoint(self, t: int) -> Path:
        return self.checkpoints / f"task_{t + 1}.pt"

    def shift_npz(self, t: int) -> Path:
        return self.shift_dir / f"after_task_{t + 1}.npz"

    def exists(self) -> bool:
        return self.root.exists() and any(self.root.iterdir())


def write_acc_matrix(
    path: Path, task_names: Sequence[str], rows: Iterable[tuple[str, Sequence[float]]]
) -> None:
    """acc_matrix.csv: header ``after,<task_1>,...``; rows ("init" or a task name, accuracies)."""
    out = [{"after": label, **dict(zip(task_names, accs, strict=True))} for label, accs in rows]
    write_csv(path, out, header=["after", *task_names])


def read_acc_matrix(path: Path) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """(task names, [(row label, accuracies with NaN for empty cells)])."""
    rows = read_csv(path)
    with open(path) as fh:
        names = fh.readline().strip().split(",")[1:]
    parsed = [(r["after"], [float(r[n]) if r[n] != "" else math.nan for n in names]) for r in rows]
    return names, parsed
