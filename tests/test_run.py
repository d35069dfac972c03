"""End-to-end runs on tiny offline data: the run-directory contract, the metrics in summary.json,
head bookkeeping, determinism and the pretraining cache."""

import math

import numpy as np
import pytest
import torch

from clbench import metrics, runner, storage
from clbench.config import resolve
from clbench.runner import run

TINY = {
    "model": "vit-micro",
    "pretrained": False,
    "image_size": 16,
    "patch_size": 4,
    "tasks": ("shapes", "gratings"),
    "epochs": [1],
    "lr": [2e-3],
    "batch_size": 32,
    "eval_every": 3,
    "eval_samples": 48,
    "max_steps": 7,
    "optimizer": "adamw",
}
CONTRACT = [
    "config.json",
    "curves.csv",
    "train_log.csv",
    "acc_matrix.csv",
    "shift.csv",
    "summary.json",
    "report.md",
    "figures/forgetting_curves.png",
    "figures/layer_shift.png",
    "figures/qkv_shift_block2.png",
    "checkpoints/last.pt",
    "checkpoints/task_1.pt",
    "checkpoints/task_2.pt",
    "shift/after_task_1.npz",
    "shift/after_task_2.npz",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny two-task run; records which head evaluated which task's test set."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = resolve({**TINY, "out": str(out)})
    loaded, evaluated = [], []
    with pytest.MonkeyPatch.context() as mp:
        real_load, real_eval = runner.load_task, runner.evaluate

        def spy_load(name, *args):
            data = real_load(name, *args)
            loaded.append((name, data.test))
            return data

        def spy_eval(model, dataset, indices, t, *args):
            evaluated.append((dataset, t))
            return real_eval(model, dataset, indices, t, *args)

        mp.setattr(runner, "load_task", spy_load)
        mp.setattr(runner, "evaluate", spy_eval)
        root = run(cfg, progress=False)
    head_of = {id(test): cfg.tasks.index(name) for name, test in loaded}
    return cfg, root, [(head_of[id(ds)], t) for ds, t in evaluated]


def test_run_directory_contract(tiny_run):
    _, root, _ = tiny_run
    for name in CONTRACT:
        assert (root / name).is_file(), name
    names, rows = storage.read_acc_matrix(root / "acc_matrix.csv")
    assert names == ["shapes", "gratings"]
    assert [label for label, _ in rows] == ["init", "shapes", "gratings"]
    assert not math.isnan(rows[0][1][0]) and math.isnan(rows[0][1][1])  # only head 1 at init
    assert math.isnan(rows[1][1][1]) and not math.isnan(rows[2][1][1])
    header = (root / "curves.csv").read_text().splitlines()[0]
    assert header == "step,task_index,trained_task,epoch,eval_task,accuracy,loss"


def test_summary_agrees_with_accuracy_matrix(tiny_run):
    _, root, _ = tiny_run
    s = storage.read_json(root / "summary.json")
    _, rows = storage.read_acc_matrix(root / "acc_matrix.csv")
    R = [accs for label, accs in rows if label != "init"]
    assert s["final"]["accuracy"] == {"shapes": R[1][0], "gratings": R[1][1]}
    assert s["final"]["average_accuracy"] == pytest.approx((R[1][0] + R[1][1]) / 2)
    assert s["final"]["forgetting"]["shapes"] == pytest.approx(R[0][0] - R[1][0])
    assert s["final"]["bwt"] == pytest.approx(R[1][0] - R[0][0])
    assert s["paper"] == pytest.approx(metrics.paper_columns(R))
    for key in ("wall_s", "peak_memory_bytes", "optimizer_state_bytes", "params"):
        assert s["resources"][key] > 0
    assert s["shift"]["l2_excl_heads"] > 0


def test_curves_cover_every_seen_task_and_only_those(tiny_run):
    _, root, _ = tiny_run
    rows = storage.read_csv(root / "curves.csv")
    task1 = {r["eval_task"] for r in rows if r["task_index"] == "1"}
    task2 = {r["eval_task"] for r in rows if r["task_index"] == "2"}
    assert task1 == {"shapes"} and task2 == {"shapes", "gratings"}
    steps1 = [int(r["step"]) for r in rows if r["task_index"] == "1"]
    assert steps1 == [0, 3, 6, 7]  # start, every 3 steps, end of task
    log = storage.read_csv(root / "train_log.csv")
    assert {"step", "loss", "lr", "density"} <= set(log[0])


def test_each_task_is_evaluated_with_its_own_head(tiny_run):
    _, _, calls = tiny_run
    assert calls, "no evaluations recorded"
    assert all(task == head for task, head in calls), calls
    assert {task for task, _ in calls} == {0, 1}  # task 1 evaluated (with head 1) during task 2


def test_shift_rows_and_qkv_matrices(tiny_run):
    _, root, _ = tiny_run
    rows = storage.read_csv(root / "shift.csv")
    after2 = {r["name"]: r for r in rows if r["after_task"] == "gratings"}
    assert "blocks.0.attn.qkv.weight" in after2 and "heads.1.weight" in after2
    assert float(after2["blocks.0.attn.qkv.weight"]["frac_changed"]) > 0.9  # AdamW is dense
    with np.load(root / "shift" / "after_task_2.npz") as npz:
        assert {"blocks.0.attn.qkv.weight:q", "blocks.0.attn.qkv.weight:v"} <= set(npz.files)
        q = npz["blocks.0.attn.qkv.weight:q"].astype(np.float64)
        assert q.shape == (64, 64) and (q >= 0).all()
        full = np.sqrt(
            sum((npz[f"blocks.0.attn.qkv.weight:{p}"].astype(np.float64) ** 2).sum() for p in "qkv")
        )
    assert full == pytest.approx(float(after2["blocks.0.attn.qkv.weight"]["l2"]), rel=1e-2)


def test_same_seed_same_results(tiny_run, tmp_path):
    cfg, root, _ = tiny_run
    again = run(resolve({**TINY, "out": str(tmp_path / "again")}), progress=False)
    for name in ("acc_matrix.csv", "curves.csv"):
        assert (again / name).read_text() == (root / name).read_text()


@pytest.mark.parametrize("opt", ["adamw", "nanoadam"])
def test_fused_backward_run_gives_the_same_results(opt, tmp_path):
    """`--fused-backward` moves the update into backward: same accuracies, same weights."""
    tiny = {**TINY, "optimizer": opt, "opt_args": {"density": 0.05, "mask_interval": 3}}
    if opt == "adamw":
        tiny.pop("opt_args")
    plain = run(resolve({**tiny, "out": str(tmp_path / "plain")}), progress=False)
    fused = run(
        resolve({**tiny, "fused_backward": True, "out": str(tmp_path / "fused")}),
        progress=False,
    )
    assert (fused / "acc_matrix.csv").read_text() == (plain / "acc_matrix.csv").read_text()
    a = storage.load_torch(plain / "checkpoints" / "last.pt")["model"]
    b = storage.load_torch(fused / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


def test_existing_run_is_not_overwritten(tiny_run):
    cfg, root, _ = tiny_run
    from clbench.errors import UserError

    with pytest.raises(UserError, match="--resume"):
        run(cfg, progress=False)


def test_pretrain_cache_hit_on_second_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    opts = {
        **TINY,
        "tasks": ("digits",),
        "pretrain": "shapes",
        "pretrain_epochs": 2,
        "pretrain_lr": 2e-3,
        "max_steps": 2,
        "eval_every": 2,
    }
    first = run(resolve({**opts, "out": str(tmp_path / "a")}), progress=False)
    second = run(resolve({**opts, "out": str(tmp_path / "b")}), progress=False)
    info1 = storage.read_json(first / "summary.json")["pretrain"]
    info2 = storage.read_json(second / "summary.json")["pretrain"]
    assert info1["cache"] == "miss" and info2["cache"] == "hit"
    assert info1["test_accuracy"] > 20  # the stage learned something (chance: 10%)
    theta_a = storage.load_torch(first / "checkpoints" / "theta0.pt")
    theta_b = storage.load_torch(second / "checkpoints" / "theta0.pt")
    assert all(torch.equal(theta_a[k], theta_b[k]) for k in theta_a)
    assert (first / "acc_matrix.csv").read_text() == (second / "acc_matrix.csv").read_text()
    # a different pretraining setting is a different cache entry
    third = run(resolve({**opts, "pretrain_lr": 1e-3, "out": str(tmp_path / "c")}), progress=False)
    assert storage.read_json(third / "summary.json")["pretrain"]["cache"] == "miss"
