"""The report's text: `comparison.md` for people, `comparison.json` (the same numbers) for programs.

Pure functions of the collected results: no MLflow calls, no files written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.names import DATASET_TITLES, ENCODER_TITLES, ENCODERS, phase_of

from .paper import PAPER_TABLE2
from .runs import EVAL_METRICS, VAL_METRICS, Selection, name_of

# The report's column order (the paper's): Baseline, then GRR; the change is GRR relative to Baseline.
COLUMNS = ("baseline", "grr")
assert set(COLUMNS) == set(ENCODERS)
PHASE_TITLES = {"pretrain": "pre-training", "finetune": "fine-tuning"}


@dataclass
class DatasetResult:
    """Everything the report says about one validation set."""

    dataset: str
    selections: dict[str, Selection]  # encoder -> its run, in COLUMNS order
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # encoder -> metric -> value
    consistency: dict[str, dict[str, Any]] = field(default_factory=dict)  # encoder or paper-<encoder> -> check
    curves: str | None = None  # the PNG's file name, when drawn


def change_pct(baseline: float | None, grr: float | None) -> float | None:
    """(GRR - Baseline) / Baseline, in percent; None when either is missing or Baseline is 0."""
    if baseline is None or grr is None or baseline == 0 or not math.isfinite(baseline) or not math.isfinite(grr):
        return None
    return 100.0 * (grr - baseline) / baseline


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def _fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}%"


def _fmt_paper(value: float | None, fmt=_fmt) -> str:
    return "not reported" if value is None else fmt(value)


def _run_line(s: Selection) -> str:
    if s.run is None:
        return f"| {ENCODER_TITLES[s.encoder]} | — | missing |"
    r = s.run
    tags = r.data.tags
    return (f"| {ENCODER_TITLES[s.encoder]} | `{name_of(r)}` `{r.info.run_id}` | {s.how}; status {r.info.status}, "
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


def _notes(res: DatasetResult) -> list[str]:
    """What is missing, and whether the two runs can be compared with each other and with the paper."""
    notes = [f"**Missing** — {res.selections[e].missing}" for e in COLUMNS if res.selections[e].missing]
    presets = sorted({str(s.run.data.tags.get("preset")) for s in res.selections.values() if s.run is not None})
    if len(presets) > 1:
        notes.append(f"**Warning** — the two runs use different presets ({', '.join(presets)}): "
                     "not a like-for-like comparison.")
    if presets and presets != ["paper"]:
        notes.append(f"Our runs use preset {', '.join(f'`{p}`' for p in presets)}, not `paper`: their "
                     "magnitudes are not comparable with the paper's, only the direction of the change is.")
    return notes


def _metric_rows(res: DatasetResult) -> list[str]:
    """The Table 2 layout: ours (Baseline, GRR, change) beside the paper's, one row per metric."""
    paper = PAPER_TABLE2[res.dataset]
    base, grr = res.values.get("baseline", {}), res.values.get("grr", {})
    lines = ["| metric | Baseline CoCa | GRR-CoCa | change | paper: Baseline | paper: GRR | paper: change |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, label, lower in VAL_METRICS + EVAL_METRICS:
        arrow = "↓" if lower else "↑"
        digits = 2 if key.startswith(("i2t", "t2i")) else 4
        lines.append(f"| {label} {arrow} | {_fmt(base.get(key), digits)} | {_fmt(grr.get(key), digits)} | "
                     f"{_fmt_pct(change_pct(base.get(key), grr.get(key)))} | "
                     f"{_fmt_paper(paper['baseline'].get(key))} | {_fmt_paper(paper['grr'].get(key))} | "
                     f"{_fmt_paper(paper['change'].get(key), _fmt_pct)} |")
    return lines


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
        lines += [f"## {title} (validation set, {PHASE_TITLES[phase_of(res.dataset)]})", "",
                  "| encoder | run | chosen |", "| --- | --- | --- |"]
        lines += [_run_line(res.selections[e]) for e in COLUMNS]
        lines.append("")
        for note in _notes(res):
            lines += [f"> {note}", ""]
        lines += _metric_rows(res)
        lines += ["", "CoCa-loss consistency, CoCa loss = λ_con·L_con + λ_cap·ln(perplexity):", ""]
        lines += [_check_line(ENCODER_TITLES[e], res.consistency.get(e))
                  for e in COLUMNS if res.selections[e].run is not None]
        lines += [_check_line(f"paper, {ENCODER_TITLES[e]}", res.consistency.get(f"paper-{e}")) for e in COLUMNS]
        lines.append("")
        if res.curves:
            lines += [f"![{title} validation curves]({res.curves})", ""]
        else:
            lines += ["No validation curves: neither encoder has a run with `val/` metrics.", ""]
    return "\n".join(lines)


def as_json(results: list[DatasetResult], uri: str, experiment: str) -> dict[str, Any]:
    """The report's numbers: per validation set, the runs, both encoders' values, the changes, the paper's."""
    out: dict[str, Any] = {"tracking_uri": uri, "experiment": experiment, "datasets": {}}
    keys = [k for k, _, _ in VAL_METRICS + EVAL_METRICS]
    for res in results:
        base, grr = res.values.get("baseline", {}), res.values.get("grr", {})
        changes = {k: change_pct(base.get(k), grr.get(k)) for k in keys}
        out["datasets"][res.dataset] = {
            "runs": {e: (s.run.info.run_id if s.run is not None else None) for e, s in res.selections.items()},
            "missing": [s.missing for s in res.selections.values() if s.missing],
            "baseline": base, "grr": grr,
            "change_pct": {k: v for k, v in changes.items() if v is not None},
            "paper": PAPER_TABLE2[res.dataset],
            "consistency": res.consistency,
            "curves": res.curves,
        }
    return out
