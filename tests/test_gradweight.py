"""The gradient-weight study: the ratio r, tensor selection, an offline run end to end, and the
command's user errors."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from _cli import main_exit as invoke

from clbench.gradweight import (
    default_tensors,
    hyperbolic_ratio,
    paper_value,
    ratio_keys,
    select_tensors,
    top_indices,
)

TINY = [
    "analyze",
    "grad-weight",
    "--model",
    "vit-micro",
    "--no-pretrained",
    "--image-size",
    "16",
    "--patch-size",
    "4",
    "--task",
    "digits",
    "--steps",
    "6",
    "--batch-size",
    "32",
    "--quiet",
]


# ---------------------------------------------------------------------------------- the ratio


def test_ratio_by_hand():
    # 10 entries: the top set is the single largest |grad| (index 3, |w| 0.2); the bottom set is
    # the 8 smallest |grad| (all but indices 3 and 7), whose largest |w| is 4.0 (index 0).
    w = torch.tensor([4.0, 1.0, 2.0, 0.2, 3.0, 0.5, 1.5, 9.0, 2.5, 3.5])
    g = torch.tensor([0.1, 0.2, 0.3, 9.0, 0.05, 0.4, 0.15, 5.0, 0.25, 0.35])
    out = hyperbolic_ratio(w, g)
    assert out["top_k"] == 1 and out["numel"] == 10
    assert out["median_w_top"] == pytest.approx(0.2)
    assert out["max_w_bottom"] == pytest.approx(4.0)
    assert out["r"] == pytest.approx(0.05)
    assert out["min_grad_top"] == pytest.approx(9.0)
    assert out["max_grad_bottom"] == pytest.approx(0.4)


def test_ratio_top_set_size_and_even_median():
    # 20,000 entries: the top 0.01% is 2 entries, whose median is the mean of their |w|
    n = 20_000
    g = torch.arange(n, dtype=torch.float32)
    w = torch.ones(n)
    w[-2:] = torch.tensor([0.1, 0.3])
    out = hyperbolic_ratio(w, g)
    assert out["top_k"] == 2
    assert out["median_w_top"] == pytest.approx(0.2)
    assert out["r"] == pytest.approx(0.2)
    assert sorted(top_indices(g).tolist()) == [n - 2, n - 1]


def test_planted_hyperbola_gives_small_r_and_independence_does_not():
    gen = torch.Generator().manual_seed(0)
    n = 1_000_000
    w = torch.rand(n, generator=gen)  # |w| uniform on (0, 1)
    hyperbolic = 1e-3 / (w + 1e-6) * (1 + 0.1 * torch.rand(n, generator=gen))
    r_hyp = hyperbolic_ratio(w, hyperbolic)["r"]
    assert r_hyp < 1e-3  # the largest gradients sit at the smallest weights

    independent = torch.rand(n, generator=gen)
    # top set: 100 entries drawn independently of |w|, median ~ 0.5; bottom max ~ 1
    r_ind = hyperbolic_ratio(w, independent)["r"]
    assert r_ind == pytest.approx(0.5, abs=0.1)


def test_ratio_guards():
    one = hyperbolic_ratio(torch.tensor([0.7]), torch.tensor([2.0]))
    assert one["top_k"] == 1 and one["r"] == pytest.approx(1.0)
    assert math.isnan(hyperbolic_ratio(torch.zeros(5), torch.arange(5.0))["r"])
    with pytest.raises(ValueError):
        hyperbolic_ratio(torch.ones(3), torch.ones(4))


# ------------------------------------------------------------------------- tensor selection


def test_qkv_parts_equal_manual_slicing():
    dim = 8
    qkv = torch.randn(3 * dim, dim)
    named = {"blocks.2.attn.qkv.weight": qkv, "blocks.2.mlp.fc1.weight": torch.randn(4, dim)}
    keys = [f"blocks.2.attn.qkv.weight:{p}" for p in "qkv"] + ["blocks.2.mlp.fc1.weight"]
    got = select_tensors(named, keys)
    for i, part in enumerate("qkv"):
        assert torch.equal(got[f"blocks.2.attn.qkv.weight:{part}"], qkv[i * dim : (i + 1) * dim])
    assert got["blocks.2.mlp.fc1.weight"] is named["blocks.2.mlp.fc1.weight"]


def test_unknown_tensor_names_valid_ones():
    from clbench.errors import UserError

    named = {"blocks.0.attn.qkv.weight": torch.zeros(6, 2)}
    with pytest.raises(
        UserError, match=r"did you mean blocks\.0\.attn\.qkv\.weight:[qkv]\?.*e\.g\."
    ):
        select_tensors(named, ["blocks.0.attn.qkv.weight:x"])


def test_default_tensors_spread_over_depth():
    vit = {f"blocks.{i}.attn.qkv.weight": torch.zeros(6, 2) for i in range(12)}
    keys = default_tensors(vit)
    blocks = sorted({int(k.split(".")[1]) for k in keys})
    assert blocks == [0, 3, 6, 9, 11]  # the paper's ViT-Tiny layers
    assert len(keys) == 15
    large = {f"blocks.{i}.attn.qkv.weight": torch.zeros(6, 2) for i in range(24)}
    blocks = sorted({int(k.split(".")[1]) for k in default_tensors(large, "vit_large_patch16_224")})
    assert blocks == [0, 3, 6, 9, 11, 17, 23]
    cnn = {f"layer{i}.conv.weight": torch.zeros(2, 2, 3, 3) for i in range(9)}
    cnn["bn.weight"] = torch.zeros(2)
    assert default_tensors(cnn) == [f"layer{i}.conv.weight" for i in (0, 2, 4, 6, 8)]


def test_whole_qkv_follows_its_parts_and_carries_the_paper_value():
    keys = ["blocks.3.attn.qkv.weight:q", "blocks.3.attn.qkv.weight:v", "head.weight"]
    assert ratio_keys(keys) == [*keys[:2], "blocks.3.attn.qkv.weight", "head.weight"]
    assert paper_value("vit_tiny_patch16_224", "blocks.3.attn.qkv.weight", "early") == 0.04
    assert paper_value("vit_tiny_patch16_224", "blocks.3.attn.qkv.weight", "late") is None
    assert paper_value("vit_tiny_patch16_224", "blocks.3.attn.qkv.weight:q", "early") is None
    assert paper_value("test_vit", "blocks.3.attn.qkv.weight", "early") is None


# ------------------------------------------------------------------------------- end to end


def test_offline_run_writes_table_samples_figures_and_page(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gw"
    code, stdout, _ = invoke(monkeypatch, capsys, *TINY, "--samples", "500", "--out", str(out))
    assert code in (0, None)
    assert "hyperbolic ratio r" in stdout
    ratios = pd.read_csv(out / "ratios.csv")
    # vit-micro has 6 blocks: 0, 1, 3, 4, 5; q, k, v and the whole qkv, at 3 phases
    assert len(ratios) == 5 * 4 * 3
    assert list(ratios.drop_duplicates("phase")["step"]) == [1, 3, 6]
    assert ratios["r"].notna().all() and (ratios["r"] > 0).all()
    assert ratios["paper_r"].isna().all()  # vit-micro is not in the paper's Table 1
    with np.load(out / "samples.npz") as npz:
        w = npz["blocks.0.attn.qkv.weight:q|early|w"]
        assert w.dtype == np.float32 and w.shape == (500,)
        assert npz["blocks.0.attn.qkv.weight:q|late|top_grad"].shape == (1,)
        assert not any(k.startswith("blocks.0.attn.qkv.weight|") for k in npz.files)
    assert (out / "figures" / "scatter.png").stat().st_size > 0
    assert (out / "figures" / "ratios.png").stat().st_size > 0
    page = (out / "gradweight.md").read_text()
    assert "figures/scatter.png" in page and "early (step 1)" in page

    # an existing folder is kept unless --overwrite
    code, _, err = invoke(monkeypatch, capsys, *TINY, "--out", str(out))
    assert code == 2 and "--overwrite" in err
    assert (out / "ratios.csv").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "vit-mikro"], "did you mean vit-micro"),
        (["--task", "digts"], "did you mean digits"),
        (["--steps", "2"], "--steps must be >= 3"),
        (["--tensors", "blocks.0.attn.qkv.weight:w"], "unknown tensor"),
        (["--capture-steps", "1,6,3"], "--capture-steps must be three increasing"),
    ],
)
def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys, args, expected):
    code, _, err = invoke(monkeypatch, capsys, *TINY, "--out", str(tmp_path / "x"), *args)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
