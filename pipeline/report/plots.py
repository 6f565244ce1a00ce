"""The validation curves of both encoders, one PNG per validation set (`curves-<dataset>.png`).

matplotlib's Agg back end: no display is needed, and none is opened on machines that have one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.names import DATASET_TITLES, ENCODER_TITLES, phase_of

from .render import COLUMNS, PHASE_TITLES
from .runs import curve

CURVE_METRICS = ("coca_loss", "perplexity", "contrastive_loss")  # one panel each, from val/<metric>
STYLES = {"baseline": "o-", "grr": "s-"}


def plot_curves(client, dataset: str, runs: dict[str, Any], path: Path) -> bool:
    """val/coca_loss, val/perplexity, val/contrastive_loss against step for each encoder's run.

    Writes `path` only when some run has a curve; returns whether it did.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = False
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5 * len(CURVE_METRICS), 3.8))
    for ax, key in zip(axes, CURVE_METRICS):
        for encoder in COLUMNS:
            run = runs.get(encoder)
            if run is None:
                continue
            steps, values = curve(client, run.info.run_id, f"val/{key}")
            if steps:
                ax.plot(steps, values, STYLES[encoder], markersize=3, label=ENCODER_TITLES[encoder])
                drawn = True
        if key == "perplexity":
            ax.set_yscale("log")
        ax.set_title(f"val/{key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"{DATASET_TITLES[dataset]} validation ({PHASE_TITLES[phase_of(dataset)]})")
    fig.tight_layout()
    if drawn:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn
