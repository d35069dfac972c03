"""The NanoAdam paper's two-layer teacher-student toy (PAPER.md §6, appendix C; Tables 7-8,
Figure 7): does finetuning only the smallest weights learn a new feature with less damage to the
pretrained network than finetuning the entries with the largest gradients?

    f(x) = sum_i a_i ReLU(w_i . x),   x ~ N(0, I_2),   squared loss,   full-batch gradient descent

A teacher of 2 neurons (a_i = ±1, unit-norm w_i) is learnt by a 20-neuron student from an
antisymmetric init (a_i = -a_{i+10}, w_i = w_{i+10}: the student starts at f = 0). The
pretrained student is then finetuned on the teacher plus 1 (Table 7) or 2 (Table 8) extra neurons,
drawn like the teacher's, updating in each layer (W: 20x2, a: 20) only the selected entries.

Where the paper is silent, or where its values do not work as written, we choose (each is a
field of `ToyConfig`; the measurements behind them are in docs/toy.md):
- density 0.5 per layer: ceil(0.5 x size) entries, 20 of the 40 first-layer and 10 of the 20
  second-layer weights (NanoAdam's count rule). Comparing how far the criteria move only makes
  sense if both learn the new target; 0.5 is the smallest of 0.1, 0.25 and 0.5 at which both do,
  in every seed (test loss below 1% of its value at the start of finetuning).
- a static mask, chosen once at the start of finetuning (small weights: the pretrained |w|;
  large gradient: |grad| of the new loss at the pretrained weights), so the weights allowed to
  move are one fixed set. `mask_interval` > 0 re-selects every that many steps, as NanoAdam does.
- loss = mean over samples of (f(x) - y)^2, step sizes 0.5 (pretraining) and 0.25 (finetuning):
  the paper's 2 and 1 diverge with this model (2: 9 of 10 seeds; 1: 2 of 10), 0.5 fits every
  seed; finetuning keeps the paper's half of the pretraining step.
- a fixed training sample of 1000 inputs per seed, an independent test sample of 100000.
- init N(0, 1/n) with n = 20, the student's width; extra neurons drawn like the teacher's.

Everything is batched over a leading dimension (seed, or setting x criterion x seed); each seed
draws its problem from its own generator, so a batch of seeds gives what each seed gives alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from optimizers._selection import kept_per_chunk

from .errors import UserError

INPUT_DIM = 2
TEACHER_NEURONS = 2
STUDENT_NEURONS = 20
MAX_EXTRA = 2
CRITERIA = ("small_weights", "large_gradient")
DTYPE = torch.float32

#: the paper's Table 7 (1 extra neuron) and Table 8 (2 extra neurons): mean and std over 10 seeds
PAPER: dict[int, dict[str, dict[str, tuple[float, float]]]] = {
    1: {
        "small_weights": {"test_loss": (0.0094, 0.012), "l2": (0.027, 0.0040)},
        "large_gradient": {"test_loss": (0.017, 0.015), "l2": (0.057, 0.032)},
    },
    2: {
        "small_weights": {"test_loss": (0.038, 0.040), "l2": (0.042, 0.0077)},
        "large_gradient": {"test_loss": (0.063, 0.033), "l2": (0.097, 0.071)},
    },
}
PAPER_TABLE = {1: "Table 7", 2: "Table 8"}

Net = tuple[torch.Tensor, torch.Tensor]  # (W: (B, m, d), a: (B, m)), batched over B


@dataclass(frozen=True)
class ToyConfig:
    """Settings of `clbench toy`: the paper's where it gives workable ones (module docstring)."""

    extra_neurons: tuple[int, ...] = (1, 2)
    seeds: int = 10
    seed: int = 0  # seeds are seed, seed + 1, ...
    pretrain_steps: int = 10_000
    pretrain_lr: float = 0.5
    finetune_steps: int = 10_000
    finetune_lr: float = 0.25
    density: float = 0.5
    mask_interval: int = 0  # 0: static mask
    train_samples: int = 1000
    test_samples: int = 100_000

    def __post_init__(self) -> None:
        if not self.extra_neurons or any(k not in (1, 2) for k in self.extra_neurons):
            raise UserError(
                f"--extra-neurons takes 1, 2 or both, got {','.join(map(str, self.extra_neurons))}"
            )
        for name in ("seeds", "train_samples", "test_samples"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be at least 1, got {getattr(self, name)}")
        for name in ("pretrain_steps", "finetune_steps", "mask_interval"):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be 0 or more, got {getattr(self, name)}")
        if not 0 < self.density <= 1:
            raise UserError(f"--density must be in (0, 1], got {self.density}")
        for name in ("pretrain_lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be positive, got {getattr(self, name)}")

    def kept(self, layer_size: int) -> int:
        """Entries updated per layer: ceil(density x size), at least 1 (NanoAdam's rule)."""
        return kept_per_chunk(self.density, layer_size)


# ------------------------------------------------------------------------------------ problem


@dataclass
class Problem:
    """Everything a batch of seeds draws: the teacher, the extra neurons, the student's init, a
    training and a test sample. Leading dimension: seed."""

    teacher: Net
    extra: Net  # MAX_EXTRA neurons; a setting with k extra neurons uses the first k
    init: Net
    x_train: torch.Tensor  # (S, N, d)
    x_test: torch.Tensor


def random_neurons(count: int, gen: torch.Generator) -> Net:
    """Teacher-like neurons: a ~ Rademacher, w ~ N(0, I) scaled to unit norm."""
    a = torch.randint(0, 2, (count,), generator=gen, dtype=DTYPE) * 2 - 1
    w = torch.randn(count, INPUT_DIM, generator=gen, dtype=DTYPE)
    return w / w.norm(dim=1, keepdim=True), a


def antisymmetric_init(gen: torch.Generator) -> Net:
    """N(0, 1/n) with w_i = w_{i+n/2} and a_i = -a_{i+n/2}: the output is 0 (up to rounding)."""
    half = STUDENT_NEURONS // 2
    std = STUDENT_NEURONS**-0.5
    w = torch.randn(half, INPUT_DIM, generator=gen, dtype=DTYPE) * std
    a = torch.randn(half, generator=gen, dtype=DTYPE) * std
    return torch.cat([w, w]), torch.cat([a, -a])


def draw_problem(seeds: Sequence[int], train_samples: int, test_samples: int) -> Problem:
    """One generator per seed, drawn in a fixed order, stacked over seeds."""
    parts = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        parts.append(
            (
                random_neurons(TEACHER_NEURONS, gen),
                random_neurons(MAX_EXTRA, gen),
                antisymmetric_init(gen),
                torch.randn(train_samples, INPUT_DIM, generator=gen, dtype=DTYPE),
                torch.randn(test_samples, INPUT_DIM, generator=gen, dtype=DTYPE),
            )
        )

    def stack(i: int) -> Net:
        return torch.stack([p[i][0] for p in parts]), torch.stack([p[i][1] for p in parts])

    return Problem(
        stack(0),
        stack(1),
        stack(2),
        torch.stack([p[3] for p in parts]),
        torch.stack([p[4] for p in parts]),
    )


def target_net(problem: Problem, extra: int) -> Net:
    """The teacher with its first `extra` extra neurons appended (extra = 0: the teacher)."""
    (tw, ta), (ew, ea) = problem.teacher, problem.extra
    return torch.cat([tw, ew[:, :extra]], dim=1), torch.cat([ta, ea[:, :extra]], dim=1)


# ----------------------------------------------------------------------------------- training


def forward(net: Net, x: torch.Tensor) -> torch.Tensor:
    """f(x) for a batch of networks: W (B, m, d), a (B, m), x (B, N, d) -> (B, N)."""
    w, a = net
    return (torch.bmm(x, w.transpose(1, 2)).clamp_min(0) * a[:, None, :]).sum(-1)


def loss_and_grads(net: Net, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Net]:
    """Mean squared error per network (B,) and its gradient with respect to W and a."""
    w, a = net
    pre = torch.bmm(x, w.transpose(1, 2))  # (B, N, m)
    act = pre.clamp_min(0)
    err = torch.bmm(act, a[:, :, None])[..., 0] - y  # (B, N)
    scale = 2.0 / x.shape[1]
    grad_a = torch.bmm(err[:, None, :], act)[:, 0] * scale
    active_err = (pre > 0) * err[:, :, None]  # dL/dpre_i = 1[pre_i > 0] err a_i (up to scale)
    grad_w = torch.bmm(active_err.transpose(1, 2), x) * (a * scale)[:, :, None]
    return err.square().mean(-1), (grad_w, grad_a)


def mean_squared_error(net: Net, x: torch.Tensor, target: Net, chunk: int = 8) -> torch.Tensor:
    """Mean squared error per network on a large sample, a few networks at a time (memory)."""
    out = []
    for i in range(0, x.shape[0], chunk):
        sl = slice(i, i + chunk)
        part = (net[0][sl], net[1][sl])
        y = forward((target[0][sl], target[1][sl]), x[sl])
        out.append((forward(part, x[sl]) - y).square().mean(-1))
    return torch.cat(out)


def layer_mask(score: torch.Tensor, kept: int, largest: bool) -> torch.Tensor:
    """Boolean mask of the `kept` entries of each network's layer with the smallest (or largest)
    score; `score` is (B, ...), selection is over all entries of the layer of one network."""
    flat = score.reshape(score.shape[0], -1)
    idx = torch.topk(flat, kept, dim=1, largest=largest).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
    return mask.view_as(score)


def select(criterion: str, net: Net, grads: Net, kept: Callable[[int], int]) -> Net:
    """Per-layer masks of the entries to update: the smallest |weight| or the largest |grad|."""
    if criterion == "small_weights":
        scores, largest = net, False
    elif criterion == "large_gradient":
        scores, largest = grads, True
    else:
        raise ValueError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")
    return tuple(  # type: ignore[return-value]
        layer_mask(s.abs(), kept(s[0].numel()), largest) for s in scores
    )


def gradient_descent(
    net: Net,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    steps: int,
    pick: Callable[[Net, Net], Net] | None = None,
    mask_interval: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Net, Net | None]:
    """Full-batch gradient descent. With `pick(net, grads) -> masks`, only masked entries move
    (the rest stay bit-identical); masks are picked at step 0 and, with `mask_interval` > 0,
    again every that many steps. Returns the trained net and the last masks."""
    w, a = (t.clone() for t in net)
    masks = None
    for step in range(steps):
        loss, (gw, ga) = loss_and_grads((w, a), x, y)
        if pick is not None:
            if masks is None or (mask_interval and step % mask_interval == 0):
                masks = pick((w, a), (gw, ga))
            w = torch.where(masks[0], w - lr * gw, w)
            a = torch.where(masks[1], a - lr * ga, a)
        else:
            w, a = w - lr * gw, a - lr * ga
        if progress is not None and ((step + 1) % 100 == 0 or step + 1 == steps):
            progress(step + 1, float(loss.mean()))
    return (w, a), masks


def l2_distance(net: Net, ref: Net) -> torch.Tensor:
    """Euclidean distance over all parameters of each network, (B,)."""
    return sum((p - q).flatten(1).square().sum(1) for p, q in zip(net, ref, strict=True)).sqrt()


# --------------------------------------------------------------------------------- experiment


def run_toy(cfg: ToyConfig, progress: Callable[[str, int, int, float], None] | None = None) -> dict:
    """Pretrain the students of every seed, then finetune each on every extra-neuron setting with
    every criterion, all in one batch. Returns plain numbers (JSON-ready): per setting and
    criterion the test loss and L2 distance per seed with mean and std, the masks' sizes, and
    the neurons of the first seed for the figure. `progress(phase, done, total, loss)`."""
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    problem = draw_problem(seeds, cfg.train_samples, cfg.test_samples)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small: one thread is fastest and leaves the rest free
    try:
        teacher_y = forward(problem.teacher, problem.x_train)
        pretrained, _ = gradient_descent(
            problem.init,
            problem.x_train,
            teacher_y,
            cfg.pretrain_lr,
            cfg.pretrain_steps,
            progress=_phase(progress, "pretrain", cfg.pretrain_steps),
        )
        _check_finite(pretrained, seeds, "pretraining", "--pretrain-lr")
        runs = [(k, c) for k in cfg.extra_neurons for c in CRITERIA]
        finetuned = _finetune(cfg, problem, pretrained, runs, progress)
        _check_finite(finetuned, seeds * len(runs), "finetuning", "--finetune-lr")
    finally:
        torch.set_num_threads(threads)
    return _summarise(cfg, seeds, problem, pretrained, runs, finetuned)


def _check_finite(net: Net, seeds: list[int], phase: str, flag: str) -> None:
    """Gradient descent with too large a step blows up to inf/NaN: say so, not a table of NaN."""
    finite = torch.isfinite(net[0]).flatten(1).all(1) & torch.isfinite(net[1]).all(1)
    bad = sorted({s for s, ok in zip(seeds, finite.tolist(), strict=True) if not ok})
    if bad:
        raise UserError(f"{phase} diverged for seeds {bad}: pass a smaller {flag}")


def _phase(progress, phase: str, total: int):
    if progress is None:
        return None
    return lambda done, loss: progress(phase, done, total, loss)


def _repeat(t: torch.Tensor, times: int) -> torch.Tensor:
    """(S, ...) -> (times * S, ...): the seed batch repeated for each run."""
    return t.repeat(times, *([1] * (t.dim() - 1)))


def _finetune(cfg: ToyConfig, problem: Problem, pretrained: Net, runs, progress) -> Net:
    """All runs (extra neurons, criterion) x seeds as one batch, run-major."""
    n = len(runs)
    x = _repeat(problem.x_train, n)
    y = torch.cat([forward(target_net(problem, k), problem.x_train) for k, _ in runs])
    start = tuple(_repeat(p, n) for p in pretrained)
    rows = cfg.seeds

    def pick(net: Net, grads: Net) -> Net:
        parts = [
            select(c, _rows(net, i, rows), _rows(grads, i, rows), cfg.kept)
            for i, (_, c) in enumerate(runs)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    net, _ = gradient_descent(
        start,
        x,
        y,
        cfg.finetune_lr,
        cfg.finetune_steps,
        pick=pick,
        mask_interval=cfg.mask_interval,
        progress=_phase(progress, "finetune", cfg.finetune_steps),
    )
    return net


def _rows(net: Net, run: int, rows: int) -> Net:
    sl = slice(run * rows, (run + 1) * rows)
    return net[0][sl], net[1][sl]


def _stats(values: torch.Tensor) -> dict[str, Any]:
    v = values.double()
    std = float(v.std()) if v.numel() > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "per_seed": v.tolist()}


def _summarise(cfg, seeds, problem, pretrained, runs, finetuned) -> dict:
    results = []
    for i, (k, criterion) in enumerate(runs):
        net = _rows(finetuned, i, cfg.seeds)
        target = target_net(problem, k)
        results.append(
            {
                "extra_neurons": k,
                "criterion": criterion,
                "test_loss": _stats(mean_squared_error(net, problem.x_test, target)),
                "l2": _stats(l2_distance(net, pretrained)),
                "start_test_loss": _stats(mean_squared_error(pretrained, problem.x_test, target)),
                "paper": {m: list(v) for m, v in PAPER[k][criterion].items()},
                "neurons_after": _neurons(net, 0),
            }
        )
    return {
        "config": asdict(cfg),
        "seeds": seeds,
        "kept": {"W": cfg.kept(STUDENT_NEURONS * INPUT_DIM), "a": cfg.kept(STUDENT_NEURONS)},
        "pretrain_test_loss": _stats(
            mean_squared_error(pretrained, problem.x_test, problem.teacher)
        ),
        "neurons": {
            "teacher": _neurons(problem.teacher, 0),
            "extra": _neurons(problem.extra, 0),
            "pretrained": _neurons(pretrained, 0),
        },
        "results": results,
        "verdicts": verdicts(results),
    }


def _neurons(net: Net, row: int) -> dict[str, list]:
    return {"w": net[0][row].double().tolist(), "a": net[1][row].double().tolist()}


def compare_paired(small: list[float], large: list[float]) -> str:
    """ "lower", "higher" or "unclear": the mean over seeds of small - large (the same seed is the
    same problem, so the seeds pair up) against twice its standard error. One seed has no error
    estimate and is judged by the sign alone."""
    diff = torch.tensor(small, dtype=torch.float64) - torch.tensor(large, dtype=torch.float64)
    mean = float(diff.mean())
    margin = 2 * float(diff.std()) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
    return "lower" if mean < -margin else "higher" if mean > margin else "unclear"


_SAY = {
    "test_loss": {"lower": "lower", "higher": "higher", "unclear": "not clearly different"},
    "l2": {"lower": "smaller", "higher": "larger", "unclear": "not clearly different"},
}
_VERDICT = {
    "agrees": "agrees with the paper",
    "partly agrees": "partly agrees with the paper",
    "disagrees": "disagrees with the paper",
    "inconclusive": "neither confirms nor contradicts the paper",
}


def verdicts(results: list[dict]) -> list[dict]:
    """Per extra-neuron setting, whether our seeds bear out the paper's claim that small weights
    give a lower test loss and a smaller L2 distance than large gradient. A difference counts
    when the paired mean exceeds two standard errors (`compare_paired`)."""
    out = []
    for k in sorted({r["extra_neurons"] for r in results}):
        by = {r["criterion"]: r for r in results if r["extra_neurons"] == k}
        found = {
            m: compare_paired(
                by["small_weights"][m]["per_seed"], by["large_gradient"][m]["per_seed"]
            )
            for m in ("test_loss", "l2")
        }
        agree = sum(v == "lower" for v in found.values())
        against = sum(v == "higher" for v in found.values())
        if agree == 2:
            word = "agrees"
        elif against and not agree:
            word = "disagrees"
        else:
            word = "partly agrees" if agree else "inconclusive"
        text = (
            f"{PAPER_TABLE[k]} (+{k} neuron{'s' if k > 1 else ''}), small weights against large "
            f"gradient: test loss {_SAY['test_loss'][found['test_loss']]}, "
            f"L2 {_SAY['l2'][found['l2']]}: {_VERDICT[word]}"
        )
        out.append({"extra_neurons": k, **found, "verdict": word, "text": text})
    return out


# ------------------------------------------------------------------------------- output files


def write_outputs(result: dict, out: Path) -> dict[str, Path]:
    """toy.json (every number), toy.md (the tables beside the paper's) and toy.png (Figure 7),
    each written atomically."""
    from reports.figures import save_text

    from .storage import write_json

    out = Path(out)
    paths = {"json": out / "toy.json", "md": out / "toy.md", "png": out / "toy.png"}
    write_json(paths["json"], result)
    neuron_figure(result, paths["png"])
    save_text(markdown(result, paths["png"].name), paths["md"])
    return paths


def fmt(stats_or_pair) -> str:
    """`mean ± std` of a stats dict or a (mean, std) pair, three significant digits."""
    if isinstance(stats_or_pair, dict):
        mean, std = stats_or_pair["mean"], stats_or_pair["std"]
    else:
        mean, std = stats_or_pair
    return f"{mean:.3g} ± {std:.2g}"


def describe(result: dict) -> str:
    """One paragraph on the settings behind the numbers."""
    cfg, kept = result["config"], result["kept"]
    mask = (
        f"re-selected every {cfg['mask_interval']} steps"
        if cfg["mask_interval"]
        else "chosen once at the start of finetuning"
    )
    return (
        f"{cfg['seeds']} seeds ({result['seeds'][0]}..{result['seeds'][-1]}); "
        f"{cfg['train_samples']} training and {cfg['test_samples']} test inputs per seed. "
        f"Pretraining: {cfg['pretrain_steps']} steps at lr {cfg['pretrain_lr']:g}, test loss on "
        f"the teacher {fmt(result['pretrain_test_loss'])}. Finetuning: {cfg['finetune_steps']} "
        f"steps at lr {cfg['finetune_lr']:g}, updating {kept['W']} of "
        f"{STUDENT_NEURONS * INPUT_DIM} first-layer and {kept['a']} of {STUDENT_NEURONS} "
        f"second-layer entries (density {cfg['density']:g}), mask {mask}."
    )


def markdown(result: dict, figure: str) -> str:
    lines = [
        "# Teacher-student toy (paper appendix C: Tables 7 and 8, Figure 7)",
        "",
        describe(result),
        "",
        "| extra neurons | criterion | test loss | paper | L2 from pretrained | paper "
        "| loss at start |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        k = r["extra_neurons"]
        lines.append(
            f"| {k} ({PAPER_TABLE[k]}) | {r['criterion'].replace('_', ' ')} "
            f"| {fmt(r['test_loss'])} | {fmt(r['paper']['test_loss'])} "
            f"| {fmt(r['l2'])} | {fmt(r['paper']['l2'])} | {fmt(r['start_test_loss'])} |"
        )
    lines += [
        "",
        "Mean ± std over seeds. The paper's claim in our numbers (a difference counts when the "
        "mean over seeds of small weights minus large gradient exceeds two standard errors):",
        "",
    ]
    lines += [f"- {v['text']}." for v in result["verdicts"]]
    lines += [
        "",
        "Compare the ordering, not the absolute values: the paper does not give its loss "
        "normalisation, learning-rate scale or per-layer count (see docs/toy.md).",
        "",
        f"![student neurons before and after finetuning, first seed]({figure})",
        "",
    ]
    return "\n".join(lines)


def neuron_figure(result: dict, path: Path) -> Path:
    """Figure 7: each neuron of the first seed drawn as the point |a_i| w_i (its function is
    sign(a_i) ReLU(|a_i| w_i . x)), red for a_i > 0 and blue for a_i < 0; hollow before and
    filled after finetuning, joined by a line; teacher neurons as stars, extra neurons as
    crosses, each with a dotted ray from the origin (student neurons along one ray add up). One
    row per extra-neuron setting, one column per criterion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reports.figures import save

    def points(neurons: dict) -> tuple[torch.Tensor, torch.Tensor]:
        w, a = torch.tensor(neurons["w"]), torch.tensor(neurons["a"])
        return w * a.abs()[:, None], a

    def colours(a: torch.Tensor) -> list[str]:
        return ["#d62728" if v > 0 else "#1f77b4" for v in a.tolist()]

    settings = sorted({r["extra_neurons"] for r in result["results"]})
    fig, axes = plt.subplots(
        len(settings),
        len(CRITERIA),
        figsize=(4.6 * len(CRITERIA), 4.3 * len(settings)),
        squeeze=False,
    )
    before, a0 = points(result["neurons"]["pretrained"])
    teacher, ta = points(result["neurons"]["teacher"])
    extra, ea = points(result["neurons"]["extra"])
    for r in result["results"]:
        ax = axes[settings.index(r["extra_neurons"])][CRITERIA.index(r["criterion"])]
        after, a1 = points(r["neurons_after"])
        for p, q in zip(before.tolist(), after.tolist(), strict=True):
            ax.plot([p[0], q[0]], [p[1], q[1]], color="0.6", lw=0.8, zorder=1)
        ax.scatter(*before.T, facecolors="none", edgecolors=colours(a0), s=30, label="pretrained")
        ax.scatter(*after.T, c=colours(a1), s=22, label="finetuned", zorder=3)
        k = r["extra_neurons"]
        ax.scatter(*teacher.T, marker="*", s=200, c=colours(ta), edgecolors="k", label="teacher")
        ax.scatter(
            *extra[:k].T, marker="X", s=130, c=colours(ea[:k]), edgecolors="k", label="extra"
        )
        for x, y in torch.cat([teacher, extra[:k]]).tolist():  # the directions to learn
            ax.plot([0, x], [0, y], color="0.5", ls=":", lw=0.9, zorder=0)
        ax.axhline(0, color="0.85", lw=0.8, zorder=0)
        ax.axvline(0, color="0.85", lw=0.8, zorder=0)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(
            f"{r['criterion'].replace('_', ' ')}, +{k} neuron{'s' if k > 1 else ''}\n"
            f"test loss {r['test_loss']['per_seed'][0]:.3g}, L2 {r['l2']['per_seed'][0]:.3g}",
            fontsize=10,
        )
        ax.set_xlabel("|a| w₁")
        ax.set_ylabel("|a| w₂")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(
        f"student neurons |a_i| w_i, seed {result['seeds'][0]} (red: a > 0, blue: a < 0)",
        fontsize=11,
    )
    fig.tight_layout()
    return save(fig, path)
