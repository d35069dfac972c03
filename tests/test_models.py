import pytest
import torch
from torch import nn

import optimizers
from clbench import models
from clbench.errors import UserError


def test_short_names_and_passthrough():
    assert models.timm_name("vit-large") == "vit_large_patch16_224"
    assert models.timm_name("resnet18") == "resnet18"
    assert models.timm_name("convnext_tiny") == "convnext_tiny"  # any timm name passes through


def test_unknown_model_suggests_close_match():
    with pytest.raises(UserError, match="did you mean resnet18"):
        models.timm_name("resnt18")


@pytest.mark.parametrize(
    ("default", "size", "expected"),
    [(16, 224, 16), (16, 32, 4), (16, 64, 8), (16, 96, 12), (16, 8, 1)],
)
def test_vit_patch_size_keeps_a_sensible_grid(default, size, expected):
    patch = models.vit_patch_size(default, size)
    assert patch == expected
    assert size % patch == 0 and size // patch >= min(8, size)


def test_small_vit_backbone_and_input_spec():
    torch.manual_seed(0)
    backbone = models.create_backbone("vit-micro", pretrained=False, image_size=32)
    assert tuple(backbone.patch_embed.patch_size) == (4, 4)
    spec = models.input_spec(backbone, 32)
    assert spec.image_size == 32 and len(spec.mean) == 3
    feats = backbone(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, backbone.num_features)


def test_cnn_ignores_patch_logic():
    backbone = models.create_backbone("resnet18", pretrained=False, image_size=32)
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_multihead_forward_uses_the_requested_head():
    torch.manual_seed(0)
    net = models.MultiHeadNet(models.create_backbone("vit-micro", False, image_size=16))
    assert net.add_head(10) == 0 and net.add_head(3) == 1
    x = torch.randn(4, 3, 16, 16)
    assert net(x, 0).shape == (4, 10)
    assert net(x, 1).shape == (4, 3)
    feats = net.backbone(x)
    torch.testing.assert_close(net(x, 1), net.heads[1](feats))
    # heads are dense parameters for sparse optimizers, found through get_classifier()
    dense = {id(p) for g in optimizers.param_groups(net) if not g["sparse"] for p in g["params"]}
    assert all(id(p) in dense for p in net.heads.parameters())
    assert id(net.backbone.blocks[0].attn.qkv.weight) not in dense
    assert id(net.backbone.blocks[0].norm1.weight) in dense


def test_offline_without_cached_weights_names_every_fix(monkeypatch):
    monkeypatch.setattr(models, "cached_weights", lambda name: None)
    monkeypatch.setattr(models, "online", lambda *a, **k: False)
    with pytest.raises(UserError) as err:
        models.create_backbone("resnet18", pretrained=True)
    msg = str(err.value)
    assert (
        "clbench fetch --model resnet18" in msg and "--weights" in msg and "--no-pretrained" in msg
    )


def test_weights_file_is_loaded_and_resampled(tmp_path):
    torch.manual_seed(1)
    source = models.create_backbone("vit-micro", False)  # native 160 px, patch 16
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    same = models.create_backbone("vit-micro", False, weights=str(path))
    torch.testing.assert_close(same.blocks[2].attn.qkv.weight, source.blocks[2].attn.qkv.weight)
    # a different input size: timm's filter resamples patch and position embeddings
    small = models.create_backbone("vit-micro", False, weights=str(path), image_size=32)
    torch.testing.assert_close(small.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    assert small.pos_embed.shape[1] == 1 + 8 * 8


def test_bad_weights_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        models.create_backbone("vit-micro", False, weights=str(tmp_path / "missing.pt"))
    other = tmp_path / "resnet.pt"
    torch.save(models.create_backbone("resnet18", False).state_dict(), other)
    with pytest.raises(UserError, match="does not fit"):
        models.create_backbone("vit-micro", False, weights=str(other))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        models.create_backbone("vit-micro", False, weights=str(corrupt))


def test_param_groups_by_module_type_not_name():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.weird_name = nn.LayerNorm(4)  # a norm, whatever it is called
            self.norm = nn.Linear(4, 4)  # called "norm", but a linear layer: sparse
            self.bn = nn.BatchNorm1d(4)

    net = Net()
    groups = {g["sparse"]: g["params"] for g in optimizers.param_groups(net)}
    sparse_ids = {id(p) for p in groups[True]}
    assert sparse_ids == {id(net.norm.weight), id(net.norm.bias)}
    assert {id(p) for p in groups[False]} == {
        id(p) for m in (net.weird_name, net.bn) for p in m.parameters()
    }
