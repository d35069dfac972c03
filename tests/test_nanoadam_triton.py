"""The fused Triton step of NanoAdam agrees with the torch path (Triton's CPU interpreter).

The interpreter must be switched on before Triton is first imported, so the comparison runs in a
fresh Python process with ``TRITON_INTERPRET=1``. The interpreter rounds fp32 to bf16 by
truncation (a GPU rounds to nearest even, as torch does), so with bf16 moments the stored moments
may differ by one bf16 step; the bf16 case is therefore compared after one step (the parameter
update uses the fp32 moments, before rounding), the fp32 case over seven steps with refreshes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn
    import optimizers._nanoadam_triton as fused
    from optimizers import NanoAdam

    torch.set_num_threads(1)
    launches = []
    kernel_step = fused.sparse_adamw_triton
    fused.sparse_adamw_triton = lambda *a, **k: launches.append(1) or kernel_step(*a, **k)
    checked = 0
    for state_dtype in (torch.float32, torch.bfloat16):
        for weight_decay in (0.0, 0.1):
            torch.manual_seed(0)
            shapes = [(70, 70), (300,), (1,), (2, 3, 40, 40)]  # chunks, tails, a scalar
            start = [torch.randn(s) for s in shapes]
            runs = []
            for backend in ("torch", "triton"):
                params = [nn.Parameter(t.clone()) for t in start]
                opt = NanoAdam(
                    [{"params": params[:3]}, {"params": params[3:], "sparse": False}],
                    lr=1e-2,
                    density=0.05,
                    mask_interval=3,
                    weight_decay=weight_decay,
                    state_dtype=state_dtype,
                    chunk_size=1024,
                )
                opt.backend = backend
                g = torch.Generator().manual_seed(1)
                steps = 7 if state_dtype == torch.float32 else 1
                for _ in range(steps):  # fp32: two refreshes with carried moments
                    for p in params:
                        p.grad = torch.randn(p.shape, generator=g)
                    opt.step()
                runs.append((params, opt))
            (pa, oa), (pb, ob) = runs
            for p, q, s in zip(pa, pb, start):
                assert not torch.equal(p, s)  # every tensor moved
                torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
            bf16_step = dict(rtol=2**-7, atol=1e-12)
            tol = dict(rtol=1e-5, atol=1e-8) if state_dtype == torch.float32 else bf16_step
            for p, q in zip(pa[:3], pb[:3]):
                assert torch.equal(oa.state[p]["offsets"], ob.state[q]["offsets"])
                for name in ("exp_avg", "exp_avg_sq"):
                    torch.testing.assert_close(oa.state[p][name], ob.state[q][name], **tol)
            checked += 1
    assert len(launches) == 7 + 7 + 1 + 1, launches
    print("checked", checked)
    """
)


def test_triton_step_matches_torch_step_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checked 4" in done.stdout
