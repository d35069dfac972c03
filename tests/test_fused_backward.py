"""Fused backward: the update of each parameter inside backward equals the usual step, and no
more than one gradient is alive at a time."""

from __future__ import annotations

import pytest
import torch
from _tiny import small_batches, small_vit
from torch import nn

import optimizers
from optimizers import FusedBackward, FusedBackwardError, MicroAdam, NanoAdam, param_groups


def _normal(model: nn.Module, opt: torch.optim.Optimizer, data) -> None:
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _fused(model: nn.Module, opt: torch.optim.Optimizer, data) -> list[int]:
    """Trains with fused backward; returns the most gradients alive at once in each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    alive: list[int] = []

    def count(_param: torch.Tensor) -> None:
        alive[-1] = max(alive[-1], sum(p.grad is not None for p in params))

    handles = [p.register_post_accumulate_grad_hook(count) for p in params]
    fused = FusedBackward(opt)
    for x, y in data:
        alive.append(0)
        fused.backward(nn.functional.cross_entropy(model(x), y))
    fused.remove()
    for h in handles:
        h.remove()
    return alive


def _build(name: str, model: nn.Module, **kwargs) -> torch.optim.Optimizer:
    if name == "nanoadam":
        return NanoAdam(param_groups(model), **kwargs)
    return optimizers.create(name, model, **kwargs)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("nanoadam", dict(lr=1e-2, density=0.05, mask_interval=3)),
        ("nanoadam", dict(lr=1e-2, density=0.05, mask_interval=3, criterion="random")),
        ("nanoadam", dict(lr=1e-2, density=0.05, mask_interval=None, weight_decay=0.1)),
        ("nanoadam", dict(lr=1e-2, density=0.2, mask_interval=2, flatten=False)),
        ("adamw", dict(lr=1e-3, weight_decay=0.05)),
        ("sgd", dict(lr=1e-2, momentum=0.9)),
    ],
)
def test_fused_backward_equals_the_usual_step(name, kwargs):
    data = small_batches(5)
    a, b = small_vit(), small_vit()
    opt_a, opt_b = _build(name, a, **kwargs), _build(name, b, **kwargs)
    _normal(a, opt_a, data)
    alive = _fused(b, opt_b, data)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-6, msg=n)
    # The counting hook runs first: it sees the gradient at hand and any other one alive.
    assert max(alive) <= 1
    assert all(p.grad is None for p in b.parameters())


def test_fused_backward_refuses_whole_gradient_criteria_and_unknown_optimizers():
    model = small_vit()
    with pytest.raises(FusedBackwardError, match="large_grads"):
        FusedBackward(NanoAdam(param_groups(model), criterion="large_grads"))
    with pytest.raises(FusedBackwardError, match="MicroAdam"):
        FusedBackward(MicroAdam(model.parameters()))


def test_fused_backward_hooks_act_only_inside_its_backward_and_can_be_removed():
    model = small_vit()
    opt = NanoAdam(param_groups(model), lr=1e-2, density=0.05)
    fused = FusedBackward(opt)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = small_batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()  # a plain backward: nothing moves
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert all(p.grad is not None for p in model.parameters())
    fused.remove()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())
