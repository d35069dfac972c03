"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i][j]`` is the accuracy (percent) on task j after training on task i (rows: finished tasks in
order, without the "init" row). NaN marks a task whose head did not yet exist. Every figure
clbench reports comes from here, so results stay comparable across optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def _check(R: Matrix) -> int:
    T = len(R)
    if T == 0 or any(len(row) != T for row in R):
        raise ValueError(f"accuracy matrix must be square and non-empty, got {T} rows")
    return T


def average_accuracy(R: Matrix) -> float:
    """Mean over tasks of the accuracy after the last task (last row)."""
    T = _check(R)
    return sum(R[-1]) / T


def forgetting(R: Matrix) -> list[float]:
    """Chaudhry et al. forgetting of each task but the last: the best accuracy it had after any
    earlier row (its own row onwards) minus its final accuracy. Positive = forgotten; a task
    whose accuracy recovered above its earlier best has negative forgetting."""
    T = _check(R)
    out = []
    for j in range(T - 1):
        earlier = [R[i][j] for i in range(j, T - 1) if not math.isnan(R[i][j])]
        out.append(max(earlier) - R[-1][j])
    return out


def mean_forgetting(R: Matrix) -> float:
    f = forgetting(R)
    return sum(f) / len(f) if f else float("nan")


def backward_transfer(R: Matrix) -> float:
    """BWT (Lopez-Paz & Ranzato): mean over i < T of R[T, i] - R[i, i]. Negative = forgetting."""
    T = _check(R)
    if T < 2:
        return float("nan")
    return sum(R[-1][i] - R[i][i] for i in range(T - 1)) / (T - 1)


def paper_columns(R: Matrix) -> dict[str, float]:
    """The NanoAdam paper's Table-4 columns for a two-task run: T1, T2, T1 after T2, their mean,
    and forgetting = drop of T1 caused by T2."""
    T = _check(R)
    if T != 2:
        raise ValueError("the paper's Table-4 columns are defined for two tasks")
    t1, t2, t1_after = R[0][0], R[1][1], R[1][0]
    return {
        "t1": t1,
        "t2": t2,
        "t1_after_t2": t1_after,
        "avg": (t1 + t2 + t1_after) / 3,
        "forgetting": t1 - t1_after,
    }


def summarize(R: Matrix, task_names: Sequence[str]) -> dict:
    """The ``final`` and ``paper`` blocks of summary.json."""
    T = _check(R)
    if len(task_names) != T:
        raise ValueError("one name per task")
    forg = forgetting(R)
    final = {
        "accuracy": dict(zip(task_names, R[-1], strict=True)),
        "average_accuracy": average_accuracy(R),
        "forgetting": dict(zip(task_names[:-1], forg, strict=True)),
        "mean_forgetting": mean_forgetting(R),
        "bwt": backward_transfer(R),
    }
    return {"final": final, "paper": paper_columns(R) if T == 2 else None}
