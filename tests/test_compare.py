"""clbench compare on hand-made run directories, the QKV split and block averaging."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from clbench import cli, shift
from clbench.models import create_backbone
from reports import compare
from reports.figures import block_average, default_block, qkv_parts


def make_run(
    root,
    optimizer="adamw",
    seed=0,
    model="vit-micro",
    tasks=("digits", "gratings"),
    R=((80.0, None), (50.0, 70.0)),
    l2=2.0,
):
    """A finished run directory written by hand in the run-directory contract."""
    root.mkdir(parents=True)
    t1, t2 = tasks
    cfg = {
        "model": model,
        "optimizer": optimizer,
        "tasks": list(tasks),
        "seed": seed,
        "lr": [1e-3, 1e-3],
        "opt_hparams": {},
        "name": root.name,
        "out": str(root),
    }
    (root / "config.json").write_text(json.dumps({"config": cfg, "device": "cpu"}))
    (root / "acc_matrix.csv").write_text(
        f"after,{t1},{t2}\ninit,10,\n{t1},{R[0][0]},\n{t2},{R[1][0]},{R[1][1]}\n"
    )
    curves = ["step,task_index,trained_task,epoch,eval_task,accuracy,loss"]
    curves += [
        f"0,1,{t1},0,{t1},10,2.3",
        f"5,1,{t1},1,{t1},{R[0][0]},0.5",
        f"5,2,{t2},0,{t1},{R[0][0]},0.5",
        f"5,2,{t2},0,{t2},10,2.3",
        f"10,2,{t2},1,{t1},{R[1][0]},1.0",
        f"10,2,{t2},1,{t2},{R[1][1]},0.7",
    ]
    (root / "curves.csv").write_text("\n".join(curves) + "\n")
    (root / "train_log.csv").write_text(
        "step,task_index,trained_task,epoch,loss,lr,density\n"
        f"5,1,{t1},1,0.5,0.001,1\n10,2,{t2},1,0.7,0.001,1\n"
    )
    (root / "shift.csv").write_text(
        "name,after_task,numel,l1,l2,rel_l2,frac_changed\n"
        f"blocks.0.mlp.fc1.weight,{t2},100,5,{l2},0.1,1\n"
    )
    paper = {
        "t1": R[0][0],
        "t2": R[1][1],
        "t1_after_t2": R[1][0],
        "avg": (R[0][0] + R[1][1] + R[1][0]) / 3,
        "forgetting": R[0][0] - R[1][0],
    }
    summary = {
        "schema": 1,
        "name": root.name,
        "model": model,
        "optimizer": optimizer,
        "tasks": list(tasks),
        "seed": seed,
        "status": "complete",
        "final": {
            "accuracy": {t1: R[1][0], t2: R[1][1]},
            "average_accuracy": (R[1][0] + R[1][1]) / 2,
            "forgetting": {t1: R[0][0] - R[1][0]},
            "mean_forgetting": R[0][0] - R[1][0],
            "bwt": R[1][0] - R[0][0],
        },
        "paper": paper,
        "shift": {"l2_excl_heads": l2, "frac_unchanged_excl_heads": 0.25},
        "resources": {
            "wall_s": 1.0,
            "peak_memory_bytes": 1,
            "optimizer_state_bytes": 1,
            "params": 1,
        },
    }
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_qkv_split_equals_manual_slicing():
    torch.manual_seed(0)
    state = create_backbone("vit-micro", False, image_size=16).state_dict()
    parts = dict(shift.attention_blocks(state))
    w = state["blocks.3.attn.qkv.weight"]
    d = w.shape[1]
    for i, p in enumerate("qkv"):
        assert torch.equal(parts[f"blocks.3.attn.qkv.weight:{p}"], w[i * d : (i + 1) * d])
    matrices = {k: v.numpy() for k, v in parts.items()}
    assert set(qkv_parts(matrices, 3)) == {"q", "k", "v"}
    assert np.array_equal(qkv_parts(matrices, 3)["k"], w[d : 2 * d].numpy())


@pytest.mark.parametrize("shape", [(256, 256), (300, 200), (1024, 3000)])
def test_block_average_preserves_the_mean(shape):
    rng = np.random.default_rng(0)
    m = rng.random(shape, dtype=np.float32) ** 3
    avg = block_average(m, max_size=128)
    assert max(avg.shape) <= 128
    rows = np.diff(np.linspace(0, shape[0], avg.shape[0] + 1).astype(int))
    cols = np.diff(np.linspace(0, shape[1], avg.shape[1] + 1).astype(int))
    weighted = (avg * np.outer(rows, cols)).sum() / m.size
    assert weighted == pytest.approx(float(m.astype(np.float64).mean()), rel=1e-9)
    if shape[0] % 128 == 0 and shape[1] % 128 == 0:
        assert avg.mean() == pytest.approx(float(m.astype(np.float64).mean()), rel=1e-9)


def test_default_block_is_the_papers_for_vit_large():
    assert default_block(24) == 10


def test_compare_groups_seeds_and_gives_the_expected_table(tmp_path):
    a0 = make_run(tmp_path / "a0", seed=0, R=((80.0, None), (50.0, 70.0)), l2=2.0)
    a1 = make_run(tmp_path / "a1", seed=1, R=((90.0, None), (60.0, 72.0)), l2=4.0)
    n0 = make_run(tmp_path / "n0", optimizer="nanoadam", R=((85.0, None), (80.0, 75.0)), l2=1.0)
    result = compare([a0, a1, n0], tmp_path / "out")
    table = result["table"].set_index("group")
    assert list(table.index) == ["adamw", "nanoadam"]
    assert table.loc["adamw", "seeds"] == 2
    assert table.loc["adamw", "t1"] == 85.0 and table.loc["adamw", "t1_std"] == pytest.approx(
        math.sqrt(50.0)
    )
    assert table.loc["adamw", "forgetting"] == 30.0 and table.loc["adamw", "forgetting_std"] == 0
    assert table.loc["adamw", "l2_excl_heads"] == 3.0
    assert table.loc["nanoadam", "forgetting"] == 5.0 and table.loc["nanoadam", "seeds"] == 1
    assert table.loc["nanoadam", "never_updated_pct"] == 25.0
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "| adamw | 2 | 85.00 ± 7.07 |" in text
    assert "| T1 | T2 |" in text and "| paper | Δ |" not in text  # no paper column
    assert (tmp_path / "out" / "forgetting_curves.png").stat().st_size > 0
    assert (tmp_path / "out" / "comparison.csv").exists()


def test_paper_column_appears_exactly_when_the_setting_matches(tmp_path):
    paper_tasks = ("cifar10", "flowers102")
    match = make_run(tmp_path / "m", model="resnet18", tasks=paper_tasks)
    other_opt = make_run(tmp_path / "s", model="resnet18", optimizer="sgd", tasks=paper_tasks)
    table = compare([match, other_opt], tmp_path / "out")["table"].set_index("group")
    assert table.loc["adamw", "paper_t1"] == 95.63
    assert table.loc["adamw", "paper_forgetting"] == 68.05
    assert math.isnan(table.loc["sgd", "paper_t1"])
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "| T1 | paper | Δ | T2 | paper | Δ |" in text and "| 95.63 | -15.63 |" in text
    # same model and optimizer on other tasks: no paper column at all
    off = make_run(tmp_path / "o", model="resnet18", tasks=("digits", "gratings"))
    table = compare([off], tmp_path / "out2")["table"]
    assert math.isnan(table.loc[0, "paper_t1"])
    text = (tmp_path / "out2" / "compare.md").read_text()
    assert "| T1 | T2 |" in text and "| paper | Δ |" not in text


@pytest.mark.parametrize("broken", ["missing", "half"])
def test_missing_or_half_written_run_is_one_line_exit_2(tmp_path, monkeypatch, capsys, broken):
    good = make_run(tmp_path / "good")
    bad = tmp_path / "bad"
    if broken == "half":
        make_run(bad)
        (bad / "summary.json").unlink()
    monkeypatch.setattr(
        sys, "argv", ["clbench", "compare", str(good), str(bad), "-o", str(tmp_path / "out")]
    )
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "not a finished run directory" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_separate_q_k_v_projections_are_found():
    state = {
        f"layers.{i}.self_attn.{p}_proj.weight": torch.full((4, 4), float(i))
        for i in range(2)
        for p in "qkvo"
    }
    found = dict(shift.attention_blocks(state))
    assert set(found) == {f"layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qkv"}
    parts = qkv_parts({k: v.numpy() for k, v in found.items()}, 1)
    assert set(parts) == {"q", "k", "v"} and float(parts["v"][0, 0]) == 1.0
