"""Fused backward: each parameter is updated inside backward, as soon as its gradient is ready,
and that gradient is freed at once, so the full set of gradients never exists at one time.

    fused = FusedBackward(optimizer)
    for x, y in batches:
        fused.backward(loss_fn(model(x), y))   # no optimizer.step(), no zero_grad()
        scheduler.step()

Peak memory drops by up to the size of the gradients (minus the largest one); the results equal
`loss.backward(); optimizer.step()` for optimizers whose update of one parameter reads that
parameter's gradient alone: NanoAdam with a gradient-free criterion (small_weights,
large_weights, random; its mask refresh reads no gradient) and torch's Adam, AdamW and SGD
(including clbench's baselines, which subclass them). NanoAdam's "large_grads" criterion needs
every gradient of a tensor at a refresh before any update and is refused, as are optimizers that
do not declare support (a class attribute ``supports_fused_backward = True``).

Limits, as for any per-parameter update inside backward: no gradient clipping by global norm,
no gradient accumulation over several backward calls (gradients left from an earlier backward
are discarded), no parameter used twice in one graph (tied weights: autograd reports the
in-place change), and no DistributedDataParallel (its all-reduce runs on whole buckets).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_PER_PARAMETER = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


class FusedBackwardError(ValueError):
    """The optimizer cannot update parameters one at a time inside backward."""


class FusedBackward:
    """Hooks `optimizer`'s update onto every parameter's gradient accumulation (see the module
    docstring). The hooks act only inside `backward`; `remove()` takes them off."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._update = _per_parameter_update(optimizer)
        self._active = False
        self._handles = [
            p.register_post_accumulate_grad_hook(self._hook)
            for group in optimizer.param_groups
            for p in group["params"]
            if p.requires_grad
        ]

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """`loss.backward(**kwargs)` with the optimizer step done parameter by parameter."""
        self.optimizer.zero_grad(set_to_none=True)
        begin = getattr(self.optimizer, "fused_begin", None)
        if begin is not None:
            begin()
        self._active = True
        try:
            loss.backward(**kwargs)
        finally:
            self._active = False
        # Every gradient is spent and freed, so this step updates nothing; it runs the step's
        # bookkeeping (step hooks, the count LR schedulers check) as after a usual backward.
        self.optimizer.step()

    def _hook(self, param: torch.Tensor) -> None:
        if self._active:
            self._update(param)
            param.grad = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _per_parameter_update(optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
    own = getattr(optimizer, "fused_update", None)
    if own is not None:
        check = getattr(optimizer, "fused_check", None)
        if check is not None:
            check()
        return own
    if isinstance(optimizer, _PER_PARAMETER) or getattr(
        optimizer, "supports_fused_backward", False
    ):
        # While backward runs, only the parameter at hand has a gradient (the others are freed
        # or not computed yet), and these optimizers skip parameters without one.
        return lambda _param: optimizer.step()
    raise FusedBackwardError(
        f"{type(optimizer).__name__} cannot update parameters one at a time inside backward; "
        "fused backward supports NanoAdam (gradient-free criteria), Adam, AdamW and SGD"
    )
