"""gradweight.md and its figures for one gradient-weight study folder (`clbench analyze
grad-weight`): the table of the ratio r per tensor and phase, the |w|-|grad| scatter grid and r
over depth. Reads ratios.csv, samples.npz and config.json only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import figures
from .rundata import ReportError

PHASES = ("early", "middle", "late")
_PHASE_COLOURS = {"early": "tab:blue", "middle": "tab:orange", "late": "tab:green"}
_PART_MARKERS = {"q": "o", "k": "s", "v": "^", "all": "D"}


class NotAStudyDir(ReportError):
    """The folder holds no gradient-weight study (no ratios.csv)."""


def load_ratios(root: str | Path) -> pd.DataFrame:
    """ratios.csv with a ``key`` column (``tensor`` or ``tensor:part``), in file order."""
    path = Path(root) / "ratios.csv"
    if not path.is_file():
        raise NotAStudyDir(
            f"{root} holds no gradient-weight study (no ratios.csv): pass the --out of "
            "`clbench analyze grad-weight`"
        )
    ratios = pd.read_csv(path)
    ratios["key"] = [
        t if p == "all" else f"{t}:{p}"
        for t, p in zip(ratios["tensor"], ratios["part"], strict=True)
    ]
    return ratios


def ratio_table(ratios: pd.DataFrame) -> pd.DataFrame:
    """One row per tensor key (file order): tensor, part, layer, r at each phase and the paper's
    Table 1 value (NaN where it reports none). Phase columns are named ``early (step 1)`` etc."""
    steps = ratios.groupby("phase")["step"].first()
    keys = list(dict.fromkeys(ratios["key"]))
    first = ratios.drop_duplicates("key").set_index("key").loc[keys]
    table = pd.DataFrame(
        {"tensor": first["tensor"], "part": first["part"], "layer": first["layer"]}, index=keys
    )
    for phase in PHASES:
        if phase in steps:
            sub = ratios[ratios["phase"] == phase].set_index("key")["r"]
            table[f"{phase} (step {steps[phase]})"] = sub.reindex(keys).to_numpy()
    paper = ratios[ratios["phase"] == "early"].set_index("key")["paper_r"]
    table["paper (early)"] = paper.reindex(keys).to_numpy()
    return table


def fmt_r(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3g}"


def _samples(root: Path) -> dict[str, np.ndarray]:
    with np.load(root / "samples.npz") as npz:
        return {k: npz[k] for k in npz.files}


def plot_scatter(ratios: pd.DataFrame, samples: dict[str, np.ndarray], path: Path) -> None:
    """Rows: the sampled tensors; columns: early, middle, late. x |w|, y |grad|, linear axes from
    zero, so the hyperbola (large gradients only at small weights) shows as mass hugging both
    axes. Red: the top-0.01% |grad| entries; dashed: max |w| of the 80% smallest |grad|;
    dotted red: median |w| of the top set (r is dotted / dashed)."""
    keys = list(dict.fromkeys(k.split("|")[0] for k in samples))
    phases = [p for p in PHASES if any(f"|{p}|" in k for k in samples)]
    fig, axes = plt.subplots(
        len(keys),
        len(phases),
        figsize=(4.0 * len(phases), 2.9 * len(keys)),
        dpi=100,
        squeeze=False,
        layout="constrained",
    )
    rows = ratios.set_index(["key", "phase"])
    for i, key in enumerate(keys):
        for j, phase in enumerate(phases):
            ax = axes[i, j]
            w, g = samples[f"{key}|{phase}|w"], samples[f"{key}|{phase}|grad"]
            tw, tg = samples[f"{key}|{phase}|top_w"], samples[f"{key}|{phase}|top_grad"]
            row = rows.loc[(key, phase)]
            ax.scatter(w, g, s=2, alpha=0.35, color="tab:blue", linewidths=0, rasterized=True)
            ax.scatter(tw, tg, s=22, color="tab:red", edgecolors="black", linewidths=0.4, zorder=3)
            ax.axvline(row["max_w_bottom"], color="0.3", ls="--", lw=1)
            ax.axvline(row["median_w_top"], color="tab:red", ls=":", lw=1.2)
            ax.set_xlim(0, max(float(w.max(initial=0)), float(tw.max(initial=0))) * 1.03 or 1)
            ax.set_ylim(0, max(float(g.max(initial=0)), float(tg.max(initial=0))) * 1.05 or 1)
            ax.ticklabel_format(axis="both", style="sci", scilimits=(-2, 3))
            ax.tick_params(labelsize=8)
            ax.xaxis.get_offset_text().set_fontsize(8)
            ax.yaxis.get_offset_text().set_fontsize(8)
            ax.text(
                0.97,
                0.95,
                f"r = {fmt_r(row['r'])}",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=10,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"},
            )
            ax.set_title(f"{key}\n{phase} (step {int(row['step'])})", fontsize=9)
            ax.set_xlabel("|w|", fontsize=9)
            ax.set_ylabel("|grad|", fontsize=9)
            ax.grid(alpha=0.25)
    fig.suptitle(
        "|grad| against |w| per tensor. Blue: random sample of entries; red: top-0.01% |grad|;\n"
        "dashed: max |w| of the 80% smallest |grad|; dotted red: median |w| of the top set; "
        "r = dotted / dashed",
        fontsize=11,
    )
    figures.save(fig, path)


def plot_ratio_depth(ratios: pd.DataFrame, path: Path) -> None:
    """r of every tensor over depth, one panel per phase, log scale; the paper's Table 1 values
    (whole qkv, early) as black stars."""
    tensors = list(dict.fromkeys(ratios["tensor"]))
    pos = {t: i for i, t in enumerate(tensors)}
    labels = [
        f"block {int(layer)}" if not pd.isna(layer) else t.removesuffix(".weight")
        for t, layer in ratios.drop_duplicates("tensor")
        .set_index("tensor")
        .loc[tensors, "layer"]
        .items()
    ]
    phases = [p for p in PHASES if p in set(ratios["phase"])]
    fig, axes = plt.subplots(
        1, len(phases), figsize=(4.6 * len(phases), 3.9), dpi=100, sharey=True, squeeze=False
    )
    positive = ratios["r"][ratios["r"] > 0]
    for ax, phase in zip(axes[0], phases, strict=True):
        sub = ratios[ratios["phase"] == phase]
        for part, group in sub.groupby("part", sort=False):
            x = [pos[t] for t in group["tensor"]]
            label = "whole qkv" if part == "all" and len(set(sub["part"])) > 1 else part
            ax.plot(x, group["r"], marker=_PART_MARKERS.get(part, "o"), lw=1.2, label=label)
        paper = sub.dropna(subset=["paper_r"])
        if not paper.empty:
            ax.scatter(
                [pos[t] for t in paper["tensor"]],
                paper["paper_r"],
                marker="*",
                s=140,
                color="black",
                zorder=4,
                label="paper, Table 1",
            )
        step = int(sub["step"].iloc[0])
        ax.set_title(f"{phase} finetuning (step {step})", fontsize=10)
        ax.set_xticks(
            range(len(tensors)),
            labels,
            rotation=30 if len(tensors) > 5 else 0,
            ha="right" if len(tensors) > 5 else "center",
            fontsize=8,
        )
        if len(positive):
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(axis="y", labelsize=8)
    axes[0, 0].set_ylabel("r (smaller = more hyperbolic)", fontsize=9)
    axes[0, -1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    figures.save(fig, path)


def _settings(config: dict) -> list[str]:
    cfg, study = config["config"], config["study"]
    pre = config.get("pretrain")
    if cfg.get("weights"):
        start = f"weights file `{Path(cfg['weights']).name}`"
    elif cfg.get("pretrained"):
        start = "timm's pretrained weights"
    else:
        start = "random initialisation"
    if pre:
        start += (
            f", then pretrained densely on `{pre['task']}` for {pre['epochs']} epochs "
            f"(test accuracy {pre['test_accuracy']:.1f}%)"
        )
    acc = config.get("test_accuracy_after")
    rows = [
        ("model", f"`{cfg['model']}` ({config.get('timm_model', '')})"),
        ("starting weights", start),
        ("finetuning task", f"`{cfg['tasks'][0]}`"),
        ("optimizer", "AdamW, dense, constant learning rate"),
        ("steps", study["steps"]),
        ("learning rate", f"{cfg['lr'][0]:g}"),
        ("weight decay", f"{study['weight_decay']:g}"),
        ("label smoothing", f"{cfg['label_smoothing']:g}"),
        ("batch size", cfg["batch_size"]),
        ("image size", cfg.get("image_size") or "model default"),
        ("seed", cfg["seed"]),
        ("device", config.get("device")),
        (
            "test accuracy after finetuning",
            "—" if acc is None else f"{acc:.1f}% on {config.get('test_samples')} test images",
        ),
    ]
    lines = ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return lines + [""]


def render(config: dict, table: pd.DataFrame) -> str:
    cfg = config["config"]
    phase_cols = [c for c in table.columns if c.split(" ")[0] in PHASES]
    has_paper = table["paper (early)"].notna().any()
    header = ["tensor", "part", *phase_cols] + (["paper, Table 1 (early)"] if has_paper else [])
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for _, row in table.iterrows():
        cells = [f"`{row['tensor']}`", "whole" if row["part"] == "all" else row["part"]]
        cells += [fmt_r(row[c]) for c in phase_cols]
        if has_paper:
            cells.append(fmt_r(row["paper (early)"]))
        lines.append("| " + " | ".join(cells) + " |")
    out = [
        f"# Gradient-weight study: `{cfg['model']}` finetuned on `{cfg['tasks'][0]}`",
        "",
        "How large are the weights whose gradients are largest? The NanoAdam paper (appendix A/B) "
        "finds that when a pretrained model is finetuned, the entries with the largest |grad| sit "
        "at small |w|: plotted as |grad| against |w|, a tensor looks like a hyperbola.",
        "",
        *_settings(config),
        "## The ratio r",
        "",
        f"{config['study']['ratio']}. Smaller r means a more hyperbolic relation: the weights "
        "that receive the largest gradients are small compared with the weights that receive "
        "small ones. When a tensor has fewer than 10,000 entries its top set is its single "
        "largest gradient, so r is noisier there. At a phase's step the weights are those "
        "before that step's update and the gradient is the one computed at them.",
        "",
        "Fused attention weights (`attn.qkv.weight`) are split into q, k and v; `whole` is the "
        "fused weight as one tensor, which is what the paper's Table 1 reports.",
        "",
        *lines,
        "",
    ]
    if has_paper:
        out += [
            "The paper's values are for CIFAR-10 at the start of finetuning with timm's "
            "pretrained weights; they compare with ours only in that setting.",
            "",
        ]
    out += [
        "## |grad| against |w|",
        "",
        "![scatter](figures/scatter.png)",
        "",
        "Each panel: a random sample of the tensor's entries (blue; the same entries in every "
        "column), all entries of the top-0.01% |grad| set (red), max |w| of the 80% smallest "
        "|grad| (dashed) and median |w| of the top set (dotted red): r is dotted over dashed. "
        "Both axes are linear and start at zero, as in the paper's figures: a hyperbolic "
        "relation shows as points hugging both axes, with the largest gradients at the left. "
        "(On log axes the same picture becomes a diffuse cloud that is harder to read.) Each "
        "panel has its own scales.",
        "",
        "## r over depth",
        "",
        "![r over depth](figures/ratios.png)",
        "",
        "r per tensor (log scale), one panel per phase"
        + ("; black stars: the paper's Table 1." if has_paper else "."),
        "",
        "Files: `ratios.csv` (r and the thresholds behind it), `samples.npz` (the plotted points, "
        "keys `TENSOR|PHASE|w`, `|grad`, `|top_w`, `|top_grad`), `config.json`.",
        "",
    ]
    return "\n".join(out)


def write_gradweight_report(root: str | Path) -> Path:
    """Write gradweight.md and figures/ into the study folder; returns the page's path."""
    root = Path(root)
    ratios = load_ratios(root)
    config = json.loads((root / "config.json").read_text())
    plot_scatter(ratios, _samples(root), root / "figures" / "scatter.png")
    plot_ratio_depth(ratios, root / "figures" / "ratios.png")
    page = render(config, ratio_table(ratios))
    return figures.save_text(page, root / "gradweight.md")
