"""torchrun with 2 CPU processes (gloo): NanoAdam's masks and the weights are identical on every
process, only process 0 writes files, a 2-process run matches a 1-process run with the same
global batch, and a 2-process resume matches the uninterrupted 2-process run exactly.

The 2-vs-1 comparison is not exact, and cannot be: each process's gradient is the mean over its
share of the batch, and the shares are summed by an all-reduce, which adds the same numbers in
another order than the mean over the whole batch does (the matrix products over a smaller batch
accumulate in another order too). Gradients differ in their last bits; Adam divides by
sqrt(v) + eps, which magnifies the relative difference of entries with tiny gradients. Tolerance:
every accuracy-matrix cell within one test image (ONE_IMAGE), every final weight within
WEIGHT_ATOL, except at most a share FLIPS of entries (a near-tie in a mask selection may fall
the other way: that entry then differs by about a step). Measured: identical accuracy matrices,
weights within about 1e-5 (they move by up to 2.2e-2 from their start), none beyond WEIGHT_ATOL.

This file is also the per-process script torchrun starts (see `worker`).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _cli import main_exit

from clbench import storage

ARGS = [
    *("--model vit-micro --no-pretrained --image-size 8 --patch-size 4 --seed 5").split(),
    # digits has 1437 training images: 5 global batches of 256, then one of 157 (79 + 78)
    *("--tasks digits,gratings --lr 2e-3 --batch-size 256 --max-steps 6").split(),
    *("--eval-every 3 --eval-samples 48 --device cpu --quiet").split(),
    # masks refreshed from the (all-reduced) gradient at steps 0, 2 and 4 of each task
    *("--opt nanoadam --density 0.1 --mask-interval 2 --opt-arg criterion=large_grads").split(),
]
ONE_IMAGE = 100 / 360  # accuracy points of one test image of digits (gratings: 0.1)
WEIGHT_ATOL = 1e-4  # 5% of one step at lr 2e-3
FLIPS = 1e-4  # share of entries allowed beyond WEIGHT_ATOL: mask selections flipped at near-ties


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def worker(report: str, out: str, resumed: str) -> None:
    """One torchrun process: `clbench run ARGS --out OUT`; then a copy of OUT cut back to the
    end of its first task (task_1.pt as last.pt) resumed with `--resume --out RESUMED`; then one
    step of NanoAdam with the random criterion. Records a digest of NanoAdam's masks at every
    refresh, of the final weights of both runs, and every write into the run directories by a
    process other than 0; process 0 writes them all to REPORT as JSON."""
    import torch.distributed as dist

    from clbench import cli, runner
    from optimizers.nanoadam import NanoAdam

    rank = int(os.environ["RANK"])
    masks, models, writes = [], [], []
    roots = (os.path.abspath(out), os.path.abspath(resumed))

    real_refresh = NanoAdam._refresh

    def refresh(self, group, rt, density):
        real_refresh(self, group, rt, density)
        masks.append(digest([rt.offsets]))

    real_make = runner.make_optimizer

    def make_optimizer(cfg, model, *args):
        models.append(model)
        return real_make(cfg, model, *args)

    def audit(event, args):
        written = None
        if event == "open" and isinstance(args[0], str):
            flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            written = args[0] if args[2] & flags else None
        elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"):
            written = args[0] if isinstance(args[0], str) else None
        if written and os.path.abspath(written).startswith(roots):
            writes.append(f"rank {rank}: {event} {written}")

    NanoAdam._refresh = refresh
    runner.make_optimizer = make_optimizer
    if rank != 0:
        sys.addaudithook(audit)

    def clbench(*argv: str) -> None:
        sys.argv = ["clbench", *argv]
        try:
            cli.main()
        except SystemExit as exc:
            assert exc.code in (0, None), f"rank {rank}: clbench exited with {exc.code}"

    clbench("run", *ARGS, "--out", out)
    weights = [digest(models[-1].state_dict().values())]
    if rank == 0:
        shutil.copytree(out, resumed)
        checkpoints = Path(resumed) / "checkpoints"
        shutil.copy(checkpoints / "task_1.pt", checkpoints / "last.pt")
    dist.barrier()
    clbench("run", "--resume", "--out", resumed)
    weights.append(digest(models[-1].state_dict().values()))

    # the random criterion draws from the optimizer's own seeded generator, not the global RNG
    param = torch.nn.Parameter(torch.linspace(-1, 1, 4096))
    param.grad = torch.ones_like(param)
    torch.manual_seed(rank)  # a different global RNG state on each process
    NanoAdam([param], density=0.1, criterion="random").step()

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"masks": masks, "weights": weights, "writes": writes})
    if rank == 0:
        Path(report).write_text(json.dumps(gathered))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The torchrun launch: (report per process, first run dir, resumed run dir, stdout)."""
    root = tmp_path_factory.mktemp("ddp")
    report, out, resumed = root / "report.json", root / "two", root / "resumed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    result = subprocess.run(
        [*torchrun, "2", __file__, str(report), str(out), str(resumed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(report.read_text()), out, resumed, result.stdout


def test_masks_and_weights_are_identical_on_every_process(two_processes):
    report, _, _, _ = two_processes
    first, second = report
    assert len(first["masks"]) == 10  # 3 per task, 3 in the resumed task, 1 random criterion
    assert first["masks"] == second["masks"]
    assert first["weights"] == second["weights"]


def test_only_process_0_writes_files_and_prints(two_processes):
    report, out, _, stdout = two_processes
    assert [r["writes"] for r in report] == [[], []]
    assert (out / "summary.json").is_file() and (out / "checkpoints" / "last.pt").is_file()
    assert stdout.count("average accuracy") == 2  # one summary per run, from process 0 only
    assert storage.read_json(out / "config.json")["processes"] == 2


def test_two_processes_match_one_with_the_same_global_batch(
    two_processes, tmp_path, monkeypatch, capsys
):
    _, two, _, _ = two_processes
    one = tmp_path / "one"
    code, _, err = main_exit(monkeypatch, capsys, "run", *ARGS, "--out", str(one))
    assert code == 0, err
    _, rows1 = storage.read_acc_matrix(one / "acc_matrix.csv")
    _, rows2 = storage.read_acc_matrix(two / "acc_matrix.csv")
    assert [label for label, _ in rows1] == [label for label, _ in rows2]
    a1, a2 = (torch.tensor([accs for _, accs in rows]).nan_to_num(-1) for rows in (rows1, rows2))
    print(f"largest accuracy difference, 2 processes vs 1: {float((a1 - a2).abs().max()):.3g}")
    assert torch.allclose(a1, a2, rtol=0, atol=ONE_IMAGE + 1e-9), (rows1, rows2)

    w1 = storage.load_torch(one / "checkpoints" / "last.pt")["model"]
    w2 = storage.load_torch(two / "checkpoints" / "last.pt")["model"]
    assert w1.keys() == w2.keys()
    diff = torch.cat([(w1[k].double() - w2[k].double()).abs().flatten() for k in w1])
    beyond = int((diff > WEIGHT_ATOL).sum())
    print(f"largest weight difference: {float(diff.max()):.3g}; beyond {WEIGHT_ATOL}: {beyond}")
    assert beyond <= FLIPS * diff.numel()


def test_resume_with_two_processes_is_exact(two_processes):
    _, two, resumed, _ = two_processes
    for name in ("acc_matrix.csv", "curves.csv", "shift.csv", "train_log.csv"):
        assert (two / name).read_text() == (resumed / name).read_text(), name
    wa = storage.load_torch(two / "checkpoints" / "last.pt")["model"]
    wb = storage.load_torch(resumed / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


if __name__ == "__main__":
    worker(*sys.argv[1:])
