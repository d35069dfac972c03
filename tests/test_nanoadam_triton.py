"""The fused Triton step of NanoAdam agrees with the torch path (Triton's CPU interpreter), through
`python -m optimizers.gpu_check`, the same check a GPU machine runs on CUDA.

The interpreter must be switched on before Triton is first imported, so the check runs in a fresh
Python process with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def _check(tmp_path: Path, interpret: bool, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "optimizers.gpu_check", "--device", "cpu", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_triton_step_matches_torch_step_under_the_interpreter(tmp_path):
    """fp32 and bf16 parameters and moments, with and without weight decay, and inside backward
    (fused backward): parameters, masks and moments agree, over two refreshes with carried
    moments in fp32; the sparse group takes one kernel launch per step, or per tensor inside
    backward."""
    timing = ["--benchmark", "test_vit", "--repetitions", "1", "--dtype", "float32"]
    done = _check(tmp_path, True, "--out", str(tmp_path / "out"), *timing)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    cases = record["cases"]
    kinds = {(c["param_dtype"], c["state_dtype"], c["weight_decay"]) for c in cases}
    assert len(kinds) == 8 and len(cases) == 10
    assert all(c["agrees"] and c["masks_equal"] for c in cases)
    usual = [c for c in cases if not c["fused_backward"]]
    assert all(c["launches"] == c["steps"] for c in usual)  # one launch per step
    assert max(c["steps"] for c in usual) == 7
    # inside backward (fused backward): one launch per sparse tensor (3 here) and step
    inside = [c for c in cases if c["fused_backward"]]
    assert len(inside) == 2 and all(c["launches"] == 3 * c["steps"] for c in inside)
    assert max(c["steps"] for c in inside) == 7
    page = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| float32 | float32 | 0.1 | usual | 7 | 7 | yes |" in page
    assert "| float32 | float32 | 0.1 | inside backward | 7 | 21 | yes |" in page
    # --benchmark: NanoAdam's step against torch's AdamW on the model's parameters
    (timed,) = record["steps"]
    assert timed["model"] == "test_vit" and 0 < timed["ratio_amortized_vs_best_adamw"]
    assert "| test_vit |" in page


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--benchmark", "resnet19"], "error: unknown timm model 'resnet19'"),
        (["--steps", "0"], "error: --steps must be at least 1, got 0"),
    ],
)
def test_gpu_check_refuses_bad_arguments_in_one_line(tmp_path, argv, message):
    done = _check(tmp_path, True, *argv)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1


def test_gpu_check_without_a_device_says_what_to_do(tmp_path):
    done = _check(tmp_path, False)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: Triton runs on the CPU only under its interpreter: set TRITON_INTERPRET=1"
    )
    assert not list(tmp_path.iterdir())


def test_address_tables_are_uploaded_again_only_when_an_address_changes():
    """The Triton step keeps its tables of parameter and gradient addresses on the device
    between steps, and builds new ones when a tensor moved."""
    import torch

    from optimizers._nanoadam_triton import Addresses

    params = [torch.zeros(3, 4), torch.zeros(5)]
    grads = [torch.ones(3, 4), torch.ones(5)]
    table = Addresses()
    p1, g1, keep = table.gather(params, grads)
    assert p1.tolist() == [p.data_ptr() for p in params]
    assert g1.tolist() == [g.data_ptr() for g in grads] and keep == []
    p2, g2, _ = table.gather(params, grads)
    assert p2 is p1 and g2 is g1  # nothing moved: the same tables
    moved = grads[1]
    grads[1] = torch.ones(5)  # `moved` still holds the old memory: a new address
    _, g3, _ = table.gather(params, grads)
    assert g3 is not g1 and g3.tolist() == [g.data_ptr() for g in grads]
    # a channels-last gradient of a contiguous parameter: read through a reordered copy
    w = torch.zeros(2, 3, 4, 4)
    gw = torch.arange(96.0).view(2, 3, 4, 4).to(memory_format=torch.channels_last)
    _, g4, keep = table.gather([w], [gw])
    assert len(keep) == 1 and g4.tolist() == [keep[0].data_ptr()]
    assert torch.equal(keep[0], gw.reshape(-1)) and moved.numel() == 5
