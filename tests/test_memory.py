"""`clbench memory` and `optimizers.memory`: the paper's table, and formulas that match the
measured `state_bytes()`."""

import math

import pytest
from _cli import main_exit

import optimizers
from clbench.bench import build_model
from optimizers.benchmark import attach, fixed_gradients
from optimizers.memory import (
    PAPER_FORMULAS,
    format_size,
    measured_state_bytes,
    state_formula,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_table_prints_the_appendix_numbers(monkeypatch, capsys):
    """LLaMA-2 7B at k = 1%: exactly the figures of the paper's appendix E."""
    code, out, err = main_exit(monkeypatch, capsys, "memory", "--params", "6.275e9")
    assert code == 0, err
    rows = {
        line.split("│")[1].strip(): line.split("│")[3].strip()
        for line in out.splitlines()
        if line.count("│") == 4
    }
    assert rows["NanoAdam (int16 indices)"] == "0.3765"
    assert rows["NanoAdam (int64 indices)"] == "0.753"  # 4kS moments + 8kS int64 indices
    assert rows["AdamW (fp32 states)"] == "50.2"
    assert rows["AdamW (bf16 states)"] == "25.1"
    assert rows["AdamW-8bit"] == "12.55"
    assert rows["MicroAdam (window m = 10)"] == "5.65"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.3765, "0.3765"), (25.1, "25.1"), (5.6475, "5.65"), (50.0, "50"), (0.00012345, "0.0001234")],
)
def test_format_size_keeps_the_papers_precision(value, text):
    assert format_size(value) == text


def test_paper_formulas_scale_with_density_and_window():
    by_label = {f.label: f for f in PAPER_FORMULAS}
    nano = by_label["NanoAdam (int16 indices)"]
    assert nano.bytes(1e6, density=0.02) == pytest.approx(2 * nano.bytes(1e6, density=0.01))
    micro = by_label["MicroAdam (window m)"]
    assert micro.bytes(1e6, 0.01, 20) - micro.bytes(1e6, 0.01, 10) == pytest.approx(4e5)


@pytest.fixture(scope="module", params=["resnet18", "vit-tiny"])
def model_with_grads(request):
    net = build_model(request.param)
    return request.param, attach(net, fixed_gradients(net))


@pytest.mark.parametrize("name", ["nanoadam", "microadam", "adamw"])
def test_measured_state_bytes_match_the_formula(model_with_grads, name):
    """After one step on resnet18 and a ViT (random weights, a 10-class head), `state_bytes()` is
    within 1% of the formula of `optimizers.memory` (it is in fact equal)."""
    _, model = model_with_grads
    hparams = {"density": 0.01} if name != "adamw" else {}
    measured = measured_state_bytes(name, model, **hparams)
    formula = state_formula(name, model, **hparams)
    assert abs(measured / formula.bytes - 1) < 0.01
    assert measured == formula.bytes


def test_nanoadam_formula_is_six_bytes_per_selected_entry(model_with_grads):
    """The formula's sparse part stays within one entry per chunk of 6kS and its dense part is
    8 bytes per head and norm entry, so it only adds rounding to the paper's 6kS."""
    _, model = model_with_grads
    f = state_formula("nanoadam", model, density=0.01)
    assert f.other_bytes == 8 * f.other  # heads and norms: fp32 AdamW
    sparse_bytes = f.main_bytes - 24 * f.tensors
    assert 6 * 0.01 * f.params <= sparse_bytes
    chunks = sum(
        math.ceil(p.numel() / 32768)
        for g in optimizers.param_groups(model)
        if g["sparse"]
        for p in g["params"]
    )
    assert sparse_bytes <= 6 * (0.01 * f.params + chunks)


def test_model_table_compares_every_optimizer(monkeypatch, capsys):
    code, out, err = main_exit(monkeypatch, capsys, "memory", "--model", "vit-micro")
    assert code == 0, err
    for name in ("nanoadam", "microadam", "adamw", "sgd"):
        line = next(line for line in out.splitlines() if line.startswith(f"│ {name} "))
        assert "+0.00%" in line


@pytest.mark.parametrize(
    ("argv", "fix"),
    [
        ([], "exactly one of --params"),
        (["--params", "1e9", "--model", "resnet18"], "exactly one of --params"),
        (["--params", "1e9", "--density", "0"], "--density must lie in (0, 1]"),
        (["--params", "1e9", "--window", "0"], "--window must be at least 1"),
        (["--params", "-5"], "--params must be a positive"),
        (["--model", "resnet19"], "unknown model 'resnet19'"),
    ],
)
def test_user_errors_are_one_line(monkeypatch, capsys, argv, fix):
    code, _, err = main_exit(monkeypatch, capsys, "memory", *argv)
    assert code == 2
    assert fix in err
    assert len(err.strip().splitlines()) == 1
