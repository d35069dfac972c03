"""Baselines: each lowers the loss of a tiny model; AdamW-8bit and GaLore as optional extras
(install hint when missing, GaLore's layer choice and rank clamp, checkpoints, memory)."""

from __future__ import annotations

import io
import math
import sys

import pytest
import timm
import torch
from _tiny import small_batches as _batches
from _tiny import small_vit as _vit
from _tiny import train as _train
from torch import nn

import optimizers
from optimizers import OptimizerError, external, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def _needs(name: str) -> None:
    """Skip when the optional package of `name` is not installed."""
    module = {"adamw8bit": "bitsandbytes", "galore": "galore_torch"}.get(name)
    if module:
        pytest.importorskip(module)


class _Tiny(nn.Module):
    """A two-layer MLP with a norm and a classifier head (so every kind of group exists)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.norm = nn.LayerNorm(64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.norm(self.fc1(x))))))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 32, generator=g)
    return x, (x[:, :4].argmax(dim=1))


HPARAMS = {
    "adamw": {"lr": 1e-3},
    "sgd": {"lr": 5e-2},
    "microadam": {"lr": 1e-3, "density": 0.1},
    "adamw8bit": {"lr": 1e-3, "min_8bit_size": 1024},
    "galore": {"lr": 1e-3, "rank": 8, "update_proj_gap": 10},
}


@pytest.mark.parametrize("name", list(HPARAMS))
def test_each_baseline_lowers_the_loss_of_a_tiny_model(name):
    _needs(name)
    torch.manual_seed(0)
    model = _Tiny()
    opt = optimizers.create(name, model, **HPARAMS[name])
    x, y = _data()
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert optimizers.state_bytes(opt) > 0


def test_registry_lists_description_defaults_and_memory():
    specs = optimizers.available()
    for name in ("microadam", "adamw8bit", "galore"):
        spec = specs[name]
        assert spec.description and spec.memory and spec.defaults
    assert specs["galore"].defaults["rank"] == 256
    assert specs["galore"].defaults["update_proj_gap"] == 200
    assert specs["galore"].defaults["scale"] == 1.0
    assert specs["microadam"].defaults["window"] == 10


@pytest.mark.parametrize(
    ("name", "module", "package"),
    [("adamw8bit", "bitsandbytes", "bitsandbytes"), ("galore", "galore_torch", "galore-torch")],
)
def test_missing_package_is_one_line_naming_the_install(monkeypatch, name, module, package):
    """Simulated absence (the import fails): an OptimizerError, one line, naming the extra."""
    monkeypatch.setitem(sys.modules, module, None)
    external._adamw8bit_class.cache_clear()
    external._galore_class.cache_clear()
    try:
        with pytest.raises(OptimizerError) as exc:
            optimizers.create(name, _Tiny())
    finally:
        external._adamw8bit_class.cache_clear()
        external._galore_class.cache_clear()
    message = str(exc.value)
    assert "\n" not in message
    assert f"pip install {package}" in message


def test_missing_package_on_the_command_line_exits_2(monkeypatch, capsys, tmp_path):
    from clbench import cli

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    external._adamw8bit_class.cache_clear()
    monkeypatch.setattr(
        sys,
        "argv",
        ["clbench", "run", "--preset", "demo", "--opt", "adamw8bit", "--out", str(tmp_path / "r")],
    )
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main()
    finally:
        external._adamw8bit_class.cache_clear()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert len(err.splitlines()) == 1 and "pip install bitsandbytes" in err


# -- GaLore ----------------------------------------------------------------------------------------
def test_galore_projects_exactly_the_attention_and_mlp_weights():
    model = _vit()
    groups = external.galore_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    projected = sorted(names[id(p)] for g in groups if g.get("galore") for p in g["params"])
    expected = sorted(
        n
        for n, p in model.named_parameters()
        if p.dim() == 2 and (".attn." in n or ".mlp." in n) and n.endswith("weight")
    )
    assert projected == expected and expected
    everything = [p for g in groups for p in g["params"]]
    assert len(everything) == len(list(model.parameters())) == len({id(p) for p in everything})
    dense = [g for g in groups if g.get("sparse") is False]
    assert len(dense) == 1 and not dense[0].get("galore")


def test_galore_rank_is_clamped_to_the_layer():
    """rank 256 on test_vit (width 64, MLP 256): each matrix gets min(256, rows, cols) = 64."""
    pytest.importorskip("galore_torch")
    opt = optimizers.create("galore", _vit(), rank=256)
    ranks = {g["rank"] for g in opt.param_groups if "rank" in g}
    assert ranks == {64}
    opt = optimizers.create("galore", _vit(), rank=16)
    assert {g["rank"] for g in opt.param_groups if "rank" in g} == {16}


@pytest.mark.parametrize(
    ("name", "hparams"),
    [("galore", {"rank": 8, "update_proj_gap": 3}), ("adamw8bit", {"min_8bit_size": 1024})],
)
def test_checkpoint_round_trip_continues_identically(name, hparams):
    """state_dict through torch.load(weights_only=True), as the runner's checkpoints do; for
    GaLore the projection matrices travel too (a refresh falls inside the continuation)."""
    _needs(name)
    batches = _batches(10)
    model = _vit()
    opt = optimizers.create(name, model, lr=1e-3, **hparams)
    _train(model, opt, batches[:4])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _vit()
    resumed.load_state_dict(saved["model"])
    opt2 = optimizers.create(name, resumed, lr=1e-3, **hparams)
    opt2.load_state_dict(saved["opt"])
    _train(model, opt, batches[4:])
    _train(resumed, opt2, batches[4:])
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


# -- memory ----------------------------------------------------------------------------------------
def _step_with_random_grads(opt: torch.optim.Optimizer, model: nn.Module) -> None:
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()


@pytest.mark.parametrize("model_name", ["resnet18", "vit_tiny_patch16_224"])
def test_adamw8bit_state_bytes_follow_the_formula(model_name):
    """2 bytes per entry (8-bit m, v) + 2 fp32 absmax per block of 256 for tensors of at least
    min_8bit_size entries, 8 bytes per entry below; plus the two shared 256-entry maps."""
    pytest.importorskip("bitsandbytes")
    model = timm.create_model(model_name, pretrained=False, num_classes=10)
    opt = optimizers.create("adamw8bit", model)
    _step_with_random_grads(opt, model)
    expected = 2 * 256 * 4
    for p in model.parameters():
        n = p.numel()
        expected += 2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n
    assert opt.state_bytes() == expected


@pytest.mark.parametrize("model_name", ["resnet18", "vit_tiny_patch16_224"])
def test_galore_state_bytes_follow_the_formula(model_name):
    """Per projected m x n weight (rank r clamped): fp32 moments of the projected gradient and the
    projection matrix, 4 r (2 max(m, n) + min(m, n)) bytes; every other entry 8 bytes."""
    pytest.importorskip("galore_torch")
    model = timm.create_model(model_name, pretrained=False, num_classes=10)
    rank = 64
    opt = optimizers.create("galore", model, rank=rank)
    _step_with_random_grads(opt, model)
    projected = {
        id(p) for g in external.galore_groups(model) if g.get("galore") for p in g["params"]
    }
    expected = 0
    for p in model.parameters():
        if id(p) in projected:
            r = min(rank, *p.shape)
            expected += 4 * r * (2 * max(p.shape) + min(p.shape))
        else:
            expected += 8 * p.numel()
    assert opt.state_bytes() == expected
    if model_name == "resnet18":
        assert not projected  # no attention or MLP: GaLore is AdamW on a ResNet


def test_groups_hook_defaults_to_param_groups():
    """Specs without `groups` get `param_groups(model)` from `create`, as before."""
    model = _Tiny()
    opt = optimizers.create("adamw", model)
    expected = param_groups(model)
    assert [len(g["params"]) for g in opt.param_groups] == [len(g["params"]) for g in expected]
