"""NanoAdam's compiled CPU kernels against the torch path they replace: selection, step, carry,
tracking, the optimizer end to end, and the fallback when no compiler works."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from _tiny import native_batches as _batches
from _tiny import tiny_vit as _vit
from _tiny import train as _train

from optimizers import NanoAdam, _cpu_kernels, param_groups
from optimizers._nanoadam_functional import AdamHyper, FlatLayout, sparse_adamw_reference
from optimizers._selection import chunk_layout, chunk_offsets, offset_dtype
from optimizers.nanoadam import _carry_moments, _GroupRuntime, _mark_updated


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run with one and with two threads: the kernels split chunks over OpenMP threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _setup(sizes, chunk_size, density, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, generator=gen) for n in sizes]
    layouts = [chunk_layout(n, chunk_size, density) for n in sizes]
    return tensors, layouts, _cpu_kernels.Tables(layouts), offset_dtype(chunk_size, list(sizes))


SIZES = (5000, 1, 37, 70000, 32768 * 2 + 9)


def test_kernels_build_here():
    """The machines this project runs on have a C compiler: the fast path must be the one
    tested and timed, not a silent fallback."""
    assert _cpu_kernels.available()


@pytest.mark.parametrize("chunk_size", [32768, 1000, None])
@pytest.mark.parametrize("largest", [False, True])
def test_select_equals_torch_topk(threads, chunk_size, largest):
    """Bottom-k (top-k) of |x| per chunk, sorted inside chunks: the torch reference exactly
    (no ties in random data), with full chunks, short tails, 1-entry tensors, int16 and int32
    offsets."""
    tensors, layouts, tables, dtype = _setup(SIZES, chunk_size, 0.01)
    got = _cpu_kernels.select(tensors, tables, largest, dtype)
    pairs = zip(tensors, layouts, strict=True)
    want = torch.cat([chunk_offsets(t.abs(), lay, largest, dtype) for t, lay in pairs])
    assert got.dtype == dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("case", ["sample_too_high", "sample_too_low", "all_tied"])
def test_select_when_the_sample_misjudges_the_chunk(threads, case):
    """Long chunks first try a cut estimated from a strided sample (every 32nd entry of a
    chunk of 32768). Where the sample misjudges the chunk, the exact route takes over: the
    result is still the torch reference (ties: the lowest indices)."""
    n, chunk = 2 * 32768, 32768
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(n, generator=gen) + 1.0
    sampled = torch.zeros(n, dtype=torch.bool)
    sampled[::32] = True
    if case == "sample_too_high":  # the sampled entries are the largest: too many candidates
        x[sampled] += 10.0
    elif case == "sample_too_low":  # the sampled entries are the smallest: too few candidates
        x[sampled] -= 0.999
    else:
        x = torch.full((n,), 0.5)
    lay = chunk_layout(n, chunk, 0.01)
    got = _cpu_kernels.select([x], _cpu_kernels.Tables([lay]), False, torch.int16)
    if case == "all_tied":
        want = torch.arange(lay.k, dtype=torch.int16).repeat(2)
    else:
        want = chunk_offsets(x.abs(), lay, False, torch.int16)
    assert torch.equal(got, want)


def test_select_with_ties_keeps_the_lowest_indices(threads):
    """All-equal scores (zero-initialised weights): each chunk keeps its k first entries."""
    n, chunk = 3000, 1000
    lay = chunk_layout(n, chunk, 0.05)
    got = _cpu_kernels.select([torch.zeros(n)], _cpu_kernels.Tables([lay]), False, torch.int16)
    assert torch.equal(got, torch.arange(lay.k, dtype=torch.int16).repeat(3))


def test_select_keeps_exactly_the_smallest(threads):
    """Many ties around the cut (values rounded to a coarse grid): every kept score is at most
    every dropped one, k per chunk, offsets strictly increasing."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(4 * 4096, generator=gen) * 8).round() / 8
    lay = chunk_layout(x.numel(), 4096, 0.2)
    got = _cpu_kernels.select([x], _cpu_kernels.Tables([lay]), False, torch.int16).long()
    for c in range(4):
        off = got[c * lay.k : (c + 1) * lay.k]
        assert bool((off[1:] > off[:-1]).all())
        chunk = x[c * 4096 : (c + 1) * 4096].abs()
        kept = torch.zeros(4096, dtype=torch.bool)
        kept[off] = True
        assert chunk[kept].max() <= chunk[~kept].min()


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [1000, None])
def test_step_is_bit_identical_to_the_reference(threads, state_dtype, weight_decay, chunk_size):
    tensors, layouts, tables, dtype = _setup(SIZES, chunk_size, 0.05)
    offsets = _cpu_kernels.select(tensors, tables, False, dtype)
    flat = FlatLayout.build(layouts, torch.device("cpu"))
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(t.shape, generator=gen) * 1e-3 for t in tensors]
    m0 = (torch.randn(offsets.shape, generator=gen) * 1e-3).to(state_dtype)
    v0 = (torch.rand(offsets.shape, generator=gen) * 1e-6).to(state_dtype)
    a = [t.clone() for t in tensors]
    b = [t.clone() for t in tensors]
    ma, va, mb, vb = m0.clone(), v0.clone(), m0.clone(), v0.clone()
    for bias_step in (1, 2, 7):
        h = AdamHyper(1e-2, 0.9, 0.999, 1e-8, weight_decay, bias_step)
        seg = flat.segments
        sparse_adamw_reference(
            a,
            grads,
            [offsets[s:e] for s, e in seg],
            [ma[s:e] for s, e in seg],
            [va[s:e] for s, e in seg],
            layouts,
            h,
        )
        p_addr, g_addr, _ = _cpu_kernels.flat_inputs(b, grads)
        _cpu_kernels.step(p_addr, g_addr, tables, offsets, mb, vb, h)
    for x, y, t in zip(a, b, tensors, strict=True):
        assert torch.equal(x, y)
        assert not torch.equal(y, t) or y.numel() == 0
    assert torch.equal(ma, mb) and torch.equal(va, vb)


def test_step_on_channels_last_parameters():
    """A channels-last weight and gradient are updated in memory order, like the reference."""
    w = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    g = (torch.randn(8, 4, 3, 3) * 1e-3).to(memory_format=torch.channels_last)
    lay = chunk_layout(w.numel(), 64, 0.1)
    tables = _cpu_kernels.Tables([lay])
    off = _cpu_kernels.select([w.permute(0, 2, 3, 1).reshape(-1)], tables, False, torch.int16)
    h = AdamHyper(1e-2, 0.9, 0.999, 1e-8, 0.0, 1)
    a, b = w.clone(), w.clone()
    assert b.is_contiguous(memory_format=torch.channels_last)
    m = torch.zeros(off.shape, dtype=torch.bfloat16)
    v = torch.zeros(off.shape, dtype=torch.bfloat16)
    sparse_adamw_reference([a], [g], [off], [m.clone()], [v.clone()], [lay], h)
    p_addr, g_addr, keep = _cpu_kernels.flat_inputs([b], [g])
    _cpu_kernels.step(p_addr, g_addr, tables, off, m, v, h)
    assert torch.equal(a, b) and (a != w).sum() == off.numel()


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_carry_equals_the_torch_merge(threads, state_dtype):
    tensors, layouts, tables, dtype = _setup(SIZES, 1000, 0.05)
    old = _cpu_kernels.select(tensors, tables, False, dtype)
    moved = [t + 0.05 * torch.randn(t.shape) for t in tensors]
    new = _cpu_kernels.select(moved, tables, False, dtype)
    flat = FlatLayout.build(layouts, torch.device("cpu"))
    bases = torch.tensor([0] + [sum(SIZES[: i + 1]) for i in range(len(SIZES) - 1)])
    m = torch.randn(old.shape).to(state_dtype)
    v = torch.rand(old.shape).to(state_dtype)
    want = _carry_moments(flat.global_indices(old, bases), flat.global_indices(new, bases), m, v)
    got = _cpu_kernels.carry(tables, old, new, m, v)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    stays = (got[1] != 0).sum().item()
    assert 0 < stays < new.numel()  # some entries stay, some are new


def test_mark_equals_the_torch_tracking(threads):
    """Chunks of 1001 entries share tracking bytes with their neighbours: the atomic update
    must count every newly set bit once, over several refreshes."""
    sizes = (5000, 3, 40000)
    tensors, layouts, tables, dtype = _setup(sizes, 1001, 0.05)
    flat = FlatLayout.build(layouts, torch.device("cpu"))
    a, b = _GroupRuntime(), _GroupRuntime()
    params = [torch.empty(n) for n in sizes]
    NanoAdam._init_tracking(a, params)
    NanoAdam._init_tracking(b, params)
    for seed in range(3):
        moved = [t + 0.3 * torch.randn(t.shape, generator=torch.manual_seed(seed)) for t in tensors]
        off = _cpu_kernels.select(moved, tables, False, dtype)
        _mark_updated(a, flat.global_indices(off, a.tensor_bases), flat)
        _cpu_kernels.mark(tables, off, b.tensor_bases, b.updated_bits, b.updated_counts)
        assert torch.equal(a.updated_bits, b.updated_bits)
        assert torch.equal(a.updated_counts, b.updated_counts)
    assert int(b.updated_counts.sum()) > off.numel()


@pytest.mark.parametrize(
    ("criterion", "on_refresh", "state_dtype"),
    [
        *[
            (c, r, torch.bfloat16)
            for c in ("small_weights", "large_weights", "large_grads")
            for r in ("carry", "reset")
        ],
        # fp16 and fp64 moments: the step takes the torch path, refresh and tracking the kernels
        ("small_weights", "carry", torch.float32),
        ("small_weights", "carry", torch.float16),
        ("small_weights", "carry", torch.float64),
    ],
)
def test_optimizer_on_kernels_equals_the_torch_path(threads, criterion, on_refresh, state_dtype):
    """The whole optimizer, kernels (backend "auto" on the CPU) against the torch path: same
    parameters, moments, masks and tracking, bit for bit, across refreshes. (Zero-initialised
    biases are perturbed first: among tied scores the kernel keeps the lowest indices, while
    torch's top-k leaves the order of ties unspecified.)"""
    batches = _batches(12)
    model = _vit()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 1e-4)
    models = [model, copy.deepcopy(model)]
    opts = []
    for model, backend in zip(models, ("auto", "torch"), strict=True):
        opt = NanoAdam(
            model.parameters(),
            lr=1e-2,
            weight_decay=0.01,
            density=0.05,
            mask_interval=4,
            criterion=criterion,
            on_refresh=on_refresh,
            state_dtype=state_dtype,
            chunk_size=1000,
        )
        opt.backend = backend
        _train(model, opt, batches)
        opts.append(opt)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p, q)
        for key, value in opts[0].state[p].items():
            assert torch.equal(value, opts[1].state[q][key])
    assert opts[0].updated_fraction(per_tensor=True) == opts[1].updated_fraction(per_tensor=True)


def test_without_a_compiler_the_torch_path_takes_over(tmp_path, monkeypatch):
    """No working C compiler: one warning naming the fix, then the torch path, same results;
    backend "cpu" refuses."""
    monkeypatch.setattr(_cpu_kernels, "_library", None)
    monkeypatch.setattr(_cpu_kernels, "_tried", False)
    monkeypatch.setenv("CLBENCH_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    batches = _batches(4)
    a = _vit()
    b = copy.deepcopy(a)
    opt = NanoAdam(a.parameters(), density=0.05, mask_interval=2)
    with pytest.warns(RuntimeWarning, match="C compiler"):
        _train(a, opt, batches)
    assert not _cpu_kernels.available()
    ref = NanoAdam(b.parameters(), density=0.05, mask_interval=2)
    ref.backend = "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(b, ref, batches)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    model = _vit()
    forced = NanoAdam(model.parameters(), density=0.05)
    forced.backend = "cpu"
    with pytest.raises(RuntimeError, match="could not be built"):
        _train(model, forced, batches)
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def test_the_library_is_built_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(_cpu_kernels, "_library", None)
    monkeypatch.setattr(_cpu_kernels, "_tried", False)
    monkeypatch.setenv("CLBENCH_KERNEL_DIR", str(tmp_path))
    assert _cpu_kernels.available()
    (built,) = tmp_path.iterdir()
    stamp = built.stat().st_mtime_ns
    monkeypatch.setattr(_cpu_kernels, "_tried", False)
    monkeypatch.setattr(_cpu_kernels, "_library", None)

    def no_rebuild(target):
        raise AssertionError(f"rebuilt {target}")

    monkeypatch.setattr(_cpu_kernels, "_build", no_rebuild)
    assert _cpu_kernels.available()
    assert built.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_dense_kernel_is_torch_per_tensor_adamw(threads, weight_decay):
    """The dense groups' kernel (hundreds of small tensors and one longer than a block of work,
    in one call) equals torch's per-tensor AdamW bit for bit, over several steps; the moments
    move into flat buffers that `state` keeps viewing."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(7,), (64,), (3, 5), (40000,)] + [(32,)] * 50
    a = [torch.randn(s, generator=gen) for s in shapes]
    b = [t.clone() for t in a]
    adamw = torch.optim.AdamW(a, lr=1e-2, weight_decay=weight_decay, foreach=False)
    state = {p: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)} for p in b}
    tables = _cpu_kernels.DenseTables(b, state)
    assert tables.holds(b, state)
    for step in range(1, 6):
        grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
        for p, g in zip(a, grads, strict=True):
            p.grad = g
        adamw.step()
        h = AdamHyper(1e-2, 0.9, 0.999, 1e-8, weight_decay, step)
        assert _cpu_kernels.dense(tables, grads, h)
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(adamw.state[p]["exp_avg_sq"], state[q]["exp_avg_sq"])
    assert state[b[3]]["exp_avg"].data_ptr() == tables.exp_avg.data_ptr() + 4 * (7 + 64 + 15)


def test_dense_kernel_with_heads_that_have_no_gradient():
    """Continual learning: the optimizer holds every task's head, only the current one gets
    gradients. The dense kernel still runs (on the parameters that have one), equal bit for bit
    to the torch path, and the idle head stays untouched; switching heads rebuilds the tables."""
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32))
    heads = torch.nn.ModuleList([torch.nn.Linear(32, 3), torch.nn.Linear(32, 4)])
    base = torch.nn.ModuleDict({"trunk": trunk, "heads": heads})
    models = [base, copy.deepcopy(base)]
    opts = []
    for model, backend in zip(models, ("auto", "torch"), strict=True):
        groups = param_groups(model, dense=[model["heads"]])
        opt = NanoAdam(groups, lr=1e-2, density=0.25, mask_interval=3)
        opt.backend = backend
        opts.append(opt)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 16, generator=gen), t) for t in (0, 0, 0, 1, 1, 0)]
    idle_before = models[0]["heads"][1].weight.detach().clone()
    for step, (x, task) in enumerate(batches):
        for model, opt in zip(models, opts, strict=True):
            opt.zero_grad(set_to_none=True)
            model["heads"][task](model["trunk"](x)).square().mean().backward()
            opt.step()
        if step == 2:  # head 1 has had no gradient so far
            assert torch.equal(models[0]["heads"][1].weight, idle_before)
    runtimes = zip(opts[0].param_groups, opts[0]._runtime, strict=True)
    dense = [rt.dense for group, rt in runtimes if not group["sparse"]]
    assert dense[0][-1] is not None  # the kernel's tables, for the current head
    assert len(dense[0][1]) == 4  # LayerNorm weight and bias, head 0's weight and bias
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p, q)
