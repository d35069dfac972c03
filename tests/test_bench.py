"""`clbench bench`: the harness's arithmetic with a fake clock, contenders kept apart, the JSON
schema, and the quick bench end to end. No test looks at a timing."""

import json
import sys

import pytest
import torch
from _cli import main_exit
from torch import nn

import optimizers
from clbench import bench
from optimizers import benchmark
from optimizers.benchmark import Timer, alternate, benchmark_steps, medians, refresh_figures


@pytest.fixture(autouse=True)
def keep_threads():
    """`--threads` sets torch's thread count for the process; put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class FakeClock:
    """A clock that only moves when a contender runs: each call advances it by the next of that
    contender's scripted durations, and records who ran."""

    def __init__(self, durations: dict[str, list[float]]):
        self.now, self.calls, self.syncs = 0.0, [], 0
        self.durations = {k: iter(v) for k, v in durations.items()}

    def contender(self, name: str):
        def run():
            self.calls.append(name)
            self.now += next(self.durations[name])

        return run

    def sync(self):
        self.syncs += 1


def test_contenders_take_turns_after_warmup_and_medians_are_per_contender():
    clock = FakeClock({"a": [9, 9, 1, 5, 2], "b": [9, 9, 4, 4, 40]})
    timer = Timer(clock=lambda: clock.now, sync=clock.sync)
    times = alternate({k: clock.contender(k) for k in "ab"}, repeats=3, timer=timer, warmup=2)
    assert clock.calls == ["a", "b"] * 5  # A B A B ..., never A A A B B B
    assert times == {"a": [1, 5, 2], "b": [4, 4, 40]}  # warm-up turns are not timed
    assert medians(times) == {"a": 2, "b": 4}
    assert clock.syncs == 2 * 6  # before and after every timed call


def test_refresh_is_amortized_over_the_mask_interval():
    f = refresh_figures(plain=2.0, refresh_step=12.0, mask_interval=100)
    assert f["refresh"] == pytest.approx(10.0)
    assert f["amortized"] == pytest.approx((99 * 2.0 + 12.0) / 100)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))


def test_every_contender_has_its_own_weights_and_gradients():
    def broken(model):
        raise optimizers.OptimizerError("needs a package that is not installed")

    factories = benchmark.step_factories(["adamw_fused", "nanoadam", "nanoadam_refresh", "sgd"])
    factories["broken"] = broken
    model = _tiny_model()
    result = benchmark_steps(model, factories, repeats=2, timer=Timer(clock=lambda: 0.0))
    assert result.skipped == {"broken": "needs a package that is not installed"}
    assert set(result.times) == {"adamw_fused", "nanoadam", "nanoadam_refresh", "sgd"}
    firsts = [next(m.parameters()) for m in result.models.values()]
    assert len({id(p) for p in firsts}) == len(firsts)
    assert all(p is not next(model.parameters()) for p in firsts)
    # each its own copy of the same gradients (no contender finds another's reads in cache)
    assert len({p.grad.data_ptr() for p in firsts}) == len(firsts)
    assert all(torch.equal(p.grad, firsts[0].grad) for p in firsts)
    assert result.gradients_intact
    # the plain NanoAdam keeps its first mask; the refresh contender refreshes at every step
    assert result.optimizers["nanoadam"].param_groups[0]["mask_interval"] is None
    assert result.optimizers["nanoadam_refresh"].param_groups[0]["mask_interval"] == 1
    assert result.best_adamw()[0] == "adamw_fused"


def test_targets_compare_with_the_issue_limits():
    results = {
        "optimizer_step": [
            {"model": "m", "nanoadam": {"amortized_ratio": 0.35, "refresh_in_adamw_steps": 2.5}}
        ],
        "state_bytes": [{"optimizer": "nanoadam", "model": "m", "bytes_above_6kS_per_tensor": 30}],
        "training_step": [{"model": "m", "ratio_to_adamw": {"nanoadam": 1.01}}],
        "runner": [{"model": "m", "optimizer": "adamw", "throughput_ratio": 0.95}],
    }
    met = {t["target"]: t["met"] for t in bench.targets(results)}
    assert met == {
        "NanoAdam step (amortized) / best AdamW": True,  # limits are inclusive
        "NanoAdam refresh / AdamW step": False,
        "NanoAdam state bytes above 6kS, per sparse tensor": True,
        "training step NanoAdam / AdamW": False,
        "runner / bare loop throughput (adamw)": True,
    }


def test_step_targets_take_the_median_over_rounds():
    """AdamW's step moves with the machine's memory bandwidth: NanoAdam's ratios are judged on
    their median over rounds, and the table says how many rounds met the target."""
    rounds = [
        {"amortized_ratio": a, "refresh_in_adamw_steps": r}
        for a, r in ((0.30, 1.0), (0.40, 2.5), (0.33, 2.1))
    ]
    nano = {"amortized_ratio": 0.30, "refresh_in_adamw_steps": 1.0, "rounds": rounds}
    results = {
        "optimizer_step": [{"model": "m", "nanoadam": nano}],
        "state_bytes": [],
        "training_step": [],
        "runner": [],
    }
    bench.summarize_rounds(nano)
    assert nano["amortized_ratio_median"] == 0.33 and nano["amortized_ratio_range"] == [0.3, 0.4]
    found = {t["target"]: t for t in bench.targets(results)}
    step = found["NanoAdam step (amortized) / best AdamW"]
    assert (step["value"], step["met"], step["rounds_met"]) == (0.33, True, 2)
    refresh = found["NanoAdam refresh / AdamW step"]
    assert (refresh["value"], refresh["met"], refresh["rounds_met"]) == (2.1, False, 1)
    cell = bench._targets_table({"targets": [step]}).rows[0][2]
    assert cell == "0.330 (median of 3 rounds; 0.300-0.400, 2 of 3 met)"


def test_later_rounds_are_spread_over_the_run():
    assert bench._spread(4, 4) == [1, 1, 1, 1]
    assert bench._spread(1, 4) == [1, 0, 0, 0]
    assert bench._spread(6, 4) == [1, 1, 1, 3]
    assert bench._spread(0, 4) == [0, 0, 0, 0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs")
def test_memory_probe_sees_an_allocation_above_its_baseline():
    probe = bench._MemoryProbe(torch.device("cpu"))
    probe.start()
    block = torch.ones(16 * 2**20)  # 64 MiB, touched
    answer = probe.stop()
    del block
    assert answer["above_baseline_bytes"] >= 60 * 2**20
    assert answer["method"].startswith("VmHWM")


def test_optimizer_benchmark_module_still_runs(capsys):
    results = benchmark.main(["--models", "test_vit", "--repetitions", "1", "--threads", "1"])
    assert results[0]["model"] == "test_vit"
    assert 0 < results[0]["ratio_amortized_vs_best_adamw"]
    assert "NanoAdam flatten=False" in capsys.readouterr().out


def test_quick_bench_runs_end_to_end(monkeypatch, capsys, tmp_path):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["bench", "--quick", "--threads", "1", "--json", str(out_json)]
    code, out, err = main_exit(monkeypatch, capsys, *argv, "--markdown", str(out_md))
    assert code == 0, err
    results = json.loads(out_json.read_text())

    assert results["schema"] == bench.SCHEMA
    assert {"cpu", "cores", "torch_threads", "cuda_device"} <= set(results["machine"])
    assert {"torch", "timm", "triton", "clbench"} <= set(results["versions"])
    assert results["settings"]["quick"] and results["settings"]["threads"] == 1
    step = results["optimizer_step"][0]
    assert step["model"] == "vit-micro"
    assert step["ratio_to_best_adamw"][step["best_adamw"]] == 1.0
    assert step["gradients_intact"]
    assert {"step_ms", "refresh_ms", "amortized_ratio", "refresh_in_adamw_steps"} <= set(
        step["nanoadam"]
    )
    rounds = step["nanoadam"]["rounds"]  # --quick: part 1 and one more round
    assert len(rounds) == 2 and rounds[0]["amortized_ratio"] == step["nanoadam"]["amortized_ratio"]
    assert all(r["best_adamw_ms"] > 0 and r["step_ms"] > 0 for r in rounds)
    (ratio_target,) = [
        t for t in results["targets"] if t["target"] == "NanoAdam step (amortized) / best AdamW"
    ]
    assert ratio_target["rounds"] == [r["amortized_ratio"] for r in rounds]
    states = {s["optimizer"]: s for s in results["state_bytes"]}
    assert {"nanoadam", "microadam", "adamw", "sgd"} <= set(states)
    assert all(s["vs_formula"] == 0.0 for s in states.values()), states  # every formula exact
    assert states["adamw"]["vs_adamw_fp32"] == 1.0
    peaks = {(p["optimizer"], p["variant"]): p for p in results["peak_memory"]}
    assert {o for o, v in peaks if v == "step"} == set(bench.OPTIMIZERS)
    assert all(p["above_baseline_bytes"] > 0 for (_, v), p in peaks.items() if v == "step")
    assert peaks["adamw", "step"]["vs_adamw"] == 1.0
    if bench.fused_backward_available():
        assert peaks["nanoadam", "fused_backward"]["above_baseline_bytes"] > 0
        assert "unsupported" in peaks["microadam", "fused_backward"]
    assert results["training_step"][0]["ratio_to_adamw"]
    assert {r["optimizer"] for r in results["runner"]} == {"adamw", "nanoadam"}
    assert all(r["throughput_ratio"] > 0 for r in results["runner"])
    assert [r["model"] for r in results["scaling"]] == ["vit-micro", "test_resnet"]
    assert {t["target"] for t in results["targets"]} >= {"training step NanoAdam / AdamW"}

    page = out_md.read_text()
    assert "clbench bench --quick" in page
    headings = ("Targets", "1. Optimizer step", "1c. NanoAdam", "2. Optimizer state", "3. Peak")
    for heading in headings:
        assert f"## {heading}" in page
    assert "(bench-scaling.png)" in page and (tmp_path / "bench-scaling.png").stat().st_size
    assert "Targets" in out  # the Rich tables


@pytest.mark.parametrize(
    ("argv", "fix"),
    [
        (["--opt", "adamx"], "unknown optimizer 'adamx'"),
        (["--model", "resnet19"], "unknown model 'resnet19'"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--rounds", "0"], "--rounds must be at least 1"),
    ],
)
def test_user_errors_are_one_line(monkeypatch, capsys, argv, fix):
    code, _, err = main_exit(monkeypatch, capsys, "bench", "--quick", *argv)
    assert code == 2
    assert fix in err
    assert len(err.strip().splitlines()) == 1
