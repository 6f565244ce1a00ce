"""`grr-coca compare`: GRR-CoCa against Baseline CoCa, from the runs the trainer logged to MLflow.

Writes `<out>/comparison.md` (and the same numbers as `<out>/comparison.json`): for each validation set
(CC12M from the pre-training run; MSCOCO, ROCO, Flickr30K from the fine-tuning runs) the paper's Table 2
layout, CoCa loss, perplexity and contrastive loss for both encoders with the change
(GRR - Baseline) / Baseline, then caption loss, BLEU-4, CIDEr and retrieval recall@1/5/10, beside the
paper's own Table 2 numbers; a CoCa-loss consistency check per row; and `<out>/curves-<dataset>.png`,
the validation curves of both encoders.

Which runs (experiment `grr-coca`; runs named `pretrain-<encoder>` and `finetune-<dataset>-<encoder>`,
encoder from the `encoder` tag, else from the name):
- by default, for each stage and encoder, the latest FINISHED run;
- `--grr ID` / `--baseline ID` (repeatable) pin runs by id. A pinned fine-tuning run is used for its
  own dataset. A pinned pre-training run is used for CC12M, and for each fine-tuning set the latest
  finished run tagged `pretrain_run_id=<ID>` (fine-tuned from it) is used, unless pinned as well.
A stage with no run is reported as missing, with the command that produces it; nothing fails.

Values of a run: `final/<metric>` (what the stage outputs: with early stopping, the best epoch's),
else the last `val/<metric>`; `eval/<metric>` for the captioning and retrieval scores.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import coca_loss_consistency, rounding_tolerance

EXPERIMENT = "grr-coca"
ENCODERS = ("baseline", "grr")
ENCODER_TITLES = {"baseline": "Baseline CoCa", "grr": "GRR-CoCa"}
DATASETS = ("cc12m", "mscoco", "roco", "flickr30k")  # the paper's Table 2 order
DATASET_TITLES = {"cc12m": "CC12M", "mscoco": "MSCOCO", "roco": "ROCO", "flickr30k": "Flickr30K"}
DEFAULT_LAMBDAS = {"pretrain": (2.0, 1.0), "finetune": (1.0, 2.0)}  # (lambda_con, lambda_cap), SPEC

# (key, label, lower is better); the trainer logs val/<key> and final/<key>, the evaluation eval/<key>.
VAL_METRICS = (("coca_loss", "CoCa loss", True), ("perplexity", "perplexity", True),
               ("contrastive_loss", "contrastive loss", True), ("caption_loss", "caption loss", True))
EVAL_METRICS = (("bleu4", "BLEU-4", False), ("cider", "CIDEr", False),
                ("i2t_r1", "image→text R@1 (%)", False), ("i2t_r5", "image→text R@5 (%)", False),
                ("i2t_r10", "image→text R@10 (%)", False), ("t2i_r1", "text→image R@1 (%)", False),
                ("t2i_r5", "text→image R@5 (%)", False), ("t2i_r10", "text→image R@10 (%)", False))
CURVE_METRICS = ("coca_loss", "perplexity", "contrastive_loss")

# The paper's Table 2 (validation sets), as printed; its "change" column is (GRR - Baseline) / Baseline in %.
PAPER_TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "cc12m": {"baseline": {"coca_loss": 3.2864, "perplexity": 12.9976, "contrastive_loss": 0.3610},
              "grr": {"coca_loss": 3.0516, "perplexity": 12.5151, "contrastive_loss": 0.2626},
              "change": {"coca_loss": -7.15, "perplexity": -3.71, "contrastive_loss": -27.25}},
    "mscoco": {"baseline": {"coca_loss": 4.6955, "perplexity": 5.4669, "contrastive_loss": 1.2971},
               "grr": {"coca_loss": 4.4090, "perplexity": 5.1523, "contrastive_loss": 1.1296},
               "change": {"coca_loss": -6.10, "perplexity": -5.75, "contrastive_loss": -12.92}},
    "roco": {"baseline": {"coca_loss": 7.0609, "perplexity": 12.0258, "contrastive_loss": 2.0900},
             "grr": {"coca_loss": 6.8708, "perplexity": 11.7377, "contrastive_loss": 1.9479},
             "change": {"coca_loss": -2.69, "perplexity": -2.40, "contrastive_loss": -6.80}},
    "flickr30k": {"baseline": {"coca_loss": 5.4383, "perplexity": 7.9568, "contrastive_loss": 1.2908},
                  "grr": {"coca_loss": 5.0111, "perplexity": 7.3686, "contrastive_loss": 1.0164},
                  "change": {"coca_loss": -7.86, "perplexity": -7.39, "contrastive_loss": -21.25}},
}


def stage_of(dataset: str) -> str:
    return "pretrain" if dataset == "cc12m" else "finetune"


def run_name(dataset: str, encoder: str) -> str:
    """The trainer's run name for a validation set's stage."""
    return f"pretrain-{encoder}" if dataset == "cc12m" else f"finetune-{dataset}-{encoder}"


def default_tracking_uri() -> str:
    """The trainer's: $MLFLOW_TRACKING_URI, else sqlite:///<repository>/mlflow.db."""
    from pipeline.tracking import repo_root, tracking_uri

    return tracking_uri(repo_root())


# ------------------------------------------------------------------------------------------------
# Selecting runs
# ------------------------------------------------------------------------------------------------


@dataclass
class Selection:
    """The run chosen for one (validation set, encoder), or why there is none."""

    dataset: str
    encoder: str
    run: Any = None  # mlflow.entities.Run
    how: str = ""  # how it was chosen
    missing: str = ""  # when run is None: what is missing and how to produce it


def _name(run) -> str:
    return run.info.run_name or run.data.tags.get("mlflow.runName", "")


def _identify(run) -> tuple[str | None, str | None]:
    """(dataset, encoder) of a run from its tags (`encoder`, `phase`, `dataset`), else from its name."""
    name, tags = _name(run), run.data.tags
    parts = name.split("-")
    encoder = tags.get("encoder") or (parts[-1] if parts[-1] in ENCODERS else None)
    if tags.get("phase") == "pretrain" or parts[0] == "pretrain":
        return "cc12m", encoder
    dataset = tags.get("dataset")
    if dataset not in DATASET_TITLES and len(parts) >= 3 and parts[0] == "finetune":
        dataset = parts[1]
    return (dataset if dataset in DATASET_TITLES else None), encoder


def _all_runs(client, experiment_id: str) -> list:
    """Every active run of the experiment, newest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs += list(page)
        token = page.token
        if not token:
            return sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)


def _hint(encoder: str, preset: str | None) -> str:
    cmd = f"dvc exp run -S model.encoder={encoder}" + (f" -S preset={preset}" if preset else "")
    return f"run `{cmd}`"


def select_runs(client, experiment_id: str | None, pins: dict[str, list[str]] | None = None,
                where: str = "") -> dict[tuple[str, str], Selection]:
    """The run for every (validation set, encoder): pinned ids first, else the latest finished run."""
    pins = pins or {}
    runs = _all_runs(client, experiment_id) if experiment_id is not None else []
    finished = [r for r in runs if r.info.status == "FINISHED"]
    chosen: dict[tuple[str, str], Selection] = {}
    from_pretrain: dict[str, str] = {}  # encoder -> pinned pre-training run id
    for encoder, ids in pins.items():
        if encoder not in ENCODERS:
            raise ValueError(f"pinned runs: unknown encoder {encoder!r}; allowed: {', '.join(ENCODERS)}")
        for run_id in ids:
            try:
                run = client.get_run(run_id)
            except Exception as e:  # noqa: BLE001 - MlflowException for an unknown id
                raise ValueError(f"--{encoder} {run_id}: no such run in {where or 'the tracking store'} ({e})") from None
            dataset, run_encoder = _identify(run)
            if dataset is None:
                raise ValueError(f"--{encoder} {run_id}: run `{_name(run)}` is neither a pre-training nor a fine-tuning "
                                 f"run (expected a name like pretrain-{encoder} or finetune-mscoco-{encoder})")
            if run_encoder is not None and run_encoder != encoder:
                raise ValueError(f"--{encoder} {run_id}: run `{_name(run)}` is a {run_encoder} run")
            if (dataset, encoder) in chosen:
                raise ValueError(f"--{encoder} {run_id}: a {DATASET_TITLES[dataset]} run of this encoder is pinned "
                                 f"twice ({chosen[dataset, encoder].run.info.run_id} and {run_id})")
            status = "" if run.info.status == "FINISHED" else f", status {run.info.status}"
            chosen[dataset, encoder] = Selection(dataset, encoder, run, f"pinned by --{encoder}{status}")
            if dataset == "cc12m":
                from_pretrain[encoder] = run_id

    missing = []
    for dataset in DATASETS:
        for encoder in ENCODERS:
            if (dataset, encoder) in chosen:
                continue
            name = run_name(dataset, encoder)
            candidates = [r for r in finished if _identify(r) == (dataset, encoder)]
            how = f"latest finished `{name}`"
            parent = from_pretrain.get(encoder) if dataset != "cc12m" else None
            if parent:
                candidates = [r for r in candidates if r.data.tags.get("pretrain_run_id") == parent]
                how += " fine-tuned from the pinned pre-training run"
            chosen[dataset, encoder] = Selection(dataset, encoder, candidates[0] if candidates else None, how)
            if not candidates:
                missing.append((dataset, encoder, name, parent))

    # Say what is missing, with the command that makes it (in the preset of the runs that exist).
    presets = {s.run.data.tags.get("preset") for s in chosen.values() if s.run is not None} - {None}
    for dataset, encoder, name, parent in missing:
        other = chosen[dataset, ENCODERS[1 - ENCODERS.index(encoder)]].run
        preset = other.data.tags.get("preset") if other is not None else next(iter(presets)) if len(presets) == 1 else None
        tagged = f" tagged pretrain_run_id={parent}" if parent else ""
        chosen[dataset, encoder].how = ""
        chosen[dataset, encoder].missing = (f"{ENCODER_TITLES[encoder]}: no finished run `{name}`{tagged} in {where} "
                                            f"— {_hint(encoder, preset)}")
    return chosen


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------


def run_values(run) -> dict[str, float]:
    """final/<m> (else the last val/<m>) for the validation metrics, eval/<m> for the scores."""
    m = run.data.metrics
    out = {}
    for key, _, _ in VAL_METRICS:
        value = m.get(f"final/{key}", m.get(f"val/{key}"))
        if value is not None:
            out[key] = value
    for key, _, _ in EVAL_METRICS:
        if f"eval/{key}" in m:
            out[key] = m[f"eval/{key}"]
    return out


def run_lambdas(run, dataset: str) -> tuple[float, float, str]:
    """(lambda_con, lambda_cap, source): the run's logged `<phase>.lambda_*` params, else the SPEC's."""
    phase = stage_of(dataset)
    params = run.data.params
    try:
        return (float(params[f"{phase}.lambda_con"]), float(params[f"{phase}.lambda_cap"]),
                "run params")
    except (KeyError, ValueError):
        return (*DEFAULT_LAMBDAS[phase], "defaults")


def change_pct(baseline: float | None, grr: float | None) -> float | None:
    """(GRR - Baseline) / Baseline, in percent; None when either is missing or Baseline is 0."""
    if baseline is None or grr is None or baseline == 0 or not math.isfinite(baseline) or not math.isfinite(grr):
        return None
    return 100.0 * (grr - baseline) / baseline


def curve(client, run_id: str, key: str) -> tuple[list[int], list[float]]:
    """A metric's history, one value per step (the latest logged, should a resumed run repeat a step)."""
    by_step: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
            by_step[m.step] = (m.timestamp, m.value)
    steps = sorted(by_step)
    return steps, [by_step[s][1] for s in steps]


def plot_curves(client, dataset: str, runs: dict[str, Any], path: Path) -> bool:
    """val/coca_loss, val/perplexity, val/contrastive_loss against step for each encoder's run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = False
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5 * len(CURVE_METRICS), 3.8))
    for ax, key in zip(axes, CURVE_METRICS):
        for encoder, style in (("baseline", "o-"), ("grr", "s-")):
            run = runs.get(encoder)
            if run is None:
                continue
            steps, values = curve(client, run.info.run_id, f"val/{key}")
            if steps:
                ax.plot(steps, values, style, markersize=3, label=ENCODER_TITLES[encoder])
                drawn = True
        if key == "perplexity":
            ax.set_yscale("log")
        ax.set_title(f"val/{key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"{DATASET_TITLES[dataset]} validation ({'pre-training' if dataset == 'cc12m' else 'fine-tuning'})")
    fig.tight_layout()
    if drawn:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def _fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}%"


@dataclass
class DatasetResult:
    dataset: str
    selections: dict[str, Selection]
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # encoder -> metric -> value
    consistency: dict[str, dict[str, Any]] = field(default_factory=dict)  # encoder or paper-<encoder> -> check
    curves: str | None = None  # the PNG's file name, when drawn


def _consistency(values: dict[str, float], lambdas: tuple[float, float], tol: float | None) -> dict[str, Any] | None:
    if not all(k in values for k in ("coca_loss", "contrastive_loss", "perplexity")) or values["perplexity"] <= 0:
        return None
    if tol is None:  # our runs log full precision: only floating-point error is allowed
        tol = 1e-6 * max(1.0, abs(values["coca_loss"]))
    c = coca_loss_consistency(values["coca_loss"], values["contrastive_loss"], values["perplexity"], *lambdas, tol=tol)
    return {"lambda_con": lambdas[0], "lambda_cap": lambdas[1], "predicted": c.predicted, "residual": c.residual,
            "tolerance": c.tolerance, "ok": c.ok}


def collect(client, selections: dict[tuple[str, str], Selection], out_dir: Path) -> list[DatasetResult]:
    results = []
    for dataset in DATASETS:
        sel = {e: selections[dataset, e] for e in ENCODERS}
        result = DatasetResult(dataset, sel)
        for encoder, s in sel.items():
            if s.run is not None:
                result.values[encoder] = run_values(s.run)
                con, cap, source = run_lambdas(s.run, dataset)
                check = _consistency(result.values[encoder], (con, cap), None)
                if check:
                    result.consistency[encoder] = {**check, "lambda_source": source}
            paper, lambdas = PAPER_TABLE2[dataset][encoder], DEFAULT_LAMBDAS[stage_of(dataset)]
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


def _run_line(s: Selection) -> str:
    if s.run is None:
        return f"| {ENCODER_TITLES[s.encoder]} | — | missing |"
    r = s.run
    tags = r.data.tags
    return (f"| {ENCODER_TITLES[s.encoder]} | `{_name(r)}` `{r.info.run_id}` | {s.how}; status {r.info.status}, "
            f"preset {tags.get('preset', '?')}" + (f", git {tags['git_commit'][:10]}" if "git_commit" in tags else "")
            + (f", fine-tuned from {tags['pretrain_run_id']}" if "pretrain_run_id" in tags else "") + " |")


def _check_line(who: str, c: dict[str, Any] | None) -> str:
    if c is None:
        return f"- {who}: not checkable (CoCa loss, contrastive loss or perplexity not logged)"
    head = (f"- {who}: λ = ({c['lambda_con']:g}, {c['lambda_cap']:g}) from {c['lambda_source']}: "
            f"λ_con·L_con + λ_cap·ln(perplexity) = {c['predicted']:.6f}, residual {c['residual']:+.2e}")
    if c["lambda_source"] != "paper":
        return f"{head} (tolerance ±{c['tolerance']:.1e}): " + ("consistent" if c["ok"] else "**inconsistent**")
    relative = 100 * c["residual"] / c["predicted"]
    within = "within" if c["ok"] else "beyond"
    return f"{head} ({relative:+.3f}%): {within} what 4-decimal rounding allows (±{c['tolerance']:.1e})"


def render_markdown(results: list[DatasetResult], uri: str, experiment: str, notes: list[str]) -> str:
    lines = [
        "# GRR-CoCa vs Baseline CoCa",
        "",
        f"Runs from MLflow experiment `{experiment}` at `{uri}`. Change = (GRR − Baseline) / Baseline; "
        "↓ lower is better, ↑ higher is better. Losses and perplexity are the stage's output model's "
        "(`final/…`, else the last `val/…`); BLEU-4 and CIDEr are pycocoevalcap's fractions; recall@K is in percent.",
        "",
        "**Paper** columns: Table 2 of the GRR-CoCa preprint (validation sets), as printed there. "
        "The paper reports losses only.",
        "",
    ]
    for note in notes:
        lines += [f"> {note}", ""]
    for res in results:
        title = DATASET_TITLES[res.dataset]
        stage = "pre-training" if res.dataset == "cc12m" else "fine-tuning"
        lines += [f"## {title} (validation set, {stage})", "", "| encoder | run | chosen |", "| --- | --- | --- |"]
        lines += [_run_line(res.selections[e]) for e in ENCODERS]
        lines.append("")
        notes_here = [f"**Missing** — {res.selections[e].missing}" for e in ENCODERS if res.selections[e].missing]
        presets = sorted({str(s.run.data.tags.get("preset")) for s in res.selections.values() if s.run is not None})
        if len(presets) > 1:
            notes_here.append(f"**Warning** — the two runs use different presets ({', '.join(presets)}): "
                              "not a like-for-like comparison.")
        if presets and presets != ["paper"]:
            notes_here.append(f"Our runs use preset {', '.join(f'`{p}`' for p in presets)}, not `paper`: their "
                              "magnitudes are not comparable with the paper's, only the direction of the change is.")
        for note in notes_here:
            lines += [f"> {note}", ""]
        paper = PAPER_TABLE2[res.dataset]
        base, grr = res.values.get("baseline", {}), res.values.get("grr", {})
        lines += ["| metric | Baseline CoCa | GRR-CoCa | change | paper: Baseline | paper: GRR | paper: change |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for key, label, lower in VAL_METRICS + EVAL_METRICS:
            arrow = "↓" if lower else "↑"
            digits = 2 if key.startswith(("i2t", "t2i")) else 4
            p_base, p_grr = paper["baseline"].get(key), paper["grr"].get(key)
            p_change = paper["change"].get(key)
            lines.append(f"| {label} {arrow} | {_fmt(base.get(key), digits)} | {_fmt(grr.get(key), digits)} | "
                         f"{_fmt_pct(change_pct(base.get(key), grr.get(key)))} | "
                         f"{_fmt(p_base) if p_base is not None else 'not reported'} | "
                         f"{_fmt(p_grr) if p_grr is not None else 'not reported'} | "
                         f"{_fmt_pct(p_change) if p_change is not None else 'not reported'} |")
        lines += ["", "CoCa-loss consistency, CoCa loss = λ_con·L_con + λ_cap·ln(perplexity):", ""]
        for e in ENCODERS:
            if res.selections[e].run is not None:
                lines.append(_check_line(ENCODER_TITLES[e], res.consistency.get(e)))
        for e in ENCODERS:
            lines.append(_check_line(f"paper, {ENCODER_TITLES[e]}", res.consistency.get(f"paper-{e}")))
        lines.append("")
        if res.curves:
            lines += [f"![{title} validation curves]({res.curves})", ""]
        else:
            lines += ["No validation curves: neither encoder has a run with `val/` metrics.", ""]
    return "\n".join(lines)


def _as_json(results: list[DatasetResult], uri: str, experiment: str) -> dict[str, Any]:
    out: dict[str, Any] = {"tracking_uri": uri, "experiment": experiment, "datasets": {}}
    for res in results:
        base, grr = res.values.get("baseline", {}), res.values.get("grr", {})
        keys = [k for k, _, _ in VAL_METRICS + EVAL_METRICS]
        out["datasets"][res.dataset] = {
            "runs": {e: (s.run.info.run_id if s.run is not None else None) for e, s in res.selections.items()},
            "missing": [s.missing for s in res.selections.values() if s.missing],
            "baseline": base, "grr": grr,
            "change_pct": {k: change_pct(base.get(k), grr.get(k)) for k in keys
                           if change_pct(base.get(k), grr.get(k)) is not None},
            "paper": PAPER_TABLE2[res.dataset],
            "consistency": res.consistency,
            "curves": res.curves,
        }
    return out


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (sqlite:////abs/path or sqlite:///relative/path)."""
    return Path(uri[len("sqlite:///"):].split("?")[0]) if uri.startswith("sqlite:///") else None


def compare(tracking_uri: str | None = None, out_dir: str | Path = "reports", runs: dict[str, list[str]] | None = None,
            experiment: str = EXPERIMENT) -> Path:
    """Write `<out_dir>/comparison.md`, `comparison.json` and `curves-<dataset>.png`; return the markdown's path.

    `runs` pins runs by id per encoder, e.g. {"grr": ["<pretrain run id>"], "baseline": ["<id>", "<id>"]}
    (see the module docstring). Missing runs are reported, not raised; an unknown pinned id raises ValueError.
    """
    from mlflow import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    where = f"experiment {experiment} at {uri}"
    notes: list[str] = []
    db = _sqlite_path(uri)
    experiment_id = None
    client = None
    if db is not None and not db.exists():
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
    selections = select_runs(client, experiment_id, runs, where)
    results = collect(client, selections, out_dir)
    md = out_dir / "comparison.md"
    md.write_text(render_markdown(results, uri, experiment, notes))
    (out_dir / "comparison.json").write_text(json.dumps(_as_json(results, uri, experiment), indent=2) + "\n")
    return md


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `grr-coca compare` options (for pipeline.cli to add to its subparser)."""
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    p.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment (default: %(default)s)")
    p.add_argument("--out", default="reports", help="output directory (default: %(default)s)")
    p.add_argument("--grr", action="append", default=[], metavar="RUN_ID",
                   help="pin a GRR-CoCa run by id (repeatable); a pre-training run also selects the fine-tuning "
                        "runs tagged pretrain_run_id=RUN_ID")
    p.add_argument("--baseline", action="append", default=[], metavar="RUN_ID",
                   help="pin a Baseline CoCa run by id (repeatable), as --grr")
    return p


def run_compare(args: argparse.Namespace) -> Path:
    """Run `compare` from parsed `add_arguments` options; print where the report is."""
    pins = {e: ids for e, ids in (("grr", args.grr), ("baseline", args.baseline)) if ids}
    try:
        md = compare(args.tracking_uri, args.out, pins or None, experiment=args.experiment)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"grr-coca compare: {e}") from None
    text = md.read_text()
    missing = text.count("> **Missing**")
    print(f"wrote {md}" + (f" ({missing} run(s) missing: see the report)" if missing else ""))
    return md


def main(argv: list[str] | None = None) -> None:
    parser = add_arguments(argparse.ArgumentParser(prog="grr-coca compare", description=__doc__.split("\n\n")[0]))
    run_compare(parser.parse_args(argv))


if __name__ == "__main__":
    main()
