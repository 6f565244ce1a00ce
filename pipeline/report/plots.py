"""The report's figures, drawn with matplotlib's Agg back end (no display needed, none opened):
- `curves-<dataset>.png`: the validation curves of each compared group, the mean over seeds with a
  95% t-band where there are several;
- `groups-<dataset>.png`: per metric, each group's mean over seeds with its 95% t-interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.names import DATASET_TITLES, phase_of

from .render import PHASE_TITLES
from .runs import curve
from .stats import estimate

CURVE_METRICS = ("coca_loss", "perplexity", "contrastive_loss")  # one panel each, from val/<metric>
MARKERS = "os^vD<>p*h"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(client, runs: list, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps every run logged, the mean there, and the 95% t-interval (the mean itself for one run)."""
    histories = [dict(zip(*curve(client, run.info.run_id, key))) for run in runs]
    histories = [h for h in histories if h]
    if not histories:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(h) for h in histories)))
    means, lows, highs = [], [], []
    for step in steps:
        e = estimate([h[step] for h in histories])
        means.append(e.mean)
        lows.append(e.low if e.low is not None else e.mean)
        highs.append(e.high if e.high is not None else e.mean)
    return steps, means, lows, highs


def plot_curves(client, dataset: str, groups: dict[str, list[Any]], path: Path) -> bool:
    """val/coca_loss, val/perplexity, val/contrastive_loss against step, one line (and band) per group.

    Writes `path` only when some run has a curve; returns whether it did.
    """
    plt = _pyplot()
    drawn = False
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5 * len(CURVE_METRICS), 3.8))
    for ax, key in zip(axes, CURVE_METRICS):
        for i, (label, runs) in enumerate(groups.items()):
            steps, means, lows, highs = _band(client, runs, f"val/{key}")
            if not steps:
                continue
            n = len(runs)
            line, = ax.plot(steps, means, f"{MARKERS[i % len(MARKERS)]}-", markersize=3,
                            label=label + (f" (mean of {n} seeds)" if n > 1 else ""))
            if n > 1:
                ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2)
            drawn = True
        if key == "perplexity":
            ax.set_yscale("log")
        ax.set_title(f"val/{key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{DATASET_TITLES[dataset]} validation ({PHASE_TITLES[phase_of(dataset)]})")
    fig.tight_layout()
    if drawn:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def plot_groups(dataset: str, labels: list[str], summary: dict[str, dict], metrics: list[tuple[str, str]],
                path: Path) -> bool:
    """Per metric, each group's mean with its 95% t-interval as a whisker (none for a single seed)."""
    metrics = [(k, label) for k, label in metrics if any(k in summary[g] for g in labels)]
    if not metrics or not labels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 2, 0.45 * len(labels) + 1.6),
                             sharey=True, squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        for y, group in enumerate(labels):
            e = summary[group].get(key)
            if e is None:
                continue
            err = [[e.mean - e.low], [e.high - e.mean]] if e.low is not None else None
            ax.errorbar([e.mean], [y], xerr=err, fmt="o", capsize=3, color="C0" if y else "C3")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(labels)))
    axes[0][0].set_yticklabels(labels, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"{DATASET_TITLES[dataset]}: group means over seeds, 95% t-intervals")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
