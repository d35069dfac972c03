"""NanoAdam: AdamW on the small-weight entries of each parameter tensor only.

Each parameter tensor of a sparse group is cut into chunks; in every chunk only the
ceil(density x chunk) entries chosen by the criterion (smallest |weight| by default) are updated,
with Adam moments kept for those entries alone. Every other entry stays bit-for-bit unchanged.
Groups marked ``sparse=False`` (heads, normalisation layers: see `param_groups`) get plain AdamW.
See docs/nanoadam.md for the choices the paper leaves open.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _cpu_kernels
from ._nanoadam_functional import (
    AdamHyper,
    FlatLayout,
    dense_adamw,
    effective_lr_sum,
    fused_adamw_applies,
    sparse_adamw_flat,
    sparse_adamw_reference,
    sparse_adamw_shared,
)
from ._selection import (
    CRITERIA,
    chunk_layout,
    offset_dtype,
    select_offsets,
    selection_source,
)
from .registry import OptimizerSpec, register

ON_REFRESH = ("carry", "reset")
BACKENDS = ("auto", "torch", "reference", "triton", "cpu")


@dataclass
class _GroupRuntime:
    """What a group carries between steps besides the per-parameter state."""

    step: int = 0  # steps this group has taken
    bias_step: int = 0  # t of the bias corrections; restarts at a refresh with "reset"
    density: float | None = None  # density of the current mask
    flat: FlatLayout | None = None
    tables: _cpu_kernels.Tables | None = None  # the layout as the CPU kernels read it
    offsets: torch.Tensor | None = None  # int16 offsets of all selected entries, tensor by tensor
    exp_avg: torch.Tensor | None = None
    exp_avg_sq: torch.Tensor | None = None
    tensor_bases: torch.Tensor | None = None  # start of each tensor in the tracking bitmask
    updated_bits: torch.Tensor | None = None  # one bit per entry: ever selected
    updated_counts: torch.Tensor | None = None  # per tensor: entries ever selected
    last: AdamHyper | None = None  # hyperparameters of the last step (for the effective LR)
    shared: _SharedStorage | None = None  # the flat buffer the group's parameters live in
    triton: Any = None  # the Triton step's address tables (`_nanoadam_triton.Addresses`)
    # fused backward's Triton step, tensor by tensor: one-tensor layouts (by layout) and address
    # tables (by parameter index)
    single_flat: dict = field(default_factory=dict)
    single_addresses: dict = field(default_factory=dict)
    # dense groups: which parameters had a gradient, those parameters, their moments, whether
    # torch's fused AdamW applies and the CPU kernel's address tables, kept while the same
    # parameters have gradients (their state tensors do not change meanwhile)
    dense: tuple[tuple[bool, ...], list, list, list, bool, Any] | None = None


_ALIGN = 16  # entries: each parameter starts 64-byte aligned (fp32) inside the shared buffer


@dataclass
class _SharedStorage:
    """One flat buffer holding every parameter of a sparse group; parameter i is the view
    `buffer[starts[i] : starts[i] + numel]` (entries between parameters are padding)."""

    buffer: torch.Tensor
    starts: list[int]
    pointers: list[int]  # data_ptr of each parameter while it still lives in the buffer
    addresses: array  # the same, as the CPU kernels take them

    @classmethod
    def adopt(cls, params: list[torch.Tensor]) -> _SharedStorage | None:
        """Move the parameters' storage into one new buffer (values copied, identities, shapes
        and autograd untouched), or None when they cannot share one: mixed devices or dtypes,
        non-contiguous (e.g. channels-last) tensors, views of or storage shared with other
        tensors, sparse or quantized layouts."""
        if not params:
            return None
        device, dtype = params[0].device, params[0].dtype
        for p in params:
            if (
                p.device != device
                or p.dtype != dtype
                or p.layout != torch.strided
                or p.is_quantized
                or p.device.type == "meta"
                or not p.is_contiguous()
                or p._base is not None
                or p.storage_offset() != 0
                or p.untyped_storage().nbytes() != p.numel() * p.element_size()
            ):
                return None
        starts, total = [], 0
        for p in params:
            starts.append(total)
            total += -(-p.numel() // _ALIGN) * _ALIGN
        buffer = torch.zeros(total, dtype=dtype, device=device)
        with torch.no_grad():
            for p, a in zip(params, starts, strict=True):
                view = buffer[a : a + p.numel()].view_as(p)
                view.copy_(p)
                p.data = view
        pointers = [p.data_ptr() for p in params]
        return cls(buffer, starts, pointers, array("q", pointers))

    def holds(self, params: list[torch.Tensor]) -> bool:
        """Whether every parameter still lives in the buffer (`model.to(...)`, `p.data = ...`
        or loading a state dict with `assign=True` move them out)."""
        return all(p.data_ptr() == q for p, q in zip(params, self.pointers, strict=True))


def _carry_moments(
    old_index: torch.Tensor, new_index: torch.Tensor, *states: torch.Tensor
) -> list[torch.Tensor]:
    """States at `new_index`, taken from `old_index` where an entry stays, zero where it is new.
    Both index lists are strictly increasing, so one searchsorted matches them."""
    if old_index.numel() == 0:
        return [torch.zeros(new_index.shape, dtype=s.dtype, device=s.device) for s in states]
    pos = torch.searchsorted(old_index, new_index).clamp_(max=old_index.numel() - 1)
    stays = old_index[pos] == new_index
    return [
        torch.where(stays, s[pos], torch.zeros((), dtype=s.dtype, device=s.device)) for s in states
    ]


def _mark_updated(rt: _GroupRuntime, global_index: torch.Tensor, flat: FlatLayout) -> None:
    """Set the tracking bits of the selected entries and count the newly set ones per tensor."""
    byte = global_index >> 3
    bit = torch.ones(byte.shape, dtype=torch.uint8, device=byte.device) << (global_index & 7).to(
        torch.uint8
    )
    fresh = (rt.updated_bits[byte] & bit) == 0
    # Fresh entries sharing a byte have different bits, so their sum is their bitwise or.
    rt.updated_bits.index_put_((byte[fresh],), bit[fresh], accumulate=True)
    rt.updated_counts += torch.bincount(flat.entry_tensor()[fresh], minlength=len(flat.layouts))


class NanoAdam(torch.optim.Optimizer):
    """AdamW restricted, in each parameter tensor, to the entries picked by `criterion`.

    Selection is per tensor, in chunks of `chunk_size` entries of the flattened tensor (memory
    order): ceil(density x chunk length) entries per chunk, at least one, stored as int16 offsets
    inside the chunk (`chunk_size=None`: one chunk per tensor, int32 offsets). The mask is
    refreshed every `mask_interval` steps (None: computed once) and whenever the density changes;
    with `final_density` the density moves linearly from `density` to `final_density`, reaching
    it at the last of `total_steps` steps, re-evaluated every `density_interval` steps (default:
    with the mask refreshes). Criteria: "small_weights" (the paper's), "large_weights", "random"
    (seeded by `seed`), "large_grads" (the gradient at the refresh step).

    Moments m, v exist only for selected entries, stored in `state_dtype`, computed in fp32. At a
    refresh, `on_refresh="carry"` keeps m, v of entries that stay selected and starts new ones at
    zero, with bias corrections counted from the optimizer's first step; "reset" zeroes all
    moments and restarts the bias corrections. Decoupled weight decay touches updated entries
    only. Param groups with ``sparse=False`` are updated with plain AdamW (fp32 moments).

    With `flatten=True` (default; a param-group option) the parameters of a sparse group are moved
    at construction into one flat buffer owned by the optimizer (`p.data` becomes a view of it;
    same Parameter objects, names, shapes and values, gradients untouched), so the parameter
    update is one scatter over the buffer rather than one per tensor. Groups with mixed devices
    or dtypes, non-contiguous (channels-last) parameters or parameters sharing storage with other
    tensors keep their storage; so does a group whose parameters later leave the buffer.

    Memory (`state_bytes()`): 6 bytes per selected entry (bf16 m, v and int16 offset) + 24 bytes
    per sparse tensor (index tables) + 8 bytes per entry of dense groups; i.e. 6kS for density k
    over S sparse entries. The tracking bitmask behind `updated_fraction()` (1 bit per sparse
    entry) is instrumentation and counted only by `state_bytes(include_tracking=True)`.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        density: float = 0.01,
        final_density: float | None = None,
        density_interval: int | None = None,
        total_steps: int | None = None,
        mask_interval: int | None = 100,
        criterion: str = "small_weights",
        on_refresh: str = "carry",
        state_dtype: torch.dtype = torch.bfloat16,
        chunk_size: int | None = 32768,
        seed: int = 0,
        flatten: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            density=density,
            final_density=final_density,
            density_interval=density_interval,
            total_steps=total_steps,
            mask_interval=mask_interval,
            criterion=criterion,
            on_refresh=on_refresh,
            state_dtype=state_dtype,
            chunk_size=chunk_size,
            flatten=flatten,
            sparse=True,
        )
        self.seed = seed
        # "auto": the compiled kernels on the CPU (`_cpu_kernels`), Triton on CUDA, else the
        # torch path; or one of them by name: "cpu", "triton", "torch" (flat buffers),
        # "reference" (per tensor).
        self.backend = "auto"
        self._runtime: list[_GroupRuntime] = []
        self._generator: torch.Generator | None = None
        super().__init__(params, defaults)

    # -- configuration -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate(group)
        rt = _GroupRuntime()
        if group["sparse"] and group["flatten"]:
            rt.shared = _SharedStorage.adopt(group["params"])
        self._runtime.append(rt)

    def _generator_for(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, rt in zip(self.param_groups, self._runtime, strict=True):
            if group["sparse"]:
                self._sparse_step(group, rt)
            else:
                self._dense_step(group, rt)
        return loss

    def _hyper(self, group: dict[str, Any], bias_step: int) -> AdamHyper:
        beta1, beta2 = group["betas"]
        return AdamHyper(
            float(group["lr"]), beta1, beta2, group["eps"], group["weight_decay"], bias_step
        )

    def _dense_step(self, group: dict[str, Any], rt: _GroupRuntime) -> None:
        grads = [p.grad for p in group["params"]]
        if any(g is not None and g.is_sparse for g in grads):
            raise RuntimeError("NanoAdam does not support sparse gradients")
        # Which parameters have a gradient: in continual learning, the heads of the other tasks
        # have none, the same ones at every step of a task.
        key = tuple(g is not None for g in grads)
        if rt.dense is not None and rt.dense[0] == key:
            _, params, exp_avgs, exp_avg_sqs, fused, tables = rt.dense  # as at the last step
            grads = [g for g in grads if g is not None]
        else:
            params, exp_avgs, exp_avg_sqs, live = [], [], [], []
            for p, g in zip(group["params"], grads, strict=True):
                if g is None:
                    continue
                s = self._dense_state(p)
                params.append(p)
                live.append(g)
                exp_avgs.append(s["exp_avg"])
                exp_avg_sqs.append(s["exp_avg_sq"])
            if not params:
                return
            fused = fused_adamw_applies(params, live)
            tables = None
            if self._cpu_kernels_for(params[0].device) and _cpu_kernels.DenseTables.eligible(
                params + exp_avgs + exp_avg_sqs
            ):
                tables = _cpu_kernels.DenseTables(params, self.state)
                exp_avgs = [self.state[p]["exp_avg"] for p in params]
                exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            rt.dense = (key, params, exp_avgs, exp_avg_sqs, fused, tables)
            grads = live
        h = self._begin_step(group, rt)
        if (
            tables is not None
            and self._cpu_kernels_for(params[0].device)
            and tables.holds(params, self.state)
            and _cpu_kernels.dense(tables, grads, h)
        ):
            return
        dense_adamw(params, grads, exp_avgs, exp_avg_sqs, h, fused)

    def _dense_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """The fp32 moments of a parameter of a dense group, created at its first step."""
        s = self.state[p]
        if not s:
            s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return s

    def _begin_step(self, group: dict[str, Any], rt: _GroupRuntime) -> AdamHyper:
        """Count a new step of `group` (a sparse group first refreshes its mask when due) and
        return its hyperparameters."""
        if group["sparse"]:
            density = self._scheduled_density(group, rt)
            interval = group["mask_interval"]
            due = interval and rt.step % interval == 0
            if rt.offsets is None or density != rt.density or due:
                self._refresh(group, rt, density)
            rt.step += 1
            rt.bias_step += 1
        else:
            rt.step += 1
            rt.bias_step = rt.step
        rt.last = self._hyper(group, rt.bias_step)
        return rt.last

    def _sparse_step(self, group: dict[str, Any], rt: _GroupRuntime) -> None:
        params = group["params"]
        grads = [p.grad for p in params]
        live = [g for g in grads if g is not None]
        if not live:
            return
        if any(g.is_sparse for g in live):
            raise RuntimeError("NanoAdam does not support sparse gradients")
        h = self._begin_step(group, rt)
        complete = len(live) == len(grads)
        if rt.shared is not None and not rt.shared.holds(params):
            rt.shared = None  # the parameters moved out of the buffer: per-tensor paths
        if complete and (inputs := self._cpu_kernel_inputs(params, grads, rt)) is not None:
            p_addr, g_addr, _keep = inputs
            _cpu_kernels.step(p_addr, g_addr, rt.tables, rt.offsets, rt.exp_avg, rt.exp_avg_sq, h)
            return
        uniform = complete and len({g.dtype for g in live}) == 1
        if uniform and rt.shared is None:
            uniform = len({p.dtype for p in params}) == 1
        if not uniform or self.backend == "reference":
            index = [i for i, g in enumerate(grads) if g is not None]
            views = [self.state[params[i]] for i in index]
            sparse_adamw_reference(
                [params[i] for i in index],
                [grads[i] for i in index],
                [s["offsets"] for s in views],
                [s["exp_avg"] for s in views],
                [s["exp_avg_sq"] for s in views],
                [rt.flat.layouts[i] for i in index],
                h,
            )
        elif self._use_triton(params, grads):
            from ._nanoadam_triton import Addresses, sparse_adamw_triton

            if rt.triton is None:
                rt.triton = Addresses()
            sparse_adamw_triton(
                params, grads, rt.offsets, rt.exp_avg, rt.exp_avg_sq, rt.flat, h, rt.triton
            )
        elif rt.shared is not None:
            # Rebuilt every step (a few microseconds) rather than kept: a persistent table
            # would be optimizer state (8 bytes per tensor) that `state_bytes` does not count.
            bases = torch.tensor(rt.shared.starts, dtype=torch.int64, device=rt.offsets.device)
            sparse_adamw_shared(
                rt.shared.buffer,
                bases,
                params,
                grads,
                rt.offsets,
                rt.exp_avg,
                rt.exp_avg_sq,
                rt.flat,
                h,
            )
        else:
            sparse_adamw_flat(params, grads, rt.offsets, rt.exp_avg, rt.exp_avg_sq, rt.flat, h)

    def _cpu_kernel_inputs(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        rt: _GroupRuntime,
        whole_group: bool = True,
    ) -> tuple[Any, Any, list[torch.Tensor]] | None:
        """`_cpu_kernels.flat_inputs` when this step goes through the compiled CPU kernels
        (backend "cpu", or "auto" with fp32 CPU tensors and kernels that built here), else
        None. `whole_group`: `params` are all the group's parameters (not one of them)."""
        if self.backend not in ("auto", "cpu"):
            return None
        inputs = None
        if rt.exp_avg.dtype in (torch.float32, torch.bfloat16) and rt.flat.chunk < 2**31:
            shared = rt.shared
            if (
                whole_group
                and shared is not None
                and shared.buffer.is_cpu
                and shared.buffer.dtype == torch.float32
            ):
                # contiguous fp32 CPU parameters at known addresses; their gradients share
                # their device and dtype (torch enforces it)
                inputs = (shared.addresses, *_cpu_kernels.grad_inputs(params, grads))
            else:
                inputs = _cpu_kernels.flat_inputs(params, grads)
        if self.backend == "cpu":
            if inputs is None:
                raise RuntimeError(
                    "the CPU kernels need fp32 CPU parameters and gradients, fp32 or bf16 moments"
                )
            if not _cpu_kernels.available():
                raise RuntimeError("the CPU kernels could not be built (see the warning)")
        elif inputs is not None and not _cpu_kernels.available():
            return None
        return inputs

    def _use_triton(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
        if self.backend == "torch":
            return False
        if self.backend == "auto" and not params[0].is_cuda:
            return False
        try:
            from ._nanoadam_triton import supports
        except ImportError:
            if self.backend == "triton":
                raise
            return False
        ok = supports(params[0].dtype, grads[0].dtype)  # uniform dtypes: checked by the caller
        if self.backend == "triton" and not ok:
            raise RuntimeError("the Triton path takes fp32, fp16 or bf16 parameters and gradients")
        return ok

    # -- fused backward (optimizers.FusedBackward) ------------------------------------------------
    def fused_check(self) -> None:
        """Refuse fused backward where a refresh needs every gradient of a tensor first."""
        for group in self.param_groups:
            if group["sparse"] and group["criterion"] == "large_grads":
                from .fused_backward import FusedBackwardError

                raise FusedBackwardError(
                    "NanoAdam's 'large_grads' criterion reads whole gradients at a refresh; "
                    "use small_weights, large_weights or random with fused backward"
                )

    def fused_begin(self) -> None:
        """A new step starts: each group begins it at its first parameter's gradient."""
        self._fused_owner = {
            p: (g, i)
            for g, group in enumerate(self.param_groups)
            for i, p in enumerate(group["params"])
        }
        self._fused_started = [False] * len(self.param_groups)

    @torch.no_grad()
    def fused_update(self, param: torch.Tensor) -> None:
        """`step()` restricted to `param`, with `param.grad` ready (called inside backward)."""
        g, i = self._fused_owner[param]
        group, rt = self.param_groups[g], self._runtime[g]
        grad = param.grad
        if grad is None:
            return
        if grad.is_sparse:
            raise RuntimeError("NanoAdam does not support sparse gradients")
        if not self._fused_started[g]:
            self._fused_started[g] = True
            self._begin_step(group, rt)
        # `param.data`: an alias with its own version counter, so writing it does not mark the
        # other parameters of a shared buffer as modified for autograd.
        data = param.data
        if group["sparse"]:
            s = self.state[param]
            inputs = self._cpu_kernel_inputs([data], [grad], rt, whole_group=False)
            if inputs is not None:
                p_addr, g_addr, _keep = inputs
                tables = rt.tables.single(i)
                _cpu_kernels.step(
                    p_addr, g_addr, tables, s["offsets"], s["exp_avg"], s["exp_avg_sq"], rt.last
                )
                return
            if self._use_triton([data], [grad]):
                self._triton_one(rt, i, data, grad, s)
                return
            sparse_adamw_reference(
                [data],
                [grad],
                [s["offsets"]],
                [s["exp_avg"]],
                [s["exp_avg_sq"]],
                [rt.flat.layouts[i]],
                rt.last,
            )
        else:
            s = self._dense_state(param)
            m, v = s["exp_avg"], s["exp_avg_sq"]
            if not (
                self._cpu_kernels_for(data.device)
                and _cpu_kernels.DenseTables.eligible([data, grad, m, v])
                and _cpu_kernels.dense_one(data, grad, m, v, rt.last)
            ):
                dense_adamw([data], [grad], [m], [v], rt.last)

    @staticmethod
    def _triton_one(
        rt: _GroupRuntime, i: int, data: torch.Tensor, grad: torch.Tensor, s: dict
    ) -> None:
        """The Triton step on parameter i of a group alone (fused backward): one launch, with
        its one-tensor layout and address tables kept between steps."""
        from ._nanoadam_triton import Addresses, sparse_adamw_triton

        layout = rt.flat.layouts[i]
        flat = rt.single_flat.get(layout)
        if flat is None:
            flat = rt.single_flat[layout] = FlatLayout.build([layout], data.device)
        addresses = rt.single_addresses.setdefault(i, Addresses())
        sparse_adamw_triton(
            [data], [grad], s["offsets"], s["exp_avg"], s["exp_avg_sq"], flat, rt.last, addresses
        )

    # -- masks -----------------------------------------------------------------------------------
    def _scheduled_density(self, group: dict[str, Any], rt: _GroupRuntime) -> float:
        start, final = group["density"], group["final_density"]
        if final is None:
            return start
        total = group["total_steps"]
        every = group["density_interval"] or group["mask_interval"]
        t = rt.step
        if rt.density is not None and t % every != 0 and t != total - 1:
            return rt.density
        return start + (final - start) * min(1.0, t / max(1, total - 1))

    def _refresh(self, group: dict[str, Any], rt: _GroupRuntime, density: float) -> None:
        """Pick the entries to update from now on and move the moments onto them."""
        params = group["params"]
        device = params[0].device
        layouts = [chunk_layout(p.numel(), group["chunk_size"], density) for p in params]
        dtype = offset_dtype(group["chunk_size"], [p.numel() for p in params])
        generator = self._generator_for(device) if group["criterion"] == "random" else None
        sources, score, largest = [], torch.abs, False
        for p in params:
            source, score, largest = selection_source(group["criterion"], p, p.grad, generator)
            sources.append(source)
        tables = _cpu_kernels.Tables(layouts)
        if self._select_on_cpu_kernels(sources, score, layouts):
            offsets = _cpu_kernels.select(sources, tables, largest, dtype)
        else:
            offsets = select_offsets(sources, layouts, score, largest, dtype)
        flat = FlatLayout.build(layouts, device)
        if rt.tensor_bases is None:
            self._init_tracking(rt, params)
        kernels = self._cpu_kernels_for(device)
        new_index = None
        state_dtype = group["state_dtype"]
        if group["on_refresh"] == "carry" and rt.offsets is not None:
            if (
                kernels
                and rt.flat.layouts == layouts
                and rt.offsets.dtype == offsets.dtype
                and rt.exp_avg.element_size() in (2, 4)
            ):
                exp_avg, exp_avg_sq = _cpu_kernels.carry(
                    tables, rt.offsets, offsets, rt.exp_avg, rt.exp_avg_sq
                )
            else:
                new_index = flat.global_indices(offsets, rt.tensor_bases)
                old_index = rt.flat.global_indices(rt.offsets, rt.tensor_bases)
                exp_avg, exp_avg_sq = _carry_moments(
                    old_index, new_index, rt.exp_avg, rt.exp_avg_sq
                )
        else:
            exp_avg = torch.zeros(offsets.shape, dtype=state_dtype, device=device)
            exp_avg_sq = torch.zeros(offsets.shape, dtype=state_dtype, device=device)
            rt.bias_step = 0
        if kernels:
            _cpu_kernels.mark(tables, offsets, rt.tensor_bases, rt.updated_bits, rt.updated_counts)
        else:
            if new_index is None:
                new_index = flat.global_indices(offsets, rt.tensor_bases)
            _mark_updated(rt, new_index, flat)
        rt.flat, rt.tables, rt.density = flat, tables, density
        rt.offsets, rt.exp_avg, rt.exp_avg_sq = offsets, exp_avg, exp_avg_sq
        self._expose_state(group, rt)

    def _cpu_kernels_for(self, device: torch.device) -> bool:
        """Whether tensors on `device` go through the compiled CPU kernels (backends "auto"
        and "cpu", kernels built here); each caller adds what its kernel needs."""
        return self.backend in ("auto", "cpu") and device.type == "cpu" and _cpu_kernels.available()

    def _select_on_cpu_kernels(
        self, sources: list[torch.Tensor], score: Any, layouts: list[Any]
    ) -> bool:
        """Whether the selection goes through the compiled CPU kernel (|x| scores of fp32 CPU
        tensors; backends "auto" and "cpu")."""
        return (
            score is torch.abs
            and _cpu_kernels.usable(sources)
            and max((lay.chunk for lay in layouts), default=0) <= _cpu_kernels.MAX_SELECT_CHUNK
            and self._cpu_kernels_for(sources[0].device)
        )

    @staticmethod
    def _init_tracking(rt: _GroupRuntime, params: list[torch.Tensor]) -> None:
        bases, total = [], 0
        for p in params:
            bases.append(total)
            total += -(-p.numel() // 8) * 8  # each tensor starts on a byte
        device = params[0].device
        rt.tensor_bases = torch.tensor(bases, dtype=torch.int64, device=device)
        rt.updated_bits = torch.zeros(total // 8, dtype=torch.uint8, device=device)
        rt.updated_counts = torch.zeros(len(params), dtype=torch.int64, device=device)

    def _expose_state(self, group: dict[str, Any], rt: _GroupRuntime) -> None:
        """Per-parameter views of the flat buffers, so `state` and `state_dict` look as usual."""
        for p, (s, e) in zip(group["params"], rt.flat.segments, strict=True):
            self.state[p] = {
                "offsets": rt.offsets[s:e],
                "exp_avg": rt.exp_avg[s:e],
                "exp_avg_sq": rt.exp_avg_sq[s:e],
            }

    # -- reporting -------------------------------------------------------------------------------
    @property
    def density(self) -> float:
        """Density of the current mask of the first sparse group (its start value before the
        first step)."""
        for group, rt in zip(self.param_groups, self._runtime, strict=True):
            if group["sparse"]:
                return rt.density if rt.density is not None else group["density"]
        return 1.0

    def state_bytes(self, include_tracking: bool = False) -> int:
        """Bytes of the optimizer state: 6 per selected entry with bf16 moments and int16
        offsets, 24 per sparse tensor, 8 per entry of dense groups (fp32 m, v). With
        `include_tracking`, also the 1-bit-per-entry "ever updated" bitmask."""
        total = 0
        for group, rt in zip(self.param_groups, self._runtime, strict=True):
            if group["sparse"]:
                if rt.offsets is None:
                    continue
                buffers = [rt.offsets, rt.exp_avg, rt.exp_avg_sq]
                if include_tracking:
                    buffers += [rt.tensor_bases, rt.updated_bits, rt.updated_counts]
                total += sum(b.numel() * b.element_size() for b in buffers) + rt.flat.nbytes()
            else:
                for p in group["params"]:
                    total += sum(
                        v.numel() * v.element_size()
                        for v in self.state.get(p, {}).values()
                        if torch.is_tensor(v)
                    )
        return total

    def updated_fraction(self, per_tensor: bool = False) -> float | list[float]:
        """Fraction of sparse-group entries updated (selected) at least once since creation;
        per tensor (aligned with the params of the sparse groups, in order) or overall."""
        fractions, updated, total = [], 0, 0
        for group, rt in zip(self.param_groups, self._runtime, strict=True):
            if not group["sparse"]:
                continue
            params = group["params"]
            counts = rt.updated_counts.tolist() if rt.updated_counts is not None else []
            counts += [0] * (len(params) - len(counts))
            for p, c in zip(params, counts, strict=True):
                fractions.append(c / p.numel() if p.numel() else 0.0)
                updated, total = updated + c, total + p.numel()
        if per_tensor:
            return fractions
        return updated / total if total else float("nan")

    def log_stats(self) -> dict[str, float]:
        """Cheap scalars for a training log: current density, fraction of the sparse entries
        selected now ("selected_frac") and ever ("updated_frac"), and the mean effective learning
        rate lr / (sqrt(v_hat) + eps) over the entries updated in the last step ("elr": sparse
        groups; "elr_dense": dense groups)."""
        sums = {"elr": [], "elr_dense": []}
        counts = {"elr": 0, "elr_dense": 0}
        selected, entries = 0, 0
        for group, rt in zip(self.param_groups, self._runtime, strict=True):
            if group["sparse"]:
                entries += sum(p.numel() for p in group["params"])
                if rt.exp_avg_sq is None or rt.last is None:
                    continue
                selected += rt.exp_avg_sq.numel()
                sums["elr"].append(effective_lr_sum(rt.exp_avg_sq, rt.last))
                counts["elr"] += rt.exp_avg_sq.numel()
            elif rt.last is not None:
                for p in group["params"]:
                    if "exp_avg_sq" in self.state.get(p, {}):
                        v = self.state[p]["exp_avg_sq"]
                        sums["elr_dense"].append(effective_lr_sum(v, rt.last))
                        counts["elr_dense"] += v.numel()
        stats = {
            "density": float(self.density),
            "selected_frac": selected / entries if entries else float("nan"),
            "updated_frac": float(self.updated_fraction()),
        }
        for key, parts in sums.items():
            total = sum(float(s) for s in parts)
            stats[key] = total / counts[key] if counts[key] else float("nan")
        return stats

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's layout (per-parameter offsets, exp_avg, exp_avg_sq) plus "nanoadam": per group
        step, bias step, current density and tracking; and the random criterion's generator."""
        sd = super().state_dict()
        sd["nanoadam"] = {
            "groups": [
                {
                    "step": rt.step,
                    "bias_step": rt.bias_step,
                    "density": rt.density,
                    "updated_bits": rt.updated_bits,
                    "updated_counts": rt.updated_counts,
                }
                for rt in self._runtime
            ],
            "generator": None if self._generator is None else self._generator.get_state(),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Exact inverse of `state_dict` (tensors keep their saved dtypes)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"])
            for s, g in zip(saved_groups, self.param_groups, strict=True)
        ):
            raise ValueError("the state dict's parameter groups do not match this optimizer's")
        by_id = {
            saved_id: p
            for s, g in zip(saved_groups, self.param_groups, strict=True)
            for saved_id, p in zip(s["params"], g["params"], strict=True)
        }
        self.param_groups = [
            {**s, "params": g["params"]}
            for s, g in zip(saved_groups, self.param_groups, strict=True)
        ]
        self.state = defaultdict(dict)
        for saved_id, values in state_dict["state"].items():
            p = by_id[saved_id]
            self.state[p] = {
                k: v.to(p.device) if torch.is_tensor(v) else v for k, v in values.items()
            }
        extra = state_dict["nanoadam"]
        previous, self._runtime = self._runtime, []
        for group, saved, old in zip(self.param_groups, extra["groups"], previous, strict=True):
            self._runtime.append(self._restore_runtime(group, saved, old.shared))
        self._generator = None
        if extra["generator"] is not None:
            device = self.param_groups[0]["params"][0].device
            self._generator_for(device).set_state(extra["generator"])

    def _restore_runtime(
        self, group: dict[str, Any], saved: dict[str, Any], shared: _SharedStorage | None
    ) -> _GroupRuntime:
        rt = _GroupRuntime(step=saved["step"], bias_step=saved["bias_step"], shared=shared)
        rt.density = saved["density"]
        params = group["params"]
        if group["sparse"] and saved["updated_bits"] is not None:
            self._init_tracking(rt, params)
            rt.updated_bits.copy_(saved["updated_bits"])
            rt.updated_counts.copy_(saved["updated_counts"])
        if group["sparse"] and rt.density is not None:
            device = params[0].device
            layouts = [chunk_layout(p.numel(), group["chunk_size"], rt.density) for p in params]
            rt.flat = FlatLayout.build(layouts, device)
            rt.tables = _cpu_kernels.Tables(layouts)
            rt.offsets = torch.cat([self.state[p]["offsets"] for p in params])
            rt.exp_avg = torch.cat([self.state[p]["exp_avg"] for p in params])
            rt.exp_avg_sq = torch.cat([self.state[p]["exp_avg_sq"] for p in params])
            self._expose_state(group, rt)
        if rt.step:
            rt.last = self._hyper(group, rt.bias_step)
        return rt


def _validate(group: dict[str, Any]) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"NanoAdam: {message}")

    beta1, beta2 = group["betas"]
    check(float(group["lr"]) >= 0, f"lr must be >= 0, got {group['lr']}")
    check(0 <= beta1 < 1 and 0 <= beta2 < 1, f"betas must lie in [0, 1), got {group['betas']}")
    check(group["eps"] >= 0, f"eps must be >= 0, got {group['eps']}")
    check(group["weight_decay"] >= 0, f"weight_decay must be >= 0, got {group['weight_decay']}")
    check(0 < group["density"] <= 1, f"density must lie in (0, 1], got {group['density']}")
    final = group["final_density"]
    if final is not None:
        check(0 < final <= 1, f"final_density must lie in (0, 1], got {final}")
        check(group["total_steps"] is not None, "final_density needs total_steps")
        check(
            group["density_interval"] is not None or group["mask_interval"] is not None,
            "a density schedule with a static mask needs density_interval",
        )
    for key in ("density_interval", "total_steps", "mask_interval", "chunk_size"):
        value = group[key]
        check(value is None or (isinstance(value, int) and value >= 1), f"{key} must be >= 1")
    check(group["criterion"] in CRITERIA, f"criterion must be one of {', '.join(CRITERIA)}")
    check(group["on_refresh"] in ON_REFRESH, f"on_refresh must be one of {', '.join(ON_REFRESH)}")
    check(group["state_dtype"].is_floating_point, "state_dtype must be a floating dtype")


register(
    OptimizerSpec(
        name="nanoadam",
        factory=NanoAdam,
        description="AdamW on the smallest-|weight| entries of each tensor only (the paper's)",
        defaults={
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "density": 0.01,
            "final_density": None,
            "density_interval": None,
            "total_steps": None,
            "mask_interval": 100,
            "criterion": "small_weights",
            "on_refresh": "carry",
            "state_dtype": torch.bfloat16,
            "chunk_size": 32768,
            "seed": 0,
        },
        lr=1e-3,
        memory="6kS (bf16 m, v + int16 offsets); 8kS more with int64 indices",
        sparse=True,
    )
)
