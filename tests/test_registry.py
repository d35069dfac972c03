import pytest
import torch
from torch import nn

import optimizers
from optimizers import registry


def test_create_applies_defaults_and_lr():
    model = nn.Linear(3, 2)
    opt = optimizers.create("adamw", model, lr=5e-4)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["lr"] == 5e-4 and g["betas"] == (0.9, 0.999) for g in opt.param_groups)


def test_unsupported_hyperparameter_is_an_error_not_ignored():
    with pytest.raises(optimizers.OptimizerError, match="does not take density"):
        optimizers.create("adamw", nn.Linear(2, 2), density=0.1)


def test_unknown_name_suggests():
    with pytest.raises(optimizers.OptimizerError, match="did you mean adamw"):
        optimizers.get("adamx")


def test_adamw_state_bytes_counts_both_moments():
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 3))
    opt = optimizers.create("adamw", model, lr=1e-3)
    assert optimizers.state_bytes(opt) == 0
    model(torch.randn(4, 10)).sum().backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    n_tensors = len(list(model.parameters()))
    # exp_avg + exp_avg_sq in fp32, plus torch's 4-byte step counter per tensor
    assert optimizers.state_bytes(opt) == 8 * n + 4 * n_tensors


def test_third_party_optimizer_through_entry_point(monkeypatch):
    spec = optimizers.OptimizerSpec(
        name="mine", factory=torch.optim.SGD, description="test", defaults={"momentum": 0.0}
    )

    class EP:
        def load(self):
            return lambda: spec

    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [EP()])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert "mine" in optimizers.available()
    opt = optimizers.create("mine", nn.Linear(2, 2), lr=0.1)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1


def test_adamw_logs_the_effective_learning_rate():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = optimizers.create("adamw", model, lr=1e-2)
    assert all(v != v for v in opt.log_stats().values())  # nothing yet: NaN, not 0
    grads = [
        torch.full_like(p, 0.5) if i == 0 else torch.randn_like(p)
        for i, p in enumerate(model.parameters())
    ]
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g
    opt.step()
    # after one step v_hat = g^2, so each entry's effective LR is lr / (|g| + eps)
    sparse = [
        g
        for p, g in zip(model.parameters(), grads, strict=True)
        if any(p is q for q in opt.param_groups[0]["params"])
    ]
    expected = torch.cat([(1e-2 / (g.abs() + 1e-8)).flatten() for g in sparse]).mean()
    stats = opt.log_stats()
    assert stats["elr"] == pytest.approx(float(expected), rel=1e-5)
    dense = [
        g
        for p, g in zip(model.parameters(), grads, strict=True)
        if any(p is q for q in opt.param_groups[1]["params"])
    ]
    expected_dense = torch.cat([(1e-2 / (g.abs() + 1e-8)).flatten() for g in dense]).mean()
    assert stats["elr_dense"] == pytest.approx(float(expected_dense), rel=1e-5)
