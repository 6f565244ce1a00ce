"""`grr-coca compare`: collect the selected runs' values and checks, then write the report.

Writes `<out>/comparison.md` (and the same numbers as `<out>/comparison.json`): for each validation set
(CC12M from the pre-training run; MSCOCO, ROCO, Flickr30K from the fine-tuning runs) the paper's Table 2
layout, CoCa loss, perplexity and contrastive loss for both encoders with the change
(GRR - Baseline) / Baseline, then caption loss, BLEU-4, CIDEr and retrieval recall@1/5/10, beside the
paper's own Table 2 numbers; a CoCa-loss consistency check per row; and `<out>/curves-<dataset>.png`,
the validation curves of both encoders. Which runs: see `pipeline.report.runs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.evaluate.metrics import coca_loss_consistency, rounding_tolerance
from pipeline.names import EXPERIMENT, TABLE2_ORDER, phase_of
from pipeline.tracking import repo_root, sqlite_store, tracking_uri

from .paper import PAPER_LAMBDAS, PAPER_TABLE2
from .plots import plot_curves
from .render import COLUMNS, DatasetResult, as_json, render_markdown
from .runs import Selection, run_lambdas, run_values, select_runs


def default_tracking_uri() -> str:
    """The trainer's: $MLFLOW_TRACKING_URI, else sqlite:///<repository>/mlflow.db."""
    return tracking_uri(repo_root())


def _consistency(values: dict[str, float], lambdas: tuple[float, float], tol: float | None) -> dict[str, Any] | None:
    """CoCa loss against λ_con·L_con + λ_cap·ln(perplexity); None when a term is not logged."""
    if not all(k in values for k in ("coca_loss", "contrastive_loss", "perplexity")) or values["perplexity"] <= 0:
        return None
    if tol is None:  # our runs log full precision: only floating-point error is allowed
        tol = 1e-6 * max(1.0, abs(values["coca_loss"]))
    c = coca_loss_consistency(values["coca_loss"], values["contrastive_loss"], values["perplexity"], *lambdas, tol=tol)
    return {"lambda_con": lambdas[0], "lambda_cap": lambdas[1], "predicted": c.predicted, "residual": c.residual,
            "tolerance": c.tolerance, "ok": c.ok}


def collect(client, selections: dict[tuple[str, str], Selection], out_dir: Path) -> list[DatasetResult]:
    """Per validation set (Table 2 order): both runs' values, the consistency checks, the curves' PNG."""
    results = []
    for dataset in TABLE2_ORDER:
        sel = {e: selections[dataset, e] for e in COLUMNS}
        result = DatasetResult(dataset, sel)
        for encoder, s in sel.items():
            if s.run is not None:
                result.values[encoder] = run_values(s.run)
                con, cap, source = run_lambdas(s.run, dataset)
                check = _consistency(result.values[encoder], (con, cap), None)
                if check:
                    result.consistency[encoder] = {**check, "lambda_source": source}
            paper, lambdas = PAPER_TABLE2[dataset][encoder], PAPER_LAMBDAS[phase_of(dataset)]
            check = _consistency(paper, lambdas, rounding_tolerance(paper["perplexity"], *lambdas))
            result.consistency[f"paper-{encoder}"] = {**check, "lambda_source": "paper"}
        png = out_dir / f"curves-{dataset}.png"
        if png.exists():
            png.unlink()  # never leave a stale plot of runs no longer selected
        runs = {e: s.run for e, s in sel.items() if s.run is not None}
        if runs and plot_curves(client, dataset, runs, png):
            result.curves = png.name
        results.append(result)
    return results


def compare(tracking_uri: str | None = None, out_dir: str | Path = "reports", runs: dict[str, list[str]] | None = None,
            experiment: str = EXPERIMENT) -> Path:
    """Write `<out_dir>/comparison.md`, `comparison.json` and `curves-<dataset>.png`; return the markdown's path.

    `runs` pins runs by id per encoder, e.g. {"grr": ["<pretrain run id>"], "baseline": ["<id>", "<id>"]}
    (see `pipeline.report.runs`). Missing runs are reported, not raised; an unknown pinned id raises
    ValueError, an unreachable tracking server RuntimeError.
    """
    from mlflow import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    db = sqlite_store(uri)
    experiment_id = None
    client = None
    if db is not None and not db.exists():  # do not let MlflowClient create an empty store
        notes.append(f"**No tracking store**: `{db}` does not exist; no run has been logged there yet.")
        if runs:
            raise ValueError(f"pinned runs given, but the tracking store {db} does not exist")
    else:
        client = MlflowClient(uri)
        try:
            exp = client.get_experiment_by_name(experiment)
        except Exception as e:  # noqa: BLE001 - any failure here means: no usable tracking server
            raise RuntimeError(f"MLflow tracking at {uri} cannot be reached: {type(e).__name__}: {e}") from None
        if exp is None:
            notes.append(f"**No experiment** `{experiment}` at `{uri}`: no run has been logged there yet.")
        else:
            experiment_id = exp.experiment_id
    selections = select_runs(client, experiment_id, runs, f"experiment {experiment} at {uri}")
    results = collect(client, selections, out_dir)
    md = out_dir / "comparison.md"
    md.write_text(render_markdown(results, uri, experiment, notes))
    report = {**as_json(results, uri, experiment), "experiment_found": experiment_id is not None}
    (out_dir / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    return md
