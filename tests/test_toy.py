"""The teacher-student toy: the problem's setup, gradients, the per-layer selection, seeds run
as a batch, and `clbench toy` end to end with its user errors."""

import json

import pytest
import torch
from _cli import main_exit as invoke

from clbench.toy import (
    STUDENT_NEURONS,
    ToyConfig,
    compare_paired,
    draw_problem,
    forward,
    gradient_descent,
    loss_and_grads,
    mean_squared_error,
    run_toy,
    select,
    verdicts,
)

TINY = {"pretrain_steps": 300, "finetune_steps": 60, "train_samples": 200, "test_samples": 500}


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_net(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(batch, STUDENT_NEURONS, 2, generator=gen)
    a = torch.randn(batch, STUDENT_NEURONS, generator=gen)
    return w, a


# -------------------------------------------------------------------------------------- setup


def test_teacher_and_extra_neurons_have_unit_rows_and_sign_outputs():
    p = draw_problem(range(6), 10, 10)
    for w, a in (p.teacher, p.extra):
        assert w.shape[1:] == (2, 2)
        torch.testing.assert_close(w.norm(dim=-1), torch.ones(6, 2))
        assert set(a.flatten().tolist()) == {-1.0, 1.0}


def test_antisymmetric_init_gives_zero_output():
    p = draw_problem(range(4), 500, 10)
    w, a = p.init
    half = STUDENT_NEURONS // 2
    assert torch.equal(w[:, :half], w[:, half:]) and torch.equal(a[:, :half], -a[:, half:])
    assert forward(p.init, p.x_train).abs().max() < 1e-6
    # the same weights without the sign flip do produce an output
    assert forward((w, a.abs()), p.x_train).abs().max() > 0.1


def test_gradients_match_autograd():
    w, a = (t.double().requires_grad_() for t in _random_net(3))
    x = torch.randn(3, 50, 2, dtype=torch.float64)
    y = torch.randn(3, 50, dtype=torch.float64)
    loss, (gw, ga) = loss_and_grads((w.detach(), a.detach()), x, y)
    expected = ((forward((w, a), x) - y) ** 2).mean(-1)
    torch.testing.assert_close(loss, expected.detach())
    aw, aa = torch.autograd.grad(expected.sum(), (w, a))
    torch.testing.assert_close(gw, aw)
    torch.testing.assert_close(ga, aa)


def test_pretraining_fits_the_teacher():
    p = draw_problem(range(3), 1000, 5000)
    y = forward(p.teacher, p.x_train)
    start = mean_squared_error(p.init, p.x_test, p.teacher)
    net, _ = gradient_descent(p.init, p.x_train, y, lr=0.5, steps=2000)
    end = mean_squared_error(net, p.x_test, p.teacher)
    assert (start > 0.1).all()  # the teacher's output has variance of order 1
    assert (end < 1e-3).all(), end


# ---------------------------------------------------------------------------------- selection


@pytest.mark.parametrize("criterion", ["small_weights", "large_gradient"])
def test_selection_takes_the_count_per_layer_by_the_criterion(criterion):
    net, grads = _random_net(4, seed=1), _random_net(4, seed=2)
    masks = select(criterion, net, grads, kept=lambda n: n // 4)
    scores = net if criterion == "small_weights" else grads
    for mask, score in zip(masks, scores, strict=True):
        flat_mask, flat = mask.flatten(1), score.abs().flatten(1)
        assert (flat_mask.sum(1) == flat.shape[1] // 4).all()
        for row_mask, row in zip(flat_mask, flat, strict=True):
            chosen, rest = row[row_mask], row[~row_mask]
            if criterion == "small_weights":
                assert chosen.max() < rest.min()
            else:
                assert chosen.min() > rest.max()


def test_masked_descent_leaves_unselected_entries_bit_identical():
    p = draw_problem(range(2), 200, 10)
    y = forward(p.teacher, p.x_train) + 0.5 * p.x_train[..., 0].clamp_min(0)
    kept = ToyConfig().kept
    (w, a), masks = gradient_descent(
        p.init, p.x_train, y, 0.25, 50, pick=lambda n, g: select("small_weights", n, g, kept)
    )
    for new, old, mask in zip((w, a), p.init, masks, strict=True):
        assert torch.equal(new[~mask], old[~mask])
        assert (new[mask] != old[mask]).float().mean() > 0.9


def test_mask_interval_reselects():
    p = draw_problem(range(1), 50, 10)
    y = forward(p.teacher, p.x_train)
    calls = []

    def pick(net, grads):
        calls.append(1)
        return select("large_gradient", net, grads, lambda n: 2)

    gradient_descent(p.init, p.x_train, y, 0.1, 25, pick=pick)
    assert len(calls) == 1
    gradient_descent(p.init, p.x_train, y, 0.1, 25, pick=pick, mask_interval=10)
    assert len(calls) == 1 + 3  # steps 0, 10, 20


# --------------------------------------------------------------------------------- experiment


def _changed(after: dict, before: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(
        torch.tensor(after[k]) != torch.tensor(before[k])  # type: ignore[misc]
        for k in ("w", "a")
    )


def test_run_updates_only_the_selected_entries_of_each_layer():
    result = run_toy(ToyConfig(seeds=2, density=0.25, **TINY))
    kept = result["kept"]
    assert kept == {"W": 10, "a": 5}
    before = result["neurons"]["pretrained"]
    for r in result["results"]:
        moved_w, moved_a = _changed(r["neurons_after"], before)
        assert 0 < moved_w.sum() <= kept["W"] and 0 < moved_a.sum() <= kept["a"]
        if r["criterion"] == "small_weights":  # the moved entries are among the smallest |w|
            for moved, key in ((moved_w, "w"), (moved_a, "a")):
                size = torch.tensor(before[key]).abs().flatten()
                bound = size.sort().values[kept["W" if key == "w" else "a"] - 1]
                assert (size[moved.flatten()] <= bound).all()


def test_seeds_in_a_batch_give_what_each_seed_gives_alone():
    batch = run_toy(ToyConfig(seeds=3, **TINY))
    alone = run_toy(ToyConfig(seeds=1, seed=1, **TINY))
    assert alone["seeds"] == [1]
    for b, s in zip(batch["results"], alone["results"], strict=True):
        for metric in ("test_loss", "l2"):
            assert b[metric]["per_seed"][1] == pytest.approx(s[metric]["per_seed"][0], rel=1e-5)
    first = run_toy(ToyConfig(seeds=1, **TINY))  # float32 rounding differs with the batch size
    for name, neurons in first["neurons"].items():
        for key, values in neurons.items():
            expected = torch.tensor(batch["neurons"][name][key])
            torch.testing.assert_close(torch.tensor(values), expected, rtol=1e-3, atol=1e-5)


def test_paired_comparison_needs_two_standard_errors():
    assert compare_paired([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]) == "lower"  # same shift every seed
    assert compare_paired([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]) == "higher"
    assert compare_paired([1.0, 2.0, 3.0], [2.0, 1.0, 3.1]) == "unclear"  # noise around 0
    assert compare_paired([1.0], [2.0]) == "lower"


def test_verdicts_per_setting():
    def row(k, criterion, loss, l2):
        return {
            "extra_neurons": k,
            "criterion": criterion,
            "test_loss": {"per_seed": loss},
            "l2": {"per_seed": l2},
        }

    low, high, noisy = [0.1, 0.2, 0.3], [0.2, 0.3, 0.4], [0.3, 0.1, 0.3]
    results = [
        row(1, "small_weights", low, low),
        row(1, "large_gradient", high, high),
        row(2, "small_weights", high, high),
        row(2, "large_gradient", low, noisy),
    ]
    out = {v["extra_neurons"]: v for v in verdicts(results)}
    assert out[1]["verdict"] == "agrees" and out[2]["verdict"] == "disagrees"
    assert out[2]["test_loss"] == "higher" and out[2]["l2"] == "unclear"
    assert "disagrees with the paper" in out[2]["text"]
    results[2]["test_loss"]["per_seed"] = low
    results[3]["test_loss"]["per_seed"] = high
    assert verdicts(results)[1]["verdict"] == "partly agrees"
    results[2]["test_loss"]["per_seed"] = noisy
    assert verdicts(results)[1]["verdict"] == "inconclusive"


# ------------------------------------------------------------------------------------- the CLI


def test_cli_writes_json_markdown_and_figure(monkeypatch, capsys, tmp_path):
    out = tmp_path / "toy"
    args = ["toy", "--seeds", "2", "--pretrain-steps", "200", "--finetune-steps", "40"]
    args += ["--train-samples", "100", "--test-samples", "300", "--out", str(out), "--quiet"]
    code, stdout, stderr = invoke(monkeypatch, capsys, *args)
    assert code == 0, stderr
    data = json.loads((out / "toy.json").read_text())
    assert [(r["extra_neurons"], r["criterion"]) for r in data["results"]] == [
        (1, "small_weights"),
        (1, "large_gradient"),
        (2, "small_weights"),
        (2, "large_gradient"),
    ]
    assert all(len(r["l2"]["per_seed"]) == 2 for r in data["results"])
    md = (out / "toy.md").read_text()
    assert "0.0094 ± 0.012" in md and "Table 8" in md and "the paper" in md
    assert (out / "toy.png").read_bytes()[:4] == b"\x89PNG"
    assert "small weights against large gradient" in stdout and "Table 7" in stdout


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--extra-neurons", "3"], "--extra-neurons"),
        (["--seeds", "0"], "--seeds"),
        (["--density", "0"], "--density"),
        (["--finetune-steps", "-1"], "--finetune-steps"),
        (
            ["--pretrain-lr", "8", "--pretrain-steps", "200", "--test-samples", "10"],
            "--pretrain-lr",
        ),
    ],
)
def test_bad_values_exit_2_with_one_line(monkeypatch, capsys, tmp_path, args, flag):
    code, _, stderr = invoke(monkeypatch, capsys, "toy", "--out", str(tmp_path), *args)
    assert code == 2
    assert flag in stderr and len(stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
