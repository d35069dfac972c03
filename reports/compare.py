"""`clbench compare`: several run directories side by side.

Runs that differ only in their seed form one group (mean ± std). The tables follow the paper:
Table 4 (T1, T2, T1 after T2, Avg, Forgetting) with the paper's own numbers beside ours where the
setting matches, the general metrics (average accuracy, mean forgetting, BWT), and Table 5 (L2
shift, heads excluded).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd

from . import figures
from .figures import Group
from .paper import TABLE4, TABLE5_L2, paper_setting
from .rundata import ReportError, RunData, load_run

#: config keys that do not make two runs different experiments
_NOT_THE_EXPERIMENT = {
    "seed",
    "name",
    "out",
    "device",
    "data_dir",
    "num_workers",
    "download",
    "checkpoint_every",
}
PAPER_COLUMNS = ["t1", "t2", "t1_after_t2", "avg", "forgetting"]
PAPER_HEADERS = {
    "t1": "T1",
    "t2": "T2",
    "t1_after_t2": "T1 after T2",
    "avg": "Avg",
    "forgetting": "Forgetting",
}


def group_runs(runs: list[RunData]) -> list[Group]:
    """Group runs by configuration without the seed; label by optimizer, plus the settings that
    tell groups of the same optimizer apart (an optimizer hyperparameter by its own name)."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        cfg = run.config.get("config", {})
        key = tuple(sorted((k, repr(v)) for k, v in cfg.items() if k not in _NOT_THE_EXPERIMENT))
        groups.setdefault(key, Group(label="", runs=[], key=key)).runs.append(run)
    result = list(groups.values())
    settings = {id(g): experiment_settings(g.runs[0].config.get("config", {})) for g in result}
    for g in result:
        mine = settings[id(g)]
        others = [settings[id(o)] for o in result if o.optimizer == g.optimizer and o is not g]
        differing = [k for k in mine if any(o.get(k, _MISSING) != mine[k] for o in others)]
        g.label = " ".join([g.optimizer] + [f"{k}={_show(k, mine[k])}" for k in differing])
    figures.assign_styles(result)
    return result


_MISSING = object()


def experiment_settings(cfg: dict) -> dict:
    """The settings that make a run's experiment, flat: the optimizer's hyperparameters under
    their own names (``density``, ``criterion``), next to ``lr``, ``epochs``, ... ."""
    flat = {k: v for k, v in cfg.items() if k not in _NOT_THE_EXPERIMENT and k != "opt_hparams"}
    for k, v in (cfg.get("opt_hparams") or {}).items():
        flat[k if k not in flat else f"opt.{k}"] = v
    return flat


def format_lr(value: float) -> str:
    """A learning rate as the paper writes it: 1e-3, 2.5e-4."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _show(key: str, value) -> str:
    """A setting as a short label: per-task lists as the paper writes them (1e-3/2e-3), one
    value when every task has the same, NanoAdam's mask_interval=None as "static"."""
    if key.endswith("mask_interval") and value is None:
        return "static"
    if isinstance(value, list | tuple):
        items = [_show(key, v) for v in value]
        return items[0] if len(set(items)) == 1 else "/".join(items)
    if isinstance(value, float):
        return format_lr(value) if key == "lr" else f"{value:g}"
    return str(value).replace(" ", "")[:40]


def _stat(values: list[float | None]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def _fmt(mean: float, std: float, n: int, digits: int = 2) -> str:
    if n == 0 or math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def comparison_table(groups: list[Group]) -> pd.DataFrame:
    """One row per group: every figure as mean and std over its seeds, the paper's where known."""
    rows = []
    for g in groups:
        done = [r for r in g.runs if r.summary.get("status", "complete") == "complete"]
        first = g.runs[0].summary
        row: dict = {
            "group": g.label,
            "model": first["model"],
            "optimizer": g.optimizer,
            "tasks": " → ".join(first["tasks"]),
            "seeds": len(done),
            "failed": len(g.runs) - len(done),
        }

        def put(name: str, values: list, row: dict = row) -> None:
            row[name], row[f"{name}_std"], _ = _stat(values)

        for col in PAPER_COLUMNS:
            put(col, [(r.summary.get("paper") or {}).get(col) for r in done])
        put("average_accuracy", [r.summary["final"]["average_accuracy"] for r in done])
        put("mean_forgetting", [r.summary["final"]["mean_forgetting"] for r in done])
        put("bwt", [r.summary["final"]["bwt"] for r in done])
        put("l2_excl_heads", [(r.summary.get("shift") or {}).get("l2_excl_heads") for r in done])
        put(
            "never_updated_pct",
            [
                100 * r.summary["shift"]["frac_unchanged_excl_heads"]
                for r in done
                if r.summary.get("shift")
            ],
        )
        setting = paper_setting(first["model"], g.optimizer, first["tasks"])
        row["paper_setting"] = " / ".join(setting) if setting else ""
        for col in PAPER_COLUMNS:
            row[f"paper_{col}"] = TABLE4[setting][col] if setting else math.nan
        row["paper_l2_excl_heads"] = TABLE5_L2.get(setting, math.nan) if setting else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


#: what `best_per_optimizer` can select by: column of the comparison table -> larger is better
SELECT_METRICS = {
    "average_accuracy": True,
    "avg": True,
    "t1": True,
    "t2": True,
    "t1_after_t2": True,
    "mean_forgetting": False,
    "forgetting": False,
}


def best_per_optimizer(table: pd.DataFrame, metric: str = "average_accuracy") -> dict[str, str]:
    """optimizer -> label of its best group by `metric` (mean over finished seeds, compared at
    the 0.01 the tables show); ties go to less mean forgetting, then to the earlier group. Groups
    without a finished run or without the metric take no part."""
    if metric not in SELECT_METRICS:
        raise ReportError(f"cannot select by {metric!r}: choose one of {', '.join(SELECT_METRICS)}")
    sign = 1 if SELECT_METRICS[metric] else -1
    best: dict[str, tuple[tuple[float, float], str]] = {}
    for _, r in table.iterrows():
        if r["seeds"] == 0 or math.isnan(r[metric]):
            continue
        forgetting = r["mean_forgetting"] if not math.isnan(r["mean_forgetting"]) else math.inf
        rank = (-sign * round(r[metric], 2), round(forgetting, 2))
        if r["optimizer"] not in best or rank < best[r["optimizer"]][0]:
            best[r["optimizer"]] = (rank, r["group"])
    return {opt: label for opt, (_, label) in best.items()}


def best_markdown(table: pd.DataFrame, best: dict[str, str], metric: str) -> str:
    direction = "higher" if SELECT_METRICS[metric] else "lower"
    rows = []
    for opt, label in best.items():
        r = table[table["group"] == label].iloc[0]
        rows.append([opt, label, str(r["seeds"]), _cell(r, metric), _cell(r, "mean_forgetting")])
    intro = (
        f"Per optimizer, the group with the best `{metric}` ({direction} is better; mean over "
        "seeds, compared at two decimals); ties go to less mean forgetting. Column `best` of "
        "`comparison.csv` marks them."
    )
    header = ["optimizer", "best setting", "seeds", metric, "mean forgetting"]
    return intro + "\n\n" + _markdown_table(header, rows)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _cell(row: pd.Series, col: str) -> str:
    return _fmt(row[col], row[f"{col}_std"], row["seeds"])


def table4_markdown(table: pd.DataFrame) -> str | None:
    """Table 4 with, where a group reproduces a paper setting, the paper's value and ours minus
    the paper's."""
    if table[PAPER_COLUMNS].isna().all().all():
        return None
    with_paper = table["paper_setting"].astype(bool).any()
    header = ["", "seeds"]
    for col in PAPER_COLUMNS:
        header += [PAPER_HEADERS[col]] + (["paper", "Δ"] if with_paper else [])
    rows = []
    for _, r in table.iterrows():
        cells = [r["group"], str(r["seeds"])]
        for col in PAPER_COLUMNS:
            cells.append(_cell(r, col))
            if with_paper:
                paper = r[f"paper_{col}"]
                known = not math.isnan(paper) and not math.isnan(r[col])
                cells += [
                    f"{paper:.2f}" if not math.isnan(paper) else "",
                    f"{r[col] - paper:+.2f}" if known else "",
                ]
        rows.append(cells)
    return _markdown_table(header, rows)


def metrics_markdown(table: pd.DataFrame) -> str:
    header = [
        "",
        "seeds",
        "average accuracy",
        "mean forgetting",
        "BWT",
        "L2 shift (no heads)",
        "never updated (%)",
    ]
    rows = [
        [
            r["group"],
            str(r["seeds"]),
            _cell(r, "average_accuracy"),
            _cell(r, "mean_forgetting"),
            _cell(r, "bwt"),
            _cell(r, "l2_excl_heads"),
            _cell(r, "never_updated_pct"),
        ]
        for _, r in table.iterrows()
    ]
    return _markdown_table(header, rows)


def table5_markdown(table: pd.DataFrame) -> str | None:
    if not table["paper_setting"].astype(bool).any():
        return None
    rows = [
        [
            r["group"],
            _cell(r, "l2_excl_heads"),
            "" if math.isnan(r["paper_l2_excl_heads"]) else f"{r['paper_l2_excl_heads']:.2f}",
        ]
        for _, r in table.iterrows()
    ]
    return _markdown_table(["", "L2 from pretrained (heads excluded)", "paper Table 5"], rows)


#: the terminal table: (header, column of the comparison table)
CONSOLE_COLUMNS = [
    ("T1", "t1"),
    ("T2", "t2"),
    ("T1 aft.", "t1_after_t2"),
    ("avg", "average_accuracy"),
    ("forget", "mean_forgetting"),
    ("L2", "l2_excl_heads"),
    ("kept %", "never_updated_pct"),
]


def console_table(
    table: pd.DataFrame, title: str = "comparison (mean over seeds)", std: bool = False
):
    """The comparison as a Rich table for the terminal: means to one decimal (compare.md has
    two), with `std` also ± the standard deviation over seeds, numbers never cut, long group
    names wrapped; a best group (column `best`) is starred."""
    from rich import box
    from rich.table import Table

    rich = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    words = [w for label in table["group"] for w in str(label).split()]
    rich.add_column("group", overflow="fold", min_width=min(24, max(map(len, words), default=5)))
    rich.add_column("seeds", justify="right", no_wrap=True)
    for header, _ in CONSOLE_COLUMNS:
        rich.add_column(header, justify="right", no_wrap=True)
    for _, row in table.iterrows():
        star = " ★" if bool(row.get("best", False)) else ""
        cells = [str(row["group"]) + star, str(row["seeds"])]
        for _, col in CONSOLE_COLUMNS:
            mean, spread = row[col], row.get(f"{col}_std", float("nan"))
            cell = "—" if mean != mean else f"{mean:.1f}"
            if std and mean == mean and row["seeds"] > 1 and spread == spread:
                cell += f" ± {spread:.1f}"
            cells.append(cell)
        rich.add_row(*cells)
    return rich


def compare(
    run_dirs: list[str | Path],
    out: str | Path,
    block: int | None = None,
    select: str | None = None,
) -> dict:
    """Write compare.md, its figures and CSV tables into `out`; returns what was written. With
    `select` (a key of `SELECT_METRICS`), also the best group per optimizer (`best`)."""
    runs = [load_run(d) for d in run_dirs]
    tasks = {tuple(r.tasks) for r in runs}
    if len(tasks) > 1:
        raise ReportError(
            "these runs trained on different task sequences "
            f"({'; '.join(' -> '.join(t) for t in sorted(tasks))}): compare runs of one sequence"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    table = comparison_table(groups)
    best = best_per_optimizer(table, select) if select else {}
    if select:
        table["best"] = table["group"].isin(set(best.values()))
    figures.save_table(table, out / "comparison.csv")

    depth = figures.depth_of(figures.final_shift_matrices(runs[0]))
    block = block if block is not None else (figures.default_block(depth) if depth else None)
    finished = [
        Group(g.label, done, g.color, g.linestyle, g.key)
        for g in groups
        if (done := [r for r in g.runs if r.summary.get("status", "complete") == "complete"])
    ]
    written = figures.write_all(finished, out, block) if finished else {}
    text = render(groups, table, written, block, best, select)
    figures.save_text(text, out / "compare.md")
    return {
        "table": table,
        "figures": written,
        "report": out / "compare.md",
        "groups": groups,
        "best": best,
    }


def render(
    groups: list[Group],
    table: pd.DataFrame,
    written: dict,
    block: int | None,
    best: dict[str, str] | None = None,
    select: str | None = None,
) -> str:
    first = groups[0].runs[0].summary
    out = [
        f"# clbench comparison: {first['model']} on "
        + " → ".join(f"`{t}`" for t in first["tasks"]),
        "",
    ]
    out += ["| group | runs | optimizer hyperparameters | learning rates |", "|---|---|---|---|"]
    for g in groups:
        cfg = g.runs[0].config.get("config", {})
        hp = ", ".join(f"{k}={v}" for k, v in cfg.get("opt_hparams", {}).items()) or "defaults"
        lrs = ", ".join(f"{v:g}" for v in cfg.get("lr", []))
        dirs = ", ".join(f"`{r.root.name}`" for r in g.runs)
        out.append(f"| {g.label} | {dirs} | {hp} | {lrs} |")
    failed = [
        r.root.name
        for g in groups
        for r in g.runs
        if r.summary.get("status", "complete") != "complete"
    ]
    if failed:
        out += [
            "",
            f"Runs that did not finish (left out of every figure below): {', '.join(failed)}.",
        ]
    out.append("")
    if best and select:
        out += ["## Best setting per optimizer", "", best_markdown(table, best, select), ""]
    t4 = table4_markdown(table)
    if t4:
        out += [
            "## Accuracy (the paper's Table 4)",
            "",
            "T1 = task 1 after task 1, T2 = task 2 after task 2, T1 after T2, Avg = their "
            "mean, Forgetting = T1 − T1 after T2 (points). Mean ± std over seeds; where a "
            "group reproduces a setting of the paper, its number and our difference.",
            "",
            t4,
            "",
        ]
    out += [
        "## Continual-learning metrics",
        "",
        "Average accuracy over all tasks after the last; mean forgetting (best earlier "
        "accuracy minus final, per task); backward transfer; L2 distance of all non-head "
        "weights from θ₀; share of non-head weights never changed.",
        "",
        metrics_markdown(table),
        "",
    ]
    t5 = table5_markdown(table)
    if t5:
        out += ["## Parameter shift (the paper's Table 5)", "", t5, ""]
    captions = {
        "forgetting_curves": "## Forgetting curves\n\nTest accuracy of each task over the whole "
        "sequence (evaluation subsample; mean over seeds, band = std). Dashed lines: task starts.",
        "qkv": f"## Where attention moved: block {block}\n\n|θ − θ₀| of the q, k and v "
        "projections after all tasks, first seed of each group, one shared colour scale. Large "
        "matrices are block-averaged to at most 128 × 128 cells for display.",
        "layer_shift": "## Layer-wise shift\n\nL2 distance from θ₀ per block: q, k, v, attention "
        "output projection and MLP (for CNNs: per convolution, in network order).",
        "tracking": "## The optimizers' own view\n\nEffective learning rate lr/(√v̂+ε) averaged "
        "over the entries updated (paper appendix G.5), and the share of sparse weights updated "
        "at least once within each task, from train_log.csv.",
    }
    for key, caption in captions.items():
        if written.get(key):
            out += [caption, "", f"![{key}]({written[key].name})", ""]
    out += ["Tables as CSV: `comparison.csv`.", ""]
    return "\n".join(out)
