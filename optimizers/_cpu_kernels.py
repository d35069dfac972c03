"""NanoAdam's compiled CPU kernels (`_cpu_kernels.c`): built on first use, called via ctypes.

The C source is compiled once per source version and compiler into a shared library in
``$CLBENCH_KERNEL_DIR`` (default ``~/.cache/clbench/kernels``), with the C compiler named by
``$CC`` (default ``cc``) and OpenMP. Where no compiler works, `library()` returns None and NanoAdam
keeps its torch path, which is also the reference the kernels are tested against. The library
links the same OpenMP runtime as torch (libgomp), so `torch.set_num_threads` sets its threads too.

Only plain CPU data goes through these kernels: fp32 parameters, gradients and selection scores,
contiguous in memory order (checked by the callers), fp32 or bf16 moments.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from array import array
from pathlib import Path

import torch

from ._nanoadam_functional import AdamHyper
from ._selection import ChunkLayout, flat_like, memory_order_addresses

_SOURCE = Path(__file__).with_name("_cpu_kernels.c")


def _flags() -> list[str]:
    """-O3 and OpenMP, no contraction of a x b + c into a fused multiply-add except where the
    source asks for one (`fmaf`, as torch's vectorised lerp does), and hardware FMA where the
    CPU has it (the library is built on the machine that runs it)."""
    flags = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c11", "-ffp-contract=off"]
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    if platform.machine() in ("x86_64", "AMD64") and " fma " in cpuinfo:
        flags.append("-mfma")
    return flags


_FLAGS = _flags()

#: Longest chunk the selection kernel takes (its scratch is 24 bytes per entry of the longest
#: chunk, per thread); longer ones (`chunk_size=None` on large tensors) select with torch.
MAX_SELECT_CHUNK = 1 << 20

_library: ctypes.CDLL | None = None
_tried = False

_ptr, _i64, _int, _f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
# (function, argument types): every function returns 0, or 1 when out of memory
_SIGNATURES = {
    "nanoadam_moments": [_i64, *[_ptr] * 6, _int, _ptr, _ptr, _int, _ptr, _ptr, _f64, _f64],
    "nanoadam_apply": [_i64, *[_ptr] * 6, _int, _ptr, _ptr, *[_f64] * 5],
    "nanoadam_select": [_i64, *[_ptr] * 5, _int, _ptr, _int],
    "nanoadam_carry": [_i64, *[_ptr] * 6, _int, *[_ptr] * 4, _int],
    "nanoadam_mark": [_i64, *[_ptr] * 5, _int, _ptr, _ptr, _ptr],
    "nanoadam_dense_moments": [_i64, *[_ptr] * 5, _f64, _f64],
    "nanoadam_dense_apply": [_i64, *[_ptr] * 5, *[_f64] * 5],
}


def kernel_dir() -> Path:
    configured = os.environ.get("CLBENCH_KERNEL_DIR")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "clbench" / "kernels"


def _compiler() -> str:
    return os.environ.get("CC", "cc")


def _build(target: Path) -> None:
    """Compile into a temporary file beside `target`, then rename it into place (atomic, so
    processes building at once never load a half-written library)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [_compiler(), *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them if needed; None (with one warning) if they cannot be
    built or loaded here."""
    global _library, _tried
    if _tried:
        return _library
    _tried = True
    key = hashlib.sha256(
        _SOURCE.read_bytes() + " ".join([_compiler(), *_FLAGS, sys.platform]).encode()
    ).hexdigest()[:16]
    target = kernel_dir() / f"nanoadam-{key}.so"
    try:
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        warnings.warn(
            f"NanoAdam: the CPU kernels could not be built ({detail.strip().splitlines()[-1]}); "
            "using the slower torch path (install a C compiler with OpenMP, or set CC)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    for name, argtypes in _SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    _library = lib
    return lib


def available() -> bool:
    return library() is not None


class Tables:
    """The per-tensor layout tables the kernels read (numel, chunk, k, k_rest), kept as Python
    arrays (not optimizer state: they are rebuilt from the layouts)."""

    def __init__(self, layouts: list[ChunkLayout]) -> None:
        self.layouts = layouts
        self.n = len(layouts)
        self.numel = array("q", [lay.numel for lay in layouts])
        self.chunk = array("q", [lay.chunk for lay in layouts])
        self.k = array("q", [lay.k for lay in layouts])
        self.k_rest = array("q", [lay.k_rest for lay in layouts])
        self._single: dict[int, Tables] = {}

    def pointers(self) -> list[int]:
        return [a.buffer_info()[0] for a in (self.numel, self.chunk, self.k, self.k_rest)]

    def single(self, i: int) -> Tables:
        """The tables of tensor i alone (fused backward updates one tensor at a time), built
        once per layout."""
        if i not in self._single:
            self._single[i] = Tables([self.layouts[i]])
        return self._single[i]


def _addresses(tensors: list[torch.Tensor]) -> array:
    return array("q", [t.data_ptr() for t in tensors])


def usable(tensors: list[torch.Tensor]) -> bool:
    """Whether these tensors can go through the kernels: fp32, on the CPU."""
    return all(t.is_cpu and t.dtype == torch.float32 for t in tensors)


def flat_inputs(
    params: list[torch.Tensor], grads: list[torch.Tensor]
) -> tuple[array, array, list[torch.Tensor]] | None:
    """The addresses of the memory-order data of fp32 CPU `params` and `grads` (see
    `_selection.flat_like`), and any reordered gradient copies, which must outlive the kernel
    call; None if a tensor is not fp32 on the CPU."""
    if not (usable(params) and usable(grads)):
        return None
    p_addr, g_addr, keep = memory_order_addresses(params, grads)
    return array("q", p_addr), array("q", g_addr), keep


def grad_inputs(
    params: list[torch.Tensor], grads: list[torch.Tensor]
) -> tuple[array, list[torch.Tensor]]:
    """`flat_inputs` for the gradients alone, of contiguous fp32 CPU `params` (a gradient has its
    parameter's device and dtype)."""
    g_addr, keep = array("q"), []
    for p, g in zip(params, grads, strict=True):
        if g.is_contiguous():
            g_addr.append(g.data_ptr())
        else:
            flat_g = flat_like(g, p)
            keep.append(flat_g)
            g_addr.append(flat_g.data_ptr())
    return g_addr, keep


def step(
    params: array,
    grads: array,
    tables: Tables,
    offsets: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    h: AdamHyper,
) -> None:
    """`sparse_adamw_reference` on the fp32 parameters and gradients at these addresses (see
    `flat_inputs`), equal to it bit for bit: one parallel pass gathers the gradients and
    updates the moments (`nanoadam_moments`), torch takes the square roots of the new v (with
    torch's own rounding, which is not always the correctly rounded one), and a second pass
    moves the parameters (`nanoadam_apply`)."""
    lib = library()
    assert lib is not None and exp_avg.dtype == exp_avg_sq.dtype
    assert len(params) == len(grads) == tables.n
    fp32 = exp_avg.dtype == torch.float32
    m = exp_avg if fp32 else torch.empty(exp_avg.shape, dtype=torch.float32)
    v = exp_avg_sq if fp32 else torch.empty(exp_avg.shape, dtype=torch.float32)
    layout = tables.pointers()
    _check(
        lib.nanoadam_moments(
            tables.n,
            grads.buffer_info()[0],
            *layout,
            offsets.data_ptr(),
            offsets.element_size(),
            exp_avg.data_ptr(),
            exp_avg_sq.data_ptr(),
            0 if fp32 else 1,
            m.data_ptr(),
            v.data_ptr(),
            h.beta1,
            h.beta2,
        )
    )
    root = torch.sqrt(v) if fp32 else v.sqrt_()
    _check(
        lib.nanoadam_apply(
            tables.n,
            params.buffer_info()[0],
            *layout,
            offsets.data_ptr(),
            offsets.element_size(),
            m.data_ptr(),
            root.data_ptr(),
            *_apply_hyper(h),
        )
    )


def _apply_hyper(h: AdamHyper) -> tuple[float, ...]:
    """The hyperparameters the parameter passes take, in their order."""
    return (h.lr, h.eps, h.weight_decay, h.step_size, h.bias_correction2_sqrt)


def _check(status: int) -> None:
    if status:
        raise MemoryError("NanoAdam CPU kernel: out of memory")


def select(
    sources: list[torch.Tensor], tables: Tables, largest: bool, dtype: torch.dtype
) -> torch.Tensor:
    """Offsets of the entries of smallest |x| (largest with `largest`) in every chunk of the
    flat fp32 `sources`, sorted inside chunks: `select_offsets` with the abs score."""
    lib = library()
    assert lib is not None
    total = sum(
        (n // c) * k + (kr if n % c else 0)
        for n, c, k, kr in zip(tables.numel, tables.chunk, tables.k, tables.k_rest, strict=True)
    )
    out = torch.empty(total, dtype=dtype)
    assert all(t.dim() == 1 and t.stride(0) == 1 for t in sources)
    s = _addresses(sources)
    _check(
        lib.nanoadam_select(
            tables.n,
            s.buffer_info()[0],
            *tables.pointers(),
            int(largest),
            out.data_ptr(),
            out.element_size(),
        )
    )
    return out


def carry(
    tables: Tables,
    old_offsets: torch.Tensor,
    new_offsets: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The moments at `new_offsets`, carried from `old_offsets` (the same layout) where an
    entry stays selected, zero where it is new: `nanoadam._carry_moments` in one pass."""
    lib = library()
    assert lib is not None and old_offsets.dtype == new_offsets.dtype
    assert exp_avg.element_size() in (2, 4) and exp_avg.dtype == exp_avg_sq.dtype
    m, v = torch.empty_like(exp_avg), torch.empty_like(exp_avg_sq)
    _check(
        lib.nanoadam_carry(
            tables.n,
            *tables.pointers(),
            old_offsets.data_ptr(),
            new_offsets.data_ptr(),
            new_offsets.element_size(),
            exp_avg.data_ptr(),
            exp_avg_sq.data_ptr(),
            m.data_ptr(),
            v.data_ptr(),
            exp_avg.element_size(),
        )
    )
    return m, v


def mark(
    tables: Tables,
    offsets: torch.Tensor,
    tensor_bits: torch.Tensor,
    bits: torch.Tensor,
    counts: torch.Tensor,
) -> None:
    """Set the tracking bit of every selected entry in `bits` (uint8; tensor t starts at bit
    `tensor_bits[t]`) and add the newly set ones per tensor to `counts` (int64)."""
    lib = library()
    assert lib is not None
    assert tensor_bits.dtype == counts.dtype == torch.int64 and bits.dtype == torch.uint8
    _check(
        lib.nanoadam_mark(
            tables.n,
            *tables.pointers(),
            offsets.data_ptr(),
            offsets.element_size(),
            tensor_bits.data_ptr(),
            bits.data_ptr(),
            counts.data_ptr(),
        )
    )


class DenseTables:
    """A dense group's contiguous fp32 CPU parameters as the dense kernels read them, and its
    moments moved into two flat fp32 buffers (`state[p]` holds views of them), so that torch
    takes the square roots of all v in one call. Kept between steps: these tensors stay put."""

    def __init__(self, params: list[torch.Tensor], state: dict) -> None:
        self.pointers = [p.data_ptr() for p in params]
        self.params = array("q", self.pointers)
        self.numel = array("q", [p.numel() for p in params])
        first, total = [], 0
        for p in params:
            first.append(total)
            total += p.numel()
        self.first = array("q", first)
        self.exp_avg = torch.empty(total, dtype=torch.float32)
        self.exp_avg_sq = torch.empty(total, dtype=torch.float32)
        for p, a in zip(params, first, strict=True):
            for key, flat in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                view = flat[a : a + p.numel()].view_as(p)
                view.copy_(state[p][key])
                state[p][key] = view

    @staticmethod
    def eligible(tensors: list[torch.Tensor]) -> bool:
        return usable(tensors) and all(t.is_contiguous() for t in tensors)

    def holds(self, params: list[torch.Tensor], state: dict) -> bool:
        """Whether the parameters are still where they were, and their moments still views of
        the flat buffers (`load_state_dict` replaces them)."""
        base = self.exp_avg.data_ptr()
        return all(p.data_ptr() == q for p, q in zip(params, self.pointers, strict=True)) and (
            not params or state[params[0]]["exp_avg"].data_ptr() == base
        )


def _dense_passes(
    params: array,
    grads: array,
    numel: array,
    first: array,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    h: AdamHyper,
) -> None:
    """The two passes of the dense step around torch's square root (see `dense`)."""
    lib = library()
    assert lib is not None
    n, numel_ptr, first_ptr = len(numel), numel.buffer_info()[0], first.buffer_info()[0]
    _check(
        lib.nanoadam_dense_moments(
            n,
            grads.buffer_info()[0],
            numel_ptr,
            first_ptr,
            exp_avg.data_ptr(),
            exp_avg_sq.data_ptr(),
            h.beta1,
            h.beta2,
        )
    )
    root = torch.sqrt(exp_avg_sq)
    _check(
        lib.nanoadam_dense_apply(
            n,
            params.buffer_info()[0],
            numel_ptr,
            first_ptr,
            exp_avg.data_ptr(),
            root.data_ptr(),
            *_apply_hyper(h),
        )
    )


def dense_one(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    h: AdamHyper,
) -> bool:
    """`dense` for one contiguous fp32 CPU tensor and its own moments (fused backward updates
    parameters one at a time): a call instead of the eight `_foreach` operations of the torch
    path, same results."""
    p_addr, g_addr = array("q", [param.data_ptr()]), array("q", [grad.data_ptr()])
    numel, first = array("q", [param.numel()]), array("q", [0])
    _dense_passes(p_addr, g_addr, numel, first, exp_avg, exp_avg_sq, h)
    return True


def dense(tables: DenseTables, grads: list[torch.Tensor], h: AdamHyper) -> bool:
    """AdamW over a dense group, equal bit for bit to torch's single-tensor AdamW: a parallel
    pass updates m and v, torch takes the square roots, a second pass moves the parameters.
    False, doing nothing, when a gradient is not contiguous."""
    assert len(grads) == len(tables.numel)
    g_addr = array("q")
    for g in grads:
        if not g.is_contiguous():
            return False
        g_addr.append(g.data_ptr())
    _dense_passes(
        tables.params, g_addr, tables.numel, tables.first, tables.exp_avg, tables.exp_avg_sq, h
    )
    return True
