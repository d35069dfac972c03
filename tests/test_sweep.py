"""`clbench sweep`: grid expansion, `--print-commands` lines that `clbench run` reads back to the
same configuration, the best setting per optimizer, and a tiny sweep end to end."""

from __future__ import annotations

import json
import shlex

import pandas as pd
import pytest
from _cli import main_exit as invoke
from test_compare import make_run
from test_reproduce import no_run_reports, tiny_demo  # noqa: F401 (fixtures)

from clbench import runner
from clbench.config import config_diff, resolve
from clbench.sweep import Grid, build_plan, parse_opt_arg, points, run_command
from reports import compare

GRID = Grid(
    optimizers=("nanoadam", "adamw"),
    lrs=((1e-3,), (3e-3, 1e-2)),
    densities=(0.05, 0.1),
    mask_intervals=(20, None),
    seeds=(0, 1),
    base={"preset": "demo", "tasks": ("digits", "gratings"), "max_steps": 2},
)
GRID_ARGS = [
    "--preset", "demo", "--tasks", "digits,gratings", "--max-steps", "2", "--opt", "nanoadam,adamw",
    "--lr", "1e-3", "--lr", "3e-3,1e-2", "--density", "0.05", "--density", "0.1",
    "--mask-interval", "20", "--mask-interval", "none", "--seeds", "0,1",
]  # fmt: skip


def test_grid_expands_per_optimizer(tmp_path):
    found = points(GRID, tmp_path)
    nano = [p for p in found if p.options["optimizer"] == "nanoadam"]
    adamw = [p for p in found if p.options["optimizer"] == "adamw"]
    assert len(nano) == 2 * 2 * 2 * 2 and len(adamw) == 2 * 2  # AdamW takes no density/interval
    assert len({p.options["out"] for p in found}) == len(found)
    assert all("density" not in p.options for p in adamw)
    static = next(p for p in nano if p.options.get("opt_args", {}).get("mask_interval", 0) is None)
    cfg = resolve(static.options)
    assert cfg.opt_hparams["mask_interval"] is None and cfg.opt_hparams["density"] in (0.05, 0.1)
    per_task = next(p for p in adamw if "3e-3" in p.label)
    assert resolve(per_task.options).lr == (3e-3, 1e-2)  # one grid point, one LR per task
    assert per_task.label == "lr=3e-3/1e-2"
    assert (tmp_path / per_task.options["name"]).as_posix() == per_task.options["out"]


class _Resolved(Exception):
    pass


def test_printed_commands_are_run_commands_of_the_same_configs(monkeypatch, capsys, tmp_path):
    code, stdout, err = invoke(
        monkeypatch, capsys, "sweep", *GRID_ARGS, "--out", str(tmp_path), "--print-commands"
    )
    assert code == 0, err
    lines = stdout.strip().splitlines()
    planned = {r.cfg.out: r.cfg for r in build_plan(GRID, tmp_path).runs}
    assert len(lines) == len(planned) == 20
    seen = []

    def capture(cfg, **kwargs):
        seen.append(cfg)
        raise _Resolved

    monkeypatch.setattr(runner, "run", capture)
    for line in lines:
        argv = shlex.split(line)
        assert argv[:2] == ["clbench", "run"]
        with pytest.raises(_Resolved):
            invoke(monkeypatch, capsys, *argv[1:])
        cfg = seen[-1]
        assert config_diff(planned[cfg.out], cfg) == [], line
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("value", [None, "random", 0.5, (0.9, 0.99), "1e-3", 20, "a b"])
def test_opt_arg_round_trip(value):
    assert parse_opt_arg(shlex.split(run_command({"opt_args": {"k": value}}))[-1]) == ("k", value)


def _run(root, optimizer, lr, R):
    """A hand-made finished run (tests/test_compare.py) with learning rate `lr`."""
    make_run(root, optimizer=optimizer, R=R)
    record = json.loads((root / "config.json").read_text())
    record["config"]["lr"] = [lr, lr]
    (root / "config.json").write_text(json.dumps(record))
    return root


def test_best_setting_per_optimizer(tmp_path):
    runs = [
        _run(tmp_path / "a1", "adamw", 1e-3, ((80.0, None), (50.0, 70.0))),  # avg 60
        _run(tmp_path / "a3", "adamw", 3e-3, ((80.0, None), (70.0, 70.0))),  # avg 70: best
        # a tie on average accuracy (70) goes to less forgetting: 20 vs 0 points
        _run(tmp_path / "n1", "nanoadam", 1e-3, ((80.0, None), (60.0, 80.0))),
        _run(tmp_path / "n3", "nanoadam", 3e-3, ((70.0, None), (70.0, 70.0))),
    ]
    result = compare(runs, tmp_path / "out", select="average_accuracy")
    assert result["best"] == {"adamw": "adamw lr=3e-3", "nanoadam": "nanoadam lr=3e-3"}
    csv = pd.read_csv(tmp_path / "out" / "comparison.csv").set_index("group")
    assert csv["best"].to_dict() == {
        "adamw lr=1e-3": False,
        "adamw lr=3e-3": True,
        "nanoadam lr=1e-3": False,
        "nanoadam lr=3e-3": True,
    }
    report = (tmp_path / "out" / "compare.md").read_text()
    assert "## Best setting per optimizer" in report and "| adamw | adamw lr=3e-3 |" in report
    # by T1 instead, nanoadam's first setting wins (80 vs 70)
    assert compare(runs, tmp_path / "t1", select="t1")["best"]["nanoadam"] == "nanoadam lr=1e-3"


@pytest.mark.usefixtures("tiny_demo", "no_run_reports")
def test_sweep_runs_the_grid_and_marks_the_best(monkeypatch, capsys, tmp_path):
    argv = ["sweep", "--preset", "demo", "--tasks", "digits,gratings", "--opt", "adamw"]
    argv += ["--lr", "1e-3", "--lr", "3e-3", "--max-steps", "2", "--out", str(tmp_path), "--quiet"]
    code, stdout, err = invoke(monkeypatch, capsys, *argv)
    assert code == 0, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["adamw-lr1e-3-seed0", "adamw-lr3e-3-seed0", "compare"]
    csv = pd.read_csv(tmp_path / "compare" / "comparison.csv")
    assert sorted(csv["group"]) == ["adamw lr=1e-3", "adamw lr=3e-3"] and csv["best"].sum() == 1
    assert "★" in stdout and "best adamw by average_accuracy" in stdout
    code, stdout, _ = invoke(monkeypatch, capsys, *argv)
    assert code == 0 and stdout.count("skip (finished)") == 2


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--opt", "adamw"], "needs --preset or --model"),
        (["--preset", "demo", "--opt", "adamw", "--density", "0.1"], "takes --density"),
        (["--preset", "demo", "--opt", "adamw", "--lr", "1e-3,x"], "--lr takes comma-separated"),
        (["--preset", "demo", "--opt", "adamw", "--lr", "1,2,3"], "--lr has 3 values"),
        (["--preset", "demo", "--opt", "adamw", "--lr", "1e-3", "--lr", "1e-3"], "twice"),
        (["--preset", "demo", "--opt", "nanoadam", "--mask-interval", "x"], "or `none`"),
        (["--preset", "demo", "--opt", "nanoadam", "--mask-interval", "0"], ">= 1"),
        (["--preset", "demo", "--opt", "adamw", "--select", "best"], "--select takes one of"),
        (["--preset", "demo", "--opt", "adamw", "--seeds", "a"], "--seeds takes"),
        (["--preset", "demo", "--opt", "adamw", "--opt-arg", "eps"], "KEY=VALUE"),
    ],
)
def test_bad_values_are_one_line_exit_2(monkeypatch, capsys, args, expected):
    code, _, err = invoke(monkeypatch, capsys, "sweep", *args, "--dry-run")
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
