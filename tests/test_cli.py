"""The command line: user errors are one line and exit code 2; real runs on folder tasks."""

import subprocess
import sys

import pytest
from _cli import main_exit as invoke

from clbench import cli

TINY = [
    "--model",
    "vit-micro",
    "--no-pretrained",
    "--image-size",
    "16",
    "--max-steps",
    "2",
    "--eval-every",
    "1",
    "--eval-samples",
    "8",
    "--quiet",
]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--model", "resnt18"], "did you mean resnet18"),
        (["run", "--tasks", "digts,shapes"], "did you mean digits"),
        (["run", "--opt", "adamx"], "did you mean adamw"),
        (["run", "--preset", "dem"], "did you mean demo"),
        (
            ["run", "--preset", "demo", "--lr", "1e-3,1e-3,1e-3"],
            "--lr has 3 values but there are 2 tasks",
        ),
        (["run", "--preset", "demo", "--lr", "0"], "--lr must be > 0"),
        (["run", "--preset", "demo", "--lr", "fast"], "--lr takes comma-separated floats"),
        (["run", "--preset", "demo", "--epochs", "0"], "--epochs must be >= 1"),
        (["run", "--preset", "demo", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["run", "--preset", "demo", "--eval-every", "0"], "--eval-every must be >= 1"),
        (["run", "--preset", "demo", "--density", "0.1"], "does not take --density"),
        (["run", "--preset", "demo", "--weights", "nope.pt"], "--weights PATH"),
        (["run", "--preset", "demo", "--tasks", "folder:does/not/exist"], "does/not/exist"),
        (["run", "--preset", "demo", "--schedule", "linear"], "--schedule must be one of"),
        (["run", "--preset", "demo", "--tasks", "digits,digits"], "twice"),
        (["run", "--preset", "demo", "--image-size", "4"], "--image-size must be >= 8"),
        (["run", "--preset", "demo", "--eval-samples", "0"], "--eval-samples must be >= 1"),
        (["run", "--preset", "demo", "--on-nan", "ignore"], "--on-nan must be stop or skip"),
        (
            ["run", "--preset", "demo", "--opt", "nanoadam", "--density", "1.5"],
            "--density must be in (0, 1]",
        ),
        (["run", "--preset", "demo", "--opt-arg", "betas"], "--opt-arg takes KEY=VALUE"),
        (["run", "--preset", "demo", "--opt-arg", "momentum=0.9"], "does not take 'momentum'"),
        (["run", "--preset", "demo", "--resume", "--out", "no/such/run"], "nothing to resume"),
        (
            ["run", "--preset", "demo", "--opt", "nanoadam", "--opt-arg", "criterion=biggest"],
            "rejects its settings",
        ),
        (
            ["run", "--preset", "demo", "--opt", "nanoadam", "--opt-arg", "state_dtype=float33"],
            "not a torch dtype",
        ),
        (
            ["run", "--preset", "demo", "--opt", "microadam", "--fused-backward"],
            "--fused-backward: MicroAdam cannot update parameters one at a time",
        ),
        (
            ["run", "--preset", "demo", "--opt", "nanoadam", "--fused-backward"]
            + ["--opt-arg", "criterion=large_grads"],
            "'large_grads' criterion reads whole gradients",
        ),
        (["list", "things"], "models, tasks, optimizers, presets"),
        (["report", "no/such/run"], "not a finished run directory"),
        (["fetch"], "nothing to fetch"),
    ],
)
def test_user_errors_are_one_line_exit_2(monkeypatch, capsys, args, expected):
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_missing_dataset_offline(monkeypatch, capsys, tmp_path):
    code, _, err = invoke(
        monkeypatch,
        capsys,
        "run",
        *TINY,
        "--tasks",
        "cifar10",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 2 and "clbench fetch" in err and "--download" in err
    assert len(err.strip().splitlines()) == 1


def test_empty_folder_task(monkeypatch, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = invoke(
        monkeypatch,
        capsys,
        "run",
        *TINY,
        "--tasks",
        f"folder:{tmp_path / 'empty'}",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 2 and "empty" in err and len(err.strip().splitlines()) == 1


def test_folder_tasks_with_resnet18(monkeypatch, capsys, tmp_path, make_image_folder):
    a = make_image_folder(tmp_path / "A", classes=("cat", "dog"), size=32, seed=0)
    b = make_image_folder(tmp_path / "B", classes=("x", "y", "z"), size=32, seed=1)
    out = tmp_path / "run"
    code, stdout, err = invoke(
        monkeypatch,
        capsys,
        "run",
        "--model",
        "resnet18",
        "--opt",
        "adamw",
        "--tasks",
        f"folder:{a},folder:{b}",
        "--no-pretrained",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--quiet",
    )
    assert code in (0, None), err
    assert (out / "summary.json").is_file() and (out / "report.md").is_file()
    assert "accuracy matrix" in stdout


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "clbench", "run", "--model", "resnt18"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "did you mean resnet18" in proc.stderr


def test_list_commands(monkeypatch, capsys):
    for what, needle in (
        ("models", "vit-large"),
        ("tasks", "digits"),
        ("optimizers", "adamw"),
        ("presets", "paper-resnet18"),
    ):
        monkeypatch.setattr(sys, "argv", ["clbench", "list", what])
        try:
            cli.main()
        except SystemExit as exc:
            assert exc.code in (0, None)
        assert needle in capsys.readouterr().out


def test_unwritable_out_directory(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = invoke(
        monkeypatch, capsys, "run", *TINY, "--tasks", "digits", "--out", str(blocker / "run")
    )
    assert code == 2 and "writable --out" in err and len(err.strip().splitlines()) == 1
