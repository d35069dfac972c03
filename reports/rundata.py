"""Reading one run directory into plain tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class RunData:
    root: Path
    config: dict
    summary: dict
    acc_matrix: pd.DataFrame  # index: "init" and task names; columns: task names
    curves: pd.DataFrame
    train_log: pd.DataFrame
    shift: pd.DataFrame

    @property
    def tasks(self) -> list[str]:
        return list(self.acc_matrix.columns)


def _csv(path: Path) -> pd.DataFrame:
    """The table, or an empty one when the file is missing or has no columns yet."""
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


class ReportError(ValueError):
    """Input the user can fix (a wrong folder, runs that cannot be compared); one line."""


class NotARunDir(ReportError):
    """The folder is not a (finished) run directory."""


def load_run(root: str | Path) -> RunData:
    root = Path(root)
    if not (root / "summary.json").exists() or not (root / "acc_matrix.csv").exists():
        raise NotARunDir(
            f"{root} is not a finished run directory (no summary.json): pass the --out of a "
            "finished `clbench run`, or resume it with --resume"
        )
    acc = pd.read_csv(root / "acc_matrix.csv", index_col="after")
    return RunData(
        root=root,
        config=json.loads((root / "config.json").read_text()),
        summary=json.loads((root / "summary.json").read_text()),
        acc_matrix=acc,
        curves=_csv(root / "curves.csv"),
        train_log=_csv(root / "train_log.csv"),
        shift=_csv(root / "shift.csv"),
    )
