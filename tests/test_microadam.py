"""MicroAdam: error-feedback bookkeeping, window statistics, the closed form at window 1 and
density 1, dense groups, checkpoints and memory."""

from __future__ import annotations

import copy
import io
import math

import pytest
import timm
import torch
from _tiny import small_batches as _batches
from _tiny import small_vit as _vit
from _tiny import train as _train
from torch import nn

import optimizers
from optimizers import MicroAdam, param_groups
from optimizers._microadam_functional import (
    BlockLayout,
    dequantize_4bit,
    flat_index,
    quantization_step,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _error_feedback(opt: MicroAdam, p: torch.Tensor) -> torch.Tensor:
    s, group = opt.state[p], opt.param_groups[0]
    if not s:
        return torch.zeros(p.numel())
    return dequantize_4bit(s["ef"], s["ef_min"], s["ef_max"], p.numel(), group["quant_bucket_size"])


def _newest_sparse_gradient(opt: MicroAdam, p: torch.Tensor) -> torch.Tensor:
    """The sparse gradient stored by the last step, as a dense fp32 vector."""
    group, s = opt.param_groups[0], opt.state[p]
    lay = BlockLayout.build(p.numel(), group["block_size"], group["density"])
    newest = (s["slot"] - 1) % group["window"]
    where = flat_index(s["indices"][newest], lay.block_starts(p.device))
    dense = torch.zeros(p.numel())
    dense[where] = s["values"][newest].float()
    return dense


def _random_grads(p: torch.Tensor, steps: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Scales that vary across steps and entries exercise the quantisation ranges.
    return [
        torch.randn(p.shape, generator=g) * (1 + 3 * torch.rand(p.shape, generator=g))
        for _ in range(steps)
    ]


def test_error_feedback_bookkeeping():
    """What came in (gradient + dequantised error feedback) = what was applied (the sparse
    gradient stored this step) + what is kept (the new dequantised error feedback), up to half a
    quantisation step per entry, the bf16 rounding of the stored values and of the bucket
    min/max. The stored entries are the Top-K of |a| in every block, and nothing else is stored.
    Sizes with a remainder block and a short last bucket."""
    p = nn.Parameter(torch.zeros(3000))
    opt = MicroAdam([p], lr=1e-3, density=0.03, window=3, block_size=512, quant_bucket_size=64)
    lay = BlockLayout.build(3000, 512, 0.03)
    assert (lay.full, lay.k_block, lay.rest, lay.k_rest) == (5, 16, 440, 14)
    for grad in _random_grads(p, 8):
        came_in = grad.reshape(-1) + _error_feedback(opt, p)
        p.grad = grad.clone()
        opt.step()
        applied = _newest_sparse_gradient(opt, p)
        kept = _error_feedback(opt, p)
        s = opt.state[p]
        step = quantization_step(s["ef_min"], s["ef_max"], 3000, 64)
        bound_range = torch.maximum(s["ef_min"].float().abs(), s["ef_max"].float().abs())
        bound = (
            step / 2
            + bound_range.repeat_interleave(64)[:3000] * 2**-8
            + applied.abs() * 2**-8
            + 1e-6
        )
        assert ((applied + kept - came_in).abs() <= bound).all()
        # Top-K per block of |came_in|: every stored magnitude >= every unstored one in its block.
        selected = applied != 0
        for lo, hi in [(b * 512, (b + 1) * 512) for b in range(5)] + [(2560, 3000)]:
            block, chosen = came_in[lo:hi].abs(), selected[lo:hi]
            assert int(chosen.sum()) == (16 if hi - lo == 512 else 14)
            assert block[chosen].min() >= block[~chosen].max()
        # Error feedback is small on the stored entries (they were zeroed before quantising).
        assert (
            kept[selected].abs()
            <= step[selected] + bound_range.repeat_interleave(64)[:3000][selected] * 2**-7
        ).all()


@pytest.mark.parametrize("window", [1, 4])
def test_window_statistics_equal_direct_recomputation(window):
    """The update equals lr m_hat / (sqrt(v_hat) + eps) with m, v recomputed directly from the
    history of sparse gradients (the last `window` of them, weighted (1-b) b^age, age 0 for the
    newest) and the usual bias corrections with t = steps taken; 13 steps wrap the ring."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(5, 700))
    b1, b2, lr, eps = 0.8, 0.95, 1e-2, 1e-8
    opt = MicroAdam(
        [p], lr=lr, betas=(b1, b2), eps=eps, density=0.1, window=window, block_size=1024
    )
    history = []
    for t, grad in enumerate(_random_grads(p, 13, seed=1), start=1):
        before = p.detach().clone().reshape(-1)
        p.grad = grad
        opt.step()
        history.append(_newest_sparse_gradient(opt, p))
        recent = history[-window:]
        m = sum((1 - b1) * b1 ** (len(recent) - 1 - i) * g for i, g in enumerate(recent))
        v = sum((1 - b2) * b2 ** (len(recent) - 1 - i) * g * g for i, g in enumerate(recent))
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        expected = before - lr * m_hat / (v_hat.sqrt() + eps)
        torch.testing.assert_close(p.detach().reshape(-1), expected, rtol=1e-5, atol=1e-7)


def test_window_one_density_one_closed_form():
    """Window 1, density 1: every entry is selected, so the error feedback is zero at every step
    (a residual of zeros quantises to min = max = 0) and the ring holds only g~ = bf16(g).
    Then m = (1-b1) g~, v = (1-b2) g~^2, and after weight decay
        p <- p (1 - lr wd) - lr [(1-b1)/(1-b1^t)] g~ / (sqrt((1-b2)/(1-b2^t)) |g~| + eps),
    a per-entry sign step of size lr (1-b1)/(1-b1^t) / sqrt((1-b2)/(1-b2^t)) (for |g~| >> eps)."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(40, 30))
    b1, b2, lr, wd, eps = 0.9, 0.999, 1e-2, 0.1, 1e-8
    opt = MicroAdam(
        [p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, density=1.0, window=1, block_size=256
    )
    expected = p.detach().clone()
    for t, grad in enumerate(_random_grads(p, 6, seed=2), start=1):
        p.grad = grad
        opt.step()
        g = grad.to(torch.bfloat16).float()
        c1, c2 = (1 - b1) / (1 - b1**t), (1 - b2) / (1 - b2**t)
        expected = expected * (1 - lr * wd) - lr * c1 * g / (math.sqrt(c2) * g.abs() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
        assert _error_feedback(opt, p).abs().max() == 0


def test_state_dict_round_trip_continues_identically():
    """Save after 5 steps, reload through torch.load(weights_only=True) into a fresh optimizer on
    a copy of the model: the next 7 steps match the uninterrupted run bit for bit, and the state
    keeps its dtypes (torch would otherwise cast bf16 values to the parameter dtype)."""
    batches = _batches(12)
    model = _vit()
    kwargs = dict(lr=1e-2, density=0.05, window=3, block_size=2048, weight_decay=0.01)
    opt = MicroAdam(param_groups(model), **kwargs)
    _train(model, opt, batches[:5])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _vit()
    resumed.load_state_dict(saved["model"])
    opt2 = MicroAdam(param_groups(resumed), **kwargs)
    opt2.load_state_dict(saved["opt"])
    _train(model, opt, batches[5:])
    _train(resumed, opt2, batches[5:])
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    sparse = opt2.param_groups[0]["params"][0]
    assert opt2.state[sparse]["values"].dtype == torch.bfloat16
    assert opt2.state[sparse]["indices"].dtype == torch.int16
    assert opt2.state[sparse]["ef_min"].dtype == torch.bfloat16


def test_dense_groups_equal_torch_adamw():
    """`sparse=False` groups (heads, norms) follow torch's AdamW."""
    batches = _batches(6)
    a, b = _vit(), _vit()
    opt_a = MicroAdam([{"params": a.parameters(), "sparse": False}], lr=1e-3, weight_decay=0.05)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.05, foreach=False)
    _train(a, opt_a, batches)
    _train(b, opt_b, batches)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_log_stats_and_untouched_dense_group():
    model = _vit()
    start = copy.deepcopy(model)
    opt = MicroAdam(param_groups(model), lr=1e-2, density=0.02)
    _train(model, opt, _batches(2))
    stats = opt.log_stats()
    assert stats["density"] == 0.02
    assert 0 < stats["touched_frac"] <= 2 * 0.02 + 0.01  # two sparse gradients in the window
    assert stats["elr"] > 0 and stats["elr_dense"] > 0
    moved = sum(
        int((p != q).sum())
        for (_, p), q in zip(model.named_parameters(), start.parameters(), strict=True)
        if any(p is r for r in opt.param_groups[0]["params"])
    )
    assert moved > 0


@pytest.mark.parametrize(
    "bad",
    [{"density": 0.0}, {"window": 0}, {"block_size": 40000}, {"quant_bucket_size": 0}],
)
def test_bad_hyperparameters_are_value_errors(bad):
    with pytest.raises(ValueError):
        MicroAdam([nn.Parameter(torch.zeros(4))], **bad)


def _expected_bytes(model: nn.Module, density: float, window: int, block: int, q: int) -> int:
    """The docstring's formula, tensor by tensor."""
    sparse, dense = param_groups(model)
    total = 8 * sum(p.numel() for p in dense["params"])
    for p in sparse["params"]:
        d = p.numel()
        k = BlockLayout.build(d, block, density).k
        total += math.ceil(d / 2) + 4 * math.ceil(d / q) + 4 * window * k
    return total


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_state_bytes_follow_the_formula(name):
    """After one step on resnet18 and a ViT: `state_bytes()` equals the per-tensor formula
    exactly, and the sparse part is within 2% of 0.5 S + 4 m k S + 4 S / q."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    density, window, q = 0.01, 10, 64
    opt = optimizers.create("microadam", model, density=density, window=window)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state_bytes() == _expected_bytes(model, density, window, 32768, q)
    sparse, dense = param_groups(model)
    s = sum(p.numel() for p in sparse["params"])
    approx = 0.5 * s + 4 * window * density * s + 4 * s / q
    measured_sparse = opt.state_bytes() - 8 * sum(p.numel() for p in dense["params"])
    assert abs(measured_sparse - approx) / approx < 0.02
