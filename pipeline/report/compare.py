"""`grr-coca compare`: collect the runs' values and checks, then write the report.

Writes `<out>/comparison.md` (and every number in `<out>/comparison.json`):
- a summary of the four validation sets' changes beside the paper's, with the fine-tuning average;
- for each validation set (CC12M from pre-training; MSCOCO, ROCO, Flickr30K from fine-tuning) the
  paper's Table 2 layout for the two bundles: each column the selected run's group over seeds (mean
  and 95% t-interval when there are several), the GRR - Baseline difference paired by seed, the
  relative change, the paper's numbers; a CoCa-loss consistency check per run; captions side by side;
  `<out>/curves-<dataset>.png`, the validation curves (mean over seeds, 95% band);
- every finished run grouped by what differs (`pipeline.report.groups`): means with intervals,
  paired differences against the Baseline design, factorial effects; `<out>/groups-<dataset>.png`;
- the joint fine-tune's runs (stage finetune_joint), grouped the same way (`joint.sampling`, design...),
  with each fine-tuning set's CoCa loss and scores.
Which runs: see `pipeline.report.runs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.evaluate.metrics import coca_loss_consistency, rounding_tolerance
from pipeline.model.config import BUNDLES
from pipeline.names import ENCODER_TITLES, EXPERIMENT, TABLE2_ORDER, phase_of
from pipeline.tracking import repo_root, sqlite_store, tracking_uri

from .groups import Analysis, Group, analyse, design_of, parse_design, seed_of
from .paper import PAPER_LAMBDAS, PAPER_TABLE2
from .plots import plot_curves, plot_groups
from .render import COLUMNS, GROUP_METRICS, DatasetResult, as_json, render_markdown
from .runs import (
    JOINT_METRICS,
    Selection,
    caption_samples,
    finished_joint_runs,
    finished_runs,
    run_lambdas,
    run_values,
    select_runs,
)

CAPTION_SAMPLES = 5  # images whose reference, Baseline and GRR captions the report shows side by side


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


def _table2_group(selection: Selection, analysis: Analysis, pinned: bool) -> Group:
    """The runs behind a Table 2 column: the selected run's group (its design and configuration, one
    run per seed), or the selected run alone when runs were pinned."""
    run = selection.run
    if not pinned:
        for group in analysis.groups:
            if any(r.info.run_id == run.info.run_id for r in group.runs.values()):
                return group
    return Group({}, design_of(run), {seed_of(run): run})


def collect(client, selections: dict[tuple[str, str], Selection], out_dir: Path, runs: dict[str, list],
            pinned: bool = False, reference: tuple[str, str, str] = BUNDLES["baseline"]) -> list[DatasetResult]:
    """Per validation set (Table 2 order): both columns' values over seeds, the paired differences,
    the consistency checks, every run grouped, the curves' and groups' PNGs, caption samples."""
    results = []
    for dataset in TABLE2_ORDER:
        sel = {e: selections[dataset, e] for e in COLUMNS}
        result = DatasetResult(dataset, sel, analysis=analyse(runs.get(dataset, []), reference=reference))
        column: dict[str, Group] = {}  # encoder -> the runs of its Table 2 column
        for encoder, s in sel.items():
            if s.run is not None:
                result.values[encoder] = run_values(s.run)
                column[encoder] = _table2_group(s, result.analysis, pinned)
                result.seeds[encoder] = dict(column[encoder].runs)
                result.estimates[encoder] = column[encoder].summary()
                con, cap, source = run_lambdas(s.run, dataset)
                check = _consistency(result.values[encoder], (con, cap), None)
                if check:
                    result.consistency[encoder] = {**check, "lambda_source": source}
            paper, lambdas = PAPER_TABLE2[dataset][encoder], PAPER_LAMBDAS[phase_of(dataset)]
            check = _consistency(paper, lambdas, rounding_tolerance(paper["perplexity"], *lambdas))
            result.consistency[f"paper-{encoder}"] = {**check, "lambda_source": "paper"}
        if len(column) == 2:
            result.paired = column["grr"].paired_with(column["baseline"])
            samples = {e: caption_samples(client, sel[e].run) for e in COLUMNS}
            shared = [i for i in samples["grr"] if i in samples["baseline"]][:CAPTION_SAMPLES]
            result.captions = [{"image_id": i, "references": samples["grr"][i]["references"],
                                **{e: samples[e][i]["generated"] for e in COLUMNS}} for i in shared]
        for name in (f"curves-{dataset}.png", f"groups-{dataset}.png"):
            if (out_dir / name).exists():
                (out_dir / name).unlink()  # never leave a stale plot of runs no longer selected
        groups = {ENCODER_TITLES[e]: list(result.seeds[e].values()) for e in COLUMNS if e in result.seeds}
        if groups and plot_curves(client, dataset, groups, out_dir / f"curves-{dataset}.png"):
            result.curves = f"curves-{dataset}.png"
        a = result.analysis
        if len(a.groups) > 1 and plot_groups(dataset, [g.label for g in a.groups], a.summary, list(GROUP_METRICS),
                                              out_dir / f"groups-{dataset}.png"):
            result.groups_plot = f"groups-{dataset}.png"
        results.append(result)
    return results


def compare(tracking_uri: str | None = None, out_dir: str | Path = "reports", runs: dict[str, list[str]] | None = None,
            experiment: str = EXPERIMENT, reference: str = "baseline") -> Path:
    """Write `<out_dir>/comparison.md`, `comparison.json` and `curves-<dataset>.png`; return the markdown's path.

    `runs` pins runs by id per encoder, e.g. {"grr": ["<pretrain run id>"], "baseline": ["<id>", "<id>"]}
    (see `pipeline.report.runs`). Missing runs are reported, not raised; an unknown pinned id raises
    ValueError, an unreachable tracking server RuntimeError.
    """
    from mlflow import MlflowClient

    design = parse_design(reference)  # ValueError before anything is read or written
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
    results = collect(client, selections, out_dir, finished_runs(client, experiment_id), pinned=bool(runs),
                      reference=design)
    joint = analyse(finished_joint_runs(client, experiment_id), metrics=[k for k, _, _ in JOINT_METRICS],
                    reference=design)
    md = out_dir / "comparison.md"
    md.write_text(render_markdown(results, uri, experiment, notes, joint))
    report = {**as_json(results, uri, experiment, joint), "experiment_found": experiment_id is not None}
    (out_dir / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    return md
