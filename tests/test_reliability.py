"""A killed run resumes to exactly the result of an uninterrupted one; signals, divergence and
corrupt checkpoints end cleanly."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from _cli import main_exit

from clbench import cli, storage, training

ARGS = [
    "--model",
    "vit-micro",
    "--no-pretrained",
    "--image-size",
    "16",
    "--patch-size",
    "4",
    "--tasks",
    "digits,shapes",
    "--lr",
    "2e-3",
    "--batch-size",
    "32",
    "--max-steps",
    "9",
    "--eval-every",
    "2",
    "--eval-samples",
    "40",
    "--seed",
    "3",
    "--quiet",
]
TOTAL_STEPS = 18


def cli_run(monkeypatch, capsys, *args):
    return main_exit(monkeypatch, capsys, "run", *args)


def start(out, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clbench",
            "run",
            *ARGS,
            "--out",
            str(out),
            "--checkpoint-every",
            "1",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(out, step, proc, timeout=240):
    """Block until the run's last checkpoint is at `step` or later."""
    deadline = time.time() + timeout
    last = out / "checkpoints" / "last.pt"
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        if last.exists():
            try:
                if storage.load_torch(last)["position"]["step"] >= step:
                    return
            except Exception:  # replaced while reading: try again
                pass
        time.sleep(0.05)
    raise AssertionError("run did not reach the step in time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["clbench", "run", *ARGS, "--out", str(out)])
        try:
            cli.main()
        except SystemExit as exc:
            assert exc.code in (0, None)
    return out


def assert_same_results(a, b):
    for name in ("acc_matrix.csv", "curves.csv", "shift.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("final", "paper", "shift", "status"):
        assert sa[key] == sb[key], key
    wa = storage.load_torch(a / "checkpoints" / "last.pt")["model"]
    wb = storage.load_torch(b / "checkpoints" / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigkill_at_a_random_step_then_resume_is_identical(
    reference, tmp_path, monkeypatch, capsys
):
    step = random.Random().randint(1, TOTAL_STEPS - 1)
    print(f"killing at step {step}")
    out = tmp_path / "killed"
    proc = start(out)
    wait_for_step(out, step, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, _, err = cli_run(monkeypatch, capsys, "--resume", "--out", str(out))
    assert code == 0, err
    assert_same_results(reference, out)


def test_sigterm_checkpoints_and_says_how_to_resume(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "term"
    proc = start(out)
    wait_for_step(out, 4, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert f"clbench run --resume --out {out}" in err and "Traceback" not in err
    code, _, err = cli_run(monkeypatch, capsys, "--resume", "--out", str(out))
    assert code == 0, err
    assert_same_results(reference, out)


def test_resume_with_different_settings_lists_the_keys(reference, monkeypatch, capsys):
    args = [a if a != "2e-3" else "1e-3" for a in ARGS]
    code, _, err = cli_run(monkeypatch, capsys, *args, "--out", str(reference), "--resume")
    assert code == 2 and "lr" in err and len(err.strip().splitlines()) == 1


def test_corrupt_checkpoint_is_a_clear_error_and_kept(tmp_path, monkeypatch, capsys):
    out = tmp_path / "corrupt"
    code, _, err = cli_run(monkeypatch, capsys, *ARGS, "--out", str(out))
    assert code == 0, err
    last = out / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # truncated
    code, _, err = cli_run(monkeypatch, capsys, "--resume", "--out", str(out))
    assert code == 2 and "cannot be read" in err and "Traceback" not in err
    assert last.read_bytes() == data[: len(data) // 3]


def test_divergence_exits_3_and_the_report_says_so(tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"
    code, _, err = cli_run(
        monkeypatch, capsys, *ARGS, "--opt", "sgd", "--lr", "1e12", "--out", str(out)
    )
    assert code == 3 and "lower --lr" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["final"] is None
    assert "nan" not in json.dumps(summary["final"]).lower()
    report = (out / "report.md").read_text()
    assert "did not finish: diverged" in report


def test_on_nan_skip_counts_skipped_batches(tmp_path, monkeypatch, capsys):
    real = training.train_step
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        return float("nan") if calls["n"] % 4 == 0 else real(*args, **kwargs)

    monkeypatch.setattr("clbench.runner.train_step", flaky)
    out = tmp_path / "skip"
    code, _, err = cli_run(monkeypatch, capsys, *ARGS, "--on-nan", "skip", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["nan_skips"] >= 4
    assert "skipped for a non-finite loss" in (out / "report.md").read_text()
    steps = [int(r["step"]) for r in storage.read_csv(out / "train_log.csv")]
    assert steps[-1] == TOTAL_STEPS  # skipped batches are not counted as steps
