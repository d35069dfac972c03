"""NanoAdam: equality with AdamW, untouched entries, memory, criteria, schedules, checkpoints."""

from __future__ import annotations

import copy
import io
import math

import pytest
import timm
import torch
from _tiny import native_batches as _batches
from _tiny import tiny_vit as _vit
from _tiny import train as _train
from torch import nn

import optimizers
from optimizers import NanoAdam, param_groups
from optimizers._selection import chunk_layout, chunk_offsets, local_index, select_offsets

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    """Both optimizers hold the same state entries with bit-identical tensors."""
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    for key, values in sa.items():
        assert values.keys() == sb[key].keys()
        for name, value in values.items():
            assert torch.equal(value, sb[key][name])


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        (p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def _selected_index(opt: NanoAdam, p: torch.Tensor) -> torch.Tensor:
    """Local indices of the entries of `p` selected now (the per-tensor reference decoding)."""
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    rt = opt._runtime[opt.param_groups.index(group)]
    lay = rt.flat.layouts[[id(q) for q in group["params"]].index(id(p))]
    return local_index(opt.state[p]["offsets"], lay)


# -- exactness at density 1 ------------------------------------------------------------------------
@pytest.mark.parametrize("mask_interval", [1, 7, None])
def test_density_one_equals_adamw(mask_interval):
    """density=1, fp32 moments, carry: torch's AdamW to 1e-6 over 50 steps, whatever the mask
    interval (refreshes reorder nothing and carry every moment) and with a static mask. Chunks
    of 1000 entries exercise full chunks and shorter tails."""
    batches = _batches(50)
    a, b = _vit(), _vit()
    nano = NanoAdam(
        a.parameters(),
        lr=1e-3,
        weight_decay=0.01,
        density=1.0,
        state_dtype=torch.float32,
        mask_interval=mask_interval,
        chunk_size=1000,
    )
    adamw = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.01)
    _train(a, nano, batches)
    _train(b, adamw, batches)
    assert _max_diff(a, b) <= 1e-6


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_density_one_with_dense_groups_equals_adamw(backend):
    """With `param_groups` (heads and norms dense), on the CPU kernels ("auto") and on the torch
    path: both groups follow torch's per-tensor AdamW arithmetic, bit for bit."""
    batches = _batches(50)
    a, b = _vit(), _vit()
    nano = NanoAdam(
        param_groups(a),
        lr=1e-3,
        weight_decay=0.01,
        density=1.0,
        state_dtype=torch.float32,
        mask_interval=5,
    )
    nano.backend = backend
    adamw = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
    _train(a, nano, batches)
    _train(b, adamw, batches)
    assert _max_diff(a, b) <= 1e-6


def test_flat_path_equals_reference_path():
    """The batched path and the per-tensor reference agree bit for bit (weight decay on/off)."""
    batches = _batches(12)
    for weight_decay in (0.0, 0.05):
        models = [_vit(), _vit()]
        opts = []
        for model, backend in zip(models, ("torch", "reference"), strict=True):
            opt = NanoAdam(
                param_groups(model),
                lr=1e-2,
                density=0.05,
                mask_interval=4,
                weight_decay=weight_decay,
                chunk_size=512,
            )
            opt.backend = backend
            opts.append(opt)
        for model, opt in zip(models, opts, strict=True):
            _train(model, opt, batches)
        assert _max_diff(*models) == 0.0
        _assert_same_state(*opts)


# -- parameters in one shared buffer ---------------------------------------------------------------
def test_flattened_parameters_share_the_buffer_and_stay_the_models():
    """flatten=True moves each sparse parameter into one buffer: same Parameter objects, names,
    shapes and values in the model; after steps they still live there and the model's state
    dict (and a saved checkpoint) holds the trained values."""
    model = _vit()
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    opt = NanoAdam(param_groups(model), lr=1e-2, density=0.05, mask_interval=3)
    shared = opt._runtime[0].shared
    assert shared is not None and opt._runtime[1].shared is None  # dense group untouched
    for name, p in model.named_parameters():
        assert p is before[name][0] and isinstance(p, nn.Parameter)
        assert p.shape == before[name][1].shape and torch.equal(p, before[name][1])
    _train(model, opt, _batches(7))
    buffer = shared.buffer
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel() * buffer.element_size()
    for p, a in zip(opt.param_groups[0]["params"], shared.starts, strict=True):
        assert p.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
        assert p.data_ptr() == start + a * p.element_size() and p.data_ptr() < end
        assert torch.equal(buffer[a : a + p.numel()], p.detach().view(-1))
    assert opt._runtime[0].shared is shared  # the fast path stayed on
    moved = sum(not torch.equal(p, before[n][1]) for n, p in model.named_parameters())
    assert moved == len(before)
    saved = io.BytesIO()
    torch.save(model.state_dict(), saved)
    saved.seek(0)
    copy_of = _vit()
    copy_of.load_state_dict(torch.load(saved))
    assert _max_diff(model, copy_of) == 0.0
    assert list(copy_of.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_flatten_on_and_off_give_identical_weights(weight_decay):
    """The shared-buffer path, the per-tensor flat path and the reference agree bit for bit."""
    batches = _batches(9)
    runs = []
    for flatten, backend in ((True, "torch"), (False, "torch"), (False, "reference")):
        model = _vit()
        opt = NanoAdam(
            param_groups(model),
            lr=1e-2,
            density=0.05,
            mask_interval=4,
            weight_decay=weight_decay,
            chunk_size=512,
            flatten=flatten,
        )
        opt.backend = backend
        assert (opt._runtime[0].shared is not None) == flatten
        _train(model, opt, batches)
        runs.append((model, opt))
    (a, oa), *others = runs
    for b, ob in others:
        assert _max_diff(a, b) == 0.0
        _assert_same_state(oa, ob)
    assert oa.state_bytes() == others[0][1].state_bytes()


def test_flatten_falls_back_when_parameters_cannot_share_a_buffer():
    """Mixed dtypes, views of other tensors and channels-last weights keep their storage; a
    parameter moved out of the buffer after construction switches the group back too."""
    torch.manual_seed(0)
    mixed = [nn.Parameter(torch.randn(40)), nn.Parameter(torch.randn(30, dtype=torch.float64))]
    base = torch.randn(80)
    view = [nn.Parameter(torch.randn(20)), nn.Parameter(base[:40])]
    conv = nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    for params in (mixed, view, [conv.weight]):
        ptrs = [p.data_ptr() for p in params]
        opt = NanoAdam(params, density=0.1)
        assert opt._runtime[0].shared is None
        assert [p.data_ptr() for p in params] == ptrs
    params = [nn.Parameter(torch.randn(50)), nn.Parameter(torch.randn(70))]
    opt = NanoAdam(params, lr=0.1, density=0.1)
    assert opt._runtime[0].shared is not None
    params[1].data = params[1].data.clone()  # e.g. model.to(...) after building the optimizer
    start = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt._runtime[0].shared is None
    for p, s in zip(params, start, strict=True):
        assert (p != s).sum() == math.ceil(0.1 * p.numel())


# -- untouched entries and tracking ----------------------------------------------------------------
def test_never_selected_entries_stay_bit_identical_and_are_tracked():
    model = _vit()
    start = copy.deepcopy(model)
    opt = NanoAdam(param_groups(model), lr=1e-2, density=0.02, mask_interval=3, chunk_size=4096)
    sparse = opt.param_groups[0]["params"]
    ever = [torch.zeros(p.numel(), dtype=torch.bool) for p in sparse]
    for x, y in _batches(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for seen, p in zip(ever, sparse, strict=True):
            seen[_selected_index(opt, p)] = True
    before = dict(start.named_parameters())
    for (name, p), seen in zip(
        [(n, p) for n, p in model.named_parameters() if any(p is q for q in sparse)],
        ever,
        strict=True,
    ):
        old = before[name].detach().view(-1)
        new = p.detach().view(-1)
        assert torch.equal(new[~seen], old[~seen]), name
        assert (new[seen] != old[seen]).float().mean() > 0.5, name  # selected ones do move
    per_tensor = opt.updated_fraction(per_tensor=True)
    assert per_tensor == pytest.approx([s.float().mean().item() for s in ever])
    total = sum(s.sum().item() for s in ever) / sum(s.numel() for s in ever)
    assert opt.updated_fraction() == pytest.approx(total)
    assert 0.02 < total < 0.2  # several refreshes, far from everything
    stats = opt.log_stats()
    assert stats["updated_frac"] == pytest.approx(total)
    assert stats["density"] == 0.02


def test_effective_lr_is_the_mean_over_updated_entries():
    model = _vit()
    opt = NanoAdam(param_groups(model), lr=3e-3, density=0.1, state_dtype=torch.float32)
    _train(model, opt, _batches(3))
    v = torch.cat([opt.state[p]["exp_avg_sq"] for p in opt.param_groups[0]["params"]])
    expected = (3e-3 / ((v / (1 - 0.999**3)).sqrt() + 1e-8)).mean().item()
    assert opt.log_stats()["elr"] == pytest.approx(expected, rel=1e-5)
    vd = torch.cat([opt.state[p]["exp_avg_sq"].view(-1) for p in opt.param_groups[1]["params"]])
    expected_dense = (3e-3 / ((vd / (1 - 0.999**3)).sqrt() + 1e-8)).mean().item()
    assert opt.log_stats()["elr_dense"] == pytest.approx(expected_dense, rel=1e-5)


# -- memory ----------------------------------------------------------------------------------------
def test_state_bytes_is_six_per_selected_entry_on_resnet18():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt = NanoAdam(param_groups(model), density=0.01)
    opt.step()
    sparse, dense = opt.param_groups[0]["params"], opt.param_groups[1]["params"]
    expected_selected = 0
    for p in sparse:
        n_full, rest = divmod(p.numel(), 32768)
        if n_full == 0:
            expected_selected += math.ceil(0.01 * rest)
        else:
            expected_selected += n_full * math.ceil(0.01 * 32768) + (
                math.ceil(0.01 * rest) if rest else 0
            )
    selected = sum(opt.state[p]["offsets"].numel() for p in sparse)
    assert selected == expected_selected
    assert all(opt.state[p]["offsets"].dtype == torch.int16 for p in sparse)
    assert all(opt.state[p]["exp_avg"].dtype == torch.bfloat16 for p in sparse)
    dense_numel = sum(p.numel() for p in dense)
    per_tensor = opt.state_bytes() - 6 * selected - 8 * dense_numel
    assert per_tensor == 24 * len(sparse)
    assert optimizers.state_bytes(opt) == opt.state_bytes()
    sparse_numel = sum(p.numel() for p in sparse)
    bits = opt.state_bytes(include_tracking=True) - opt.state_bytes()
    assert sparse_numel / 8 <= bits <= sparse_numel / 8 + 32 * len(sparse)


# -- selection criteria ----------------------------------------------------------------------------
def _one_tensor_step(criterion: str, seed: int = 0, chunk_size: int = 100):
    torch.manual_seed(3)
    w = nn.Parameter(torch.randn(1050))
    w.grad = torch.randn(1050)
    opt = NanoAdam([w], density=0.05, criterion=criterion, chunk_size=chunk_size, seed=seed)
    before = w.detach().clone()
    grad = w.grad.clone()
    opt.step()
    return opt, w, before, grad


@pytest.mark.parametrize(
    "criterion, score, largest",
    [
        ("small_weights", lambda w, g: w.abs(), False),
        ("large_weights", lambda w, g: w.abs(), True),
        ("large_grads", lambda w, g: g.abs(), True),
    ],
)
def test_criterion_picks_k_extreme_entries_per_chunk(criterion, score, largest):
    opt, w, before, grad = _one_tensor_step(criterion)
    picked = _selected_index(opt, w)
    s = score(before, grad)
    expected = []
    for start in range(0, 1050, 100):
        chunk = s[start : start + 100]
        k = math.ceil(0.05 * chunk.numel())
        expected += (torch.topk(chunk, k, largest=largest).indices + start).tolist()
    assert sorted(picked.tolist()) == sorted(expected)
    assert picked.numel() == 10 * 5 + 3  # ten full chunks of 100, a tail of 50
    changed = (w.detach() != before).nonzero().view(-1)
    assert set(changed.tolist()) <= set(picked.tolist())


@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("density", [0.001, 0.01, 0.05])
def test_fast_cpu_selection_equals_a_full_top_k_per_chunk(largest, density, monkeypatch):
    """The sampled-cut selection (chunks of 32768) against one full top-k per chunk, on tensors
    whose strided sample misjudges some chunks in both directions (too many and too few
    candidates), tensors shorter than a chunk, and tails."""
    gen = torch.Generator().manual_seed(0)
    sizes = [32768 * 20, 32768 * 3 + 5000, 9000, 70000, 300]
    scores = [torch.rand(n, generator=gen) for n in sizes]
    flip = -1.0 if largest else 1.0
    scores[0][: 4 * 32768 : 32] += 5.0 * flip  # sampled entries look kept-far-away: few cut
    scores[1][::32] = torch.rand(scores[1][::32].shape, generator=gen) * 1e-3 + (
        2.0 if largest else -1.0
    )  # sampled entries look like the kept ones: every chunk's cut lets too many through
    layouts = [chunk_layout(n, 32768, density) for n in sizes]
    full_rows = []  # rows given a full top-k: the misjudged chunks, and only those
    topk = torch.topk

    def spy(x, *args, **kwargs):
        if x.dim() == 2 and x.shape[1] == 32768:
            full_rows.append(x.shape[0])
        return topk(x, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", spy)
    fast = select_offsets(scores, layouts, lambda x: x, largest, torch.int16)
    monkeypatch.undo()
    assert sum(full_rows) == 4 + 3  # the first four chunks of tensor 0, all full chunks of 1
    full = torch.cat(
        [
            chunk_offsets(s, lay, largest, torch.int16)
            for s, lay in zip(scores, layouts, strict=True)
        ]
    )
    assert torch.equal(fast, full)


def test_random_criterion_is_seeded_and_per_chunk():
    a = _selected_index(*_one_tensor_step("random", seed=1)[:2])
    b = _selected_index(*_one_tensor_step("random", seed=1)[:2])
    c = _selected_index(*_one_tensor_step("random", seed=2)[:2])
    small = _selected_index(*_one_tensor_step("small_weights")[:2])
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, small)
    counts = torch.bincount(a // 100, minlength=11)
    assert counts.tolist() == [5] * 10 + [3]


def test_whole_tensor_selection_without_chunks():
    opt, w, before, _ = _one_tensor_step("small_weights", chunk_size=None)
    picked = _selected_index(opt, w)
    assert opt.state[w]["offsets"].dtype == torch.int16  # 1050 entries still fit
    expected = torch.topk(before.abs(), math.ceil(0.05 * 1050), largest=False).indices
    assert sorted(picked.tolist()) == sorted(expected.tolist())


# -- masks over time -------------------------------------------------------------------------------
def _quadratic_run(steps: int, **kwargs):
    """One tensor pulled towards a target: its small entries grow, so the bottom-k set moves."""
    torch.manual_seed(5)
    w = nn.Parameter(torch.randn(4000) * 0.1)
    target = torch.randn(4000)
    opt = NanoAdam([w], lr=0.05, chunk_size=1000, **kwargs)
    masks, densities = [], []
    for _ in range(steps):
        w.grad = w.detach() - target
        opt.step()
        masks.append(_selected_index(opt, w).clone())
        densities.append(opt.density)
    return opt, masks, densities


def test_static_mask_never_changes_and_dynamic_one_does():
    _, static, _ = _quadratic_run(30, density=0.05, mask_interval=None)
    assert all(torch.equal(m, static[0]) for m in static)
    _, dynamic, _ = _quadratic_run(30, density=0.05, mask_interval=10)
    assert torch.equal(dynamic[0], dynamic[9])  # held between refreshes
    assert not torch.equal(dynamic[9], dynamic[10])  # replaced at step 10


def test_linear_density_schedule_reaches_final_density():
    opt, masks, densities = _quadratic_run(
        21, density=0.3, final_density=0.1, total_steps=21, density_interval=5, mask_interval=50
    )
    expected = {t: 0.3 + (0.1 - 0.3) * t / 20 for t in (0, 5, 10, 15, 20)}
    for t, d in expected.items():
        assert densities[t] == pytest.approx(d)
    assert densities[4] == densities[0] and densities[6] == densities[5]  # held in between
    assert all(a >= b for a, b in zip(densities, densities[1:], strict=False))
    assert densities[-1] == pytest.approx(0.1)
    assert masks[-1].numel() == 4 * math.ceil(0.1 * 1000)
    assert masks[0].numel() == 4 * math.ceil(0.3 * 1000)
    assert opt.log_stats()["density"] == pytest.approx(0.1)


def test_schedule_needs_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        NanoAdam([nn.Parameter(torch.zeros(3))], final_density=0.1)


# -- carry versus reset ----------------------------------------------------------------------------
@pytest.mark.parametrize("on_refresh", ["carry", "reset"])
def test_moments_at_refresh(on_refresh):
    """Carry: entries that stay keep m, v; new entries start at zero; bias corrections count
    from the first step. Reset: every moment restarts at zero and so do the bias corrections."""
    torch.manual_seed(7)
    w = nn.Parameter(torch.randn(2000))
    opt = NanoAdam(
        [w],
        lr=1e-3,
        density=0.3,
        mask_interval=3,
        criterion="random",
        on_refresh=on_refresh,
        state_dtype=torch.float32,
        chunk_size=500,
    )
    for _ in range(3):
        w.grad = torch.randn(2000)
        opt.step()
    old_index = _selected_index(opt, w)
    m_old = dict(zip(old_index.tolist(), opt.state[w]["exp_avg"].tolist(), strict=True))
    v_old = dict(zip(old_index.tolist(), opt.state[w]["exp_avg_sq"].tolist(), strict=True))
    before = w.detach().clone()
    w.grad = g = torch.randn(2000)
    opt.step()  # step 4: a new random mask
    new_index = _selected_index(opt, w)
    stays = [i for i in new_index.tolist() if i in m_old]
    assert 0 < len(stays) < new_index.numel()  # some stay, some are new
    t = 4 if on_refresh == "carry" else 1
    for pos, i in enumerate(new_index.tolist()):
        keep = on_refresh == "carry" and i in m_old
        m = 0.9 * m_old[i] + 0.1 * g[i].item() if keep else 0.1 * g[i].item()
        v = 0.999 * v_old[i] + 0.001 * g[i].item() ** 2 if keep else 0.001 * g[i].item() ** 2
        assert opt.state[w]["exp_avg"][pos].item() == pytest.approx(m, rel=1e-5, abs=1e-7)
        assert opt.state[w]["exp_avg_sq"][pos].item() == pytest.approx(v, rel=1e-5, abs=1e-9)
        step = 1e-3 / (1 - 0.9**t) * m / (math.sqrt(v / (1 - 0.999**t)) + 1e-8)
        assert (before[i] - w[i]).item() == pytest.approx(step, rel=1e-4, abs=5e-7)


# -- checkpoints -----------------------------------------------------------------------------------
def test_state_dict_round_trip_continues_bit_identically():
    batches = _batches(12)
    model = _vit()
    opt = NanoAdam(
        param_groups(model),
        lr=1e-2,
        density=0.05,
        final_density=0.02,
        total_steps=12,
        mask_interval=3,
        criterion="random",
        chunk_size=2048,
    )
    _train(model, opt, batches[:5])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train(model, opt, batches[5:])

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = _vit()
    resumed.load_state_dict(saved["model"])
    opt2 = NanoAdam(param_groups(resumed), lr=123.0)  # hyperparameters come from the checkpoint
    opt2.load_state_dict(saved["opt"])
    _train(resumed, opt2, batches[5:])
    assert _max_diff(model, resumed) == 0.0
    assert opt2.updated_fraction(per_tensor=True) == opt.updated_fraction(per_tensor=True)
    assert opt2.density == opt.density
    assert opt2.state_bytes(include_tracking=True) == opt.state_bytes(include_tracking=True)
    for p, q in zip(opt.param_groups[0]["params"], opt2.param_groups[0]["params"], strict=True):
        for name in ("offsets", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][name], opt2.state[q][name])
            assert opt.state[p][name].dtype == opt2.state[q][name].dtype


# -- odds and ends ---------------------------------------------------------------------------------
def test_channels_last_weights_are_updated_in_place():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3).to(memory_format=torch.channels_last)
    before = conv.weight.detach().clone()
    conv(torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last)).square().sum().backward()
    opt = NanoAdam([conv.weight], lr=0.1, density=0.1, chunk_size=256)
    opt.step()
    changed = (conv.weight.detach() != before).sum().item()
    assert 0 < changed <= opt.state[conv.weight]["offsets"].numel()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_params_without_gradients_are_skipped():
    a, b = nn.Parameter(torch.randn(300)), nn.Parameter(torch.randn(300))
    a.grad = torch.randn(300)
    opt = NanoAdam([a, b], lr=0.1, density=0.1)
    b_before, a_before = b.detach().clone(), a.detach().clone()
    opt.step()
    assert torch.equal(b, b_before) and not torch.equal(a, a_before)


def test_registered_with_the_papers_defaults():
    spec = optimizers.get("nanoadam")
    assert spec.sparse and spec.factory is NanoAdam
    for name in ("density", "mask_interval", "total_steps", "final_density", "criterion"):
        assert spec.accepts(name)
    assert spec.defaults["density"] == 0.01 and spec.defaults["mask_interval"] == 100
    assert spec.defaults["state_dtype"] == torch.bfloat16
    assert "6kS" in spec.memory
    opt = optimizers.create("nanoadam", _vit(), total_steps=10, density=0.02)
    assert isinstance(opt, NanoAdam)
    assert [g["sparse"] for g in opt.param_groups] == [True, False]


def test_invalid_arguments_are_rejected():
    p = [nn.Parameter(torch.zeros(3))]
    for kwargs in ({"density": 0.0}, {"criterion": "big"}, {"on_refresh": "keep"}):
        with pytest.raises(ValueError):
            NanoAdam(p, **kwargs)


def test_chunk_layout_counts():
    lay = chunk_layout(70000, 32768, 0.01)
    assert (lay.n_full, lay.k, lay.rest, lay.k_rest) == (2, 328, 4464, 45)
    assert chunk_layout(30, 32768, 0.1).selected == 3  # 0.1 * 30 is 3.0000000000000004
    assert chunk_layout(10, 32768, 0.01).selected == 1
