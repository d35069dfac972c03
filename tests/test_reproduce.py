"""`clbench reproduce`: the paper's settings in the plan, tiny runs end to end on the demo tasks,
skipping finished runs, resuming half-finished ones, refusing a folder of other settings."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from _cli import main_exit as invoke

from clbench import presets, runner
from clbench.reproduce import build_plan, compare_plan, execute

#: PAPER.md §4 (appendix G), written out independently of clbench/presets.py:
#: optimizer -> (LR task 1, LR task 2, density, mask interval, MicroAdam window)
PAPER = {
    "vit-large": {
        "nanoadam": ("1e-3/2e-3", "0.1%", "100", "—"),
        "microadam": ("1e-4/1e-3", "0.1%", "—", "10"),
        "adamw": ("1e-4/1e-4", "—", "—", "—"),
    },
    "resnet101": {
        "nanoadam": ("1e-2/7e-3", "1%", "100", "—"),
        "microadam": ("1e-3/5e-3", "0.1%", "—", "10"),
        "adamw": ("1e-3/1e-3", "—", "—", "—"),
    },
    "resnet18": {
        "nanoadam": ("9e-3/7e-3", "1%", "100", "—"),
        "microadam": ("1e-3/5e-3", "1%", "—", "10"),
        "adamw": ("1e-3/1e-3", "—", "—", "—"),
    },
}
#: epochs, schedule line and steps per task (CIFAR-10: 50000 / 128 -> 391 batches per epoch,
#: Flowers102 train split: 1020 / 128 -> 8)
COMMON = {
    "vit-large": ("epochs 5 + 5 · batch 128 · label smoothing 0.1 · schedule cosine", "1955 + 40"),
    "resnet101": ("epochs 30 + 30 · batch 128 · label smoothing 0 · schedule none", "11730 + 240"),
    "resnet18": ("epochs 30 + 30 · batch 128 · label smoothing 0 · schedule none", "11730 + 240"),
}


@pytest.mark.parametrize("model", list(PAPER))
def test_table4_dry_run_prints_the_papers_settings(monkeypatch, capsys, tmp_path, model):
    out = tmp_path / "t4"
    code, stdout, err = invoke(
        monkeypatch, capsys, "reproduce", "table4", "--model", model, "--dry-run", "--out", str(out)
    )
    assert code == 0, err
    assert not out.exists()  # a dry run writes nothing
    shared, steps = COMMON[model]
    assert shared in stdout
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if "-seed42" in line}
    assert list(rows) == ["nanoadam-seed42", "microadam-seed42", "adamw-seed42"]
    for opt, (lr, density, interval, window) in PAPER[model].items():
        assert rows[f"{opt}-seed42"] == [lr, density, interval, window, *steps.split(), "new"]


def test_table4_plan_counts_steps_like_the_runner():
    plan = build_plan("table4", model="vit-large", opts=["adamw"], max_steps=1000)
    (r,) = plan.runs
    assert r.steps == (1000, 40)  # --max-steps caps a task's steps, as in the runner
    assert r.cfg.lr == (1e-4, 1e-4) and r.cfg.seed == 42 and r.cfg.tasks == presets._PAPER_TASKS


# --------------------------------------------------------------------------------------------
# tiny runs on the demo tasks


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """The demo preset with one pretraining epoch and small curve evaluations, and a
    pretraining cache of this test session: the demo's tasks and code paths at a fraction of
    its time."""
    demo = presets.PRESETS["demo"]
    options = {**demo.options, "pretrain_epochs": 1, "eval_samples": 40, "eval_every": 2}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(presets.PRESETS, "demo", dataclasses.replace(demo, options=options))
        mp.setenv("CLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "tiny-demo-cache"))
        yield


@pytest.fixture
def no_run_reports(monkeypatch):
    """Runs without their own report.md and figures (tested in test_run.py), for speed."""
    monkeypatch.setattr(runner, "write_run_report", lambda root: None)


@pytest.fixture(scope="module")
def demo_runs(tiny_demo, tmp_path_factory):
    """`reproduce demo` with two steps per task, through the Python API (the CLI over the same
    folder is tested below, where every run is then found finished)."""
    out = tmp_path_factory.mktemp("reproduce") / "demo"
    plan = build_plan("demo", out=out, max_steps=2)
    roots = execute(plan.runs, progress=False)
    return plan, roots, compare_plan(plan, roots)


def test_reproduce_demo_ends_in_a_comparison(demo_runs):
    plan, roots, result = demo_runs
    assert [r.name for r in roots] == ["nanoadam-seed0", "microadam-seed0", "adamw-seed0"]
    for root in roots:
        summary = json.loads((root / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["tasks"] == ["digits", "gratings"]
    assert list(result["table"]["group"]) == ["nanoadam", "microadam", "adamw"]
    report = (plan.out / "compare" / "compare.md").read_text()
    assert "## Accuracy (the paper's Table 4)" in report and "## Forgetting curves" in report
    for name in ("forgetting_curves.png", "layer_shift.png", "comparison.csv"):
        assert (plan.out / "compare" / name).is_file(), name
    assert any(p.name.startswith("qkv_shift_block") for p in (plan.out / "compare").iterdir())


def test_rerun_skips_finished_runs_and_compares(demo_runs, monkeypatch, capsys):
    plan, roots, _ = demo_runs
    before = {r: (r / "summary.json").stat().st_mtime_ns for r in roots}
    monkeypatch.setattr(runner, "run", _must_not_run)
    code, stdout, err = invoke(
        monkeypatch, capsys, "reproduce", "demo", "--max-steps", "2", "--out", str(plan.out)
    )
    assert code == 0, err
    assert stdout.count("skip (finished)") == 3
    assert "comparison" in stdout and "compare.md" in stdout
    assert before == {r: (r / "summary.json").stat().st_mtime_ns for r in roots}


def _must_not_run(*args, **kwargs):
    raise AssertionError("a finished run was run again")


def test_half_finished_run_is_resumed_to_the_uninterrupted_result(
    demo_runs, no_run_reports, tmp_path, monkeypatch, capsys
):
    """Killed after task 1, the run resumes from its checkpoint and ends exactly where the
    uninterrupted run of the same settings ended."""
    plan, roots, _ = demo_runs
    argv = ("reproduce", "demo", "--opts", "adamw", "--max-steps", "2", "--out", str(tmp_path))
    real_train_task = runner.train_task

    def killed_in_task_2(ctx, t, *args):
        if t == 1:
            raise _Killed
        real_train_task(ctx, t, *args)

    with monkeypatch.context() as mp:
        mp.setattr(runner, "train_task", killed_in_task_2)
        with pytest.raises(_Killed):
            invoke(mp, capsys, *argv, "--quiet")
    run_dir = tmp_path / "adamw-seed0"
    assert not (run_dir / "summary.json").exists() and (run_dir / "checkpoints/last.pt").exists()
    capsys.readouterr()

    code, stdout, err = invoke(monkeypatch, capsys, *argv, "--quiet")
    assert code == 0, err
    assert "adamw-seed0: resume" in stdout
    uninterrupted = plan.out / "adamw-seed0"
    for name in ("acc_matrix.csv", "curves.csv"):
        assert (run_dir / name).read_text() == (uninterrupted / name).read_text(), name


class _Killed(Exception):
    pass


def test_folder_with_other_settings_is_one_line_exit_2(demo_runs, monkeypatch, capsys):
    plan, _, _ = demo_runs
    code, _, err = invoke(
        monkeypatch, capsys, "reproduce", "demo", "--max-steps", "3", "--out", str(plan.out)
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "other settings (max_steps)" in err and "another --out" in err


def test_a_diverged_run_is_reported_and_not_rerun(
    tiny_demo, no_run_reports, tmp_path, monkeypatch, capsys
):
    real_train_step = runner.train_step

    def nan_for_nanoadam(*args):
        loss = real_train_step(*args)
        cfg = args[7]  # train_step(model, opt, sched, criterion, x, y, t, cfg, ...)
        return float("nan") if cfg.optimizer == "nanoadam" else loss

    monkeypatch.setattr(runner, "train_step", nan_for_nanoadam)
    argv = ("reproduce", "demo", "--opts", "nanoadam,adamw", "--max-steps", "1", "--quiet")
    code, stdout, err = invoke(monkeypatch, capsys, *argv, "--out", str(tmp_path))
    assert code == 0, err
    assert "diverged" in stdout
    report = (tmp_path / "compare" / "compare.md").read_text()
    assert "did not finish" in report and "nanoadam-seed0" in report
    code, stdout, _ = invoke(monkeypatch, capsys, *argv, "--out", str(tmp_path))
    assert code == 0 and "nanoadam-seed0: skip (diverged before)" in stdout


#: ablation -> the group labels its comparison must show (the varied setting, by name)
ABLATIONS = {
    "ablation-criteria": [
        "nanoadam criterion=small_weights",
        "nanoadam criterion=large_weights",
        "nanoadam criterion=random",
        "nanoadam criterion=large_grads",
    ],
    "ablation-mask": ["nanoadam mask_interval=20", "nanoadam mask_interval=static"],
    "ablation-lr": ["adamw lr=1e-5", "adamw lr=1e-4", "adamw lr=1e-3"],
}


@pytest.mark.parametrize("target", list(ABLATIONS))
def test_ablation_end_to_end_on_the_demo_tasks(
    tiny_demo, no_run_reports, tmp_path, monkeypatch, capsys, target
):
    argv = ["reproduce", target, "--max-steps", "1", "--out", str(tmp_path), "--quiet"]
    if target == "ablation-lr":
        argv += ["--opts", "adamw"]  # the three optimizers take three times as long
    code, stdout, err = invoke(monkeypatch, capsys, *argv)
    assert code == 0, err
    csv = pd.read_csv(tmp_path / "compare" / "comparison.csv")
    assert list(csv["group"]) == ABLATIONS[target]
    assert (csv["seeds"] == 1).all()
    report = (tmp_path / "compare" / "compare.md").read_text()
    assert all(f"| {label} |" in report for label in ABLATIONS[target])
    if target == "ablation-lr":
        assert csv["best"].sum() == 1 and "Best setting per optimizer" in report


@pytest.mark.parametrize(
    "args, expected",
    [
        (["reproduce", "table5"], "choose one of table4, demo"),
        (["reproduce", "table4"], "needs --model vit-large | resnet101 | resnet18"),
        (["reproduce", "table4", "--model", "vit-base"], "got 'vit-base'"),
        (["reproduce", "table4", "--model", "resnet18", "--tasks", "digits"], "drop --tasks"),
        (["reproduce", "demo", "--model", "resnet18"], "drop --model"),
        (["reproduce", "demo", "--seeds", "1,x"], "--seeds takes comma-separated ints"),
        (["reproduce", "demo", "--opts", "adamx"], "unknown optimizer 'adamx'"),
        (["reproduce", "ablation-mask", "--opts", "adamw"], "drop --opts"),
        (["reproduce", "ablation-lr", "--tasks", "digitz"], "unknown task 'digitz'"),
        (["reproduce", "demo", "--max-steps", "0"], "--max-steps must be >= 1"),
    ],
)
def test_bad_values_are_one_line_exit_2(monkeypatch, capsys, args, expected):
    code, _, err = invoke(monkeypatch, capsys, *args, "--dry-run")
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_reproduce_under_torchrun_is_one_line_naming_the_recipe(monkeypatch, capsys, tmp_path):
    from clbench import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    code, _, err = invoke(
        monkeypatch, capsys, "reproduce", "demo", "--out", str(tmp_path / "r"), "--max-steps", "2"
    )
    assert code == 2
    assert "-m clbench run" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("summary.json"))
