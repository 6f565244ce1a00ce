"""The report's text: `comparison.md` for people, `comparison.json` (the same numbers) for programs.

Pure functions of the collected results: no MLflow calls, no files written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.names import DATASET_TITLES, ENCODER_TITLES, ENCODERS, phase_of

from .groups import Analysis
from .groups import as_json as groups_json
from .paper import PAPER_TABLE2
from .runs import BENCHMARK_METRICS, EVAL_METRICS, JOINT_METRICS, VAL_METRICS, Selection, name_of
from .stats import Estimate

# The report's column order (the paper's): Baseline, then GRR; the change is GRR relative to Baseline.
COLUMNS = ("baseline", "grr")
assert set(COLUMNS) == set(ENCODERS)
PHASE_TITLES = {"pretrain": "pre-training", "finetune": "fine-tuning"}


@dataclass
class DatasetResult:
    """Everything the report says about one validation set."""

    dataset: str
    selections: dict[str, Selection]  # encoder -> its run, in COLUMNS order
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # encoder -> metric -> the selected run's
    consistency: dict[str, dict[str, Any]] = field(default_factory=dict)  # encoder or paper-<encoder> -> check
    curves: str | None = None  # the PNG's file name, when drawn
    seeds: dict[str, dict] = field(default_factory=dict)  # encoder -> {seed: run}: the selected run's group
    estimates: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # encoder -> metric -> over seeds
    paired: dict[str, Estimate] = field(default_factory=dict)  # metric -> GRR - Baseline, paired by seed
    analysis: Analysis | None = None  # every finished run of this set, grouped (pipeline.report.groups)
    groups_plot: str | None = None
    captions: list[dict[str, Any]] = field(default_factory=list)  # image_id, references, baseline, grr


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
            + (f", fine-tuned from {tags['pretrain_run_id']}" if "pretrain_run_id" in tags else "")
            + f", seed {r.data.params.get('train.seed', '?')}, {_weights(r)} |")


def _weights(run) -> str:
    """Which weights the numbers are from: the best epoch's (early stopping) or the last epoch's."""
    m = run.data.metrics
    if "final/epoch" not in m or "final/epochs_run" not in m:
        return "weights: not logged"
    epoch, ran = int(m["final/epoch"]), int(m["final/epochs_run"])
    return f"weights of epoch {epoch} of {ran} ({'the last' if epoch == ran else 'the best'})"


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


def _digits(key: str) -> int:
    """Percentages (recall, accuracy) with 2 decimals; losses, BLEU-4 and CIDEr with 4."""
    name = key.rsplit("/", 1)[-1]
    return 2 if name.startswith(("i2t", "t2i", "top", "mean_per_class")) else 4


def _fmt_est(e: Estimate | None, digits: int = 4, signed: bool = False) -> str:
    """A value; over several seeds its mean and 95% interval, with ✱ when the interval excludes zero."""
    if e is None:
        return "—"
    sign = "+" if signed else ""

    def num(v: float) -> str:
        return f"{(v if round(v, digits) else 0.0):{sign}.{digits}f}"  # no "-0.0000"

    if e.n == 1:
        return num(e.mean)
    flag = " ✱" if signed and e.excludes_zero else ""
    return f"{num(e.mean)} [{num(e.low)}, {num(e.high)}]{flag}"


def _difference(res: DatasetResult, key: str) -> str:
    """GRR - Baseline: paired by seed (with its interval) when the two share seeds, else of the means."""
    if key in res.paired and res.paired[key].n > 1:
        return _fmt_est(res.paired[key], _digits(key), signed=True)
    base, grr = res.estimates.get("baseline", {}).get(key), res.estimates.get("grr", {}).get(key)
    return "—" if base is None or grr is None else f"{grr.mean - base.mean:+.{_digits(key)}f}"


def _mean(res: DatasetResult, encoder: str, key: str) -> float | None:
    e = res.estimates.get(encoder, {}).get(key)
    return None if e is None else e.mean


def _metric_rows(res: DatasetResult) -> list[str]:
    """The Table 2 layout: ours (Baseline, GRR, difference, change) beside the paper's, one row per metric."""
    paper = PAPER_TABLE2[res.dataset]
    lines = ["| metric | Baseline CoCa | GRR-CoCa | GRR − Baseline | change | paper: Baseline | paper: GRR | "
             "paper: change |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, label, lower in VAL_METRICS + EVAL_METRICS:
        arrow = "↓" if lower else "↑"
        cells = [_fmt_est(res.estimates.get(e, {}).get(key), _digits(key)) for e in COLUMNS]
        lines.append(f"| {label} {arrow} | {cells[0]} | {cells[1]} | {_difference(res, key)} | "
                     f"{_fmt_pct(change_pct(_mean(res, 'baseline', key), _mean(res, 'grr', key)))} | "
                     f"{_fmt_paper(paper['baseline'].get(key))} | {_fmt_paper(paper['grr'].get(key))} | "
                     f"{_fmt_paper(paper['change'].get(key), _fmt_pct)} |")
    return lines


def _sizes(res: DatasetResult) -> str:
    """Seeds per encoder and the evaluation set's size, for the reader to weigh the numbers."""
    parts = []
    for e in COLUMNS:
        seeds = sorted(res.seeds.get(e, {}), key=lambda s: (s is None, s))
        if seeds:
            named = ", ".join("not logged" if s is None else str(s) for s in seeds)
            parts.append(f"{ENCODER_TITLES[e]} {len(seeds)} seed(s) ({named})")
    sizes = {(int(v["images"]), int(v["captions"])) for v in res.values.values() if "images" in v and "captions" in v}
    line = "; ".join(parts) or "no runs"
    if sizes:
        line += "; evaluation set " + " / ".join(f"{i} images, {c} captions" for i, c in sorted(sizes))
    return line + ". Over several seeds a cell is the mean [95% t-interval]; ✱: the interval of the paired " \
                  "difference excludes zero."


GROUP_METRICS = (("coca_loss", "CoCa loss ↓"), ("perplexity", "perplexity ↓"), ("contrastive_loss", "contrastive ↓"),
                 ("bleu4", "BLEU-4 ↑"), ("cider", "CIDEr ↑"), ("i2t_r1", "i→t R@1 ↑"), ("t2i_r1", "t→i R@1 ↑"))


def _group_section(res: DatasetResult) -> list[str]:
    """Every run of the set grouped by what differs: means over seeds, paired differences, effects."""
    a = res.analysis
    if a is None or (len(a.groups) <= 2 and all(len(g.runs) == 1 for g in a.groups)):
        return []  # nothing beyond the Table 2 view above
    shown = [(k, label) for k, label in GROUP_METRICS if any(k in a.summary[g.label] for g in a.groups)]
    head = " | ".join(label for _, label in shown)
    rule = " | ".join("---:" for _ in shown)
    title = DATASET_TITLES[res.dataset]
    lines = [f"### {title}: every run, grouped", "",
             f"Factors that differ among the finished runs: {', '.join(f'`{f}`' for f in a.factors) or 'none'}; "
             "replicates are seeds (`train.seed`), the latest finished run of each. Mean [95% t-interval].", "",
             f"| group | seeds | {head} |", f"| --- | ---: | {rule} |"]
    for g in a.groups:
        cells = " | ".join(_fmt_est(a.summary[g.label].get(k), _digits(k)) for k, _ in shown)
        lines.append(f"| {g.label} | {len(g.runs)} | {cells} |")
    if a.differences:
        lines += ["", "Paired differences, group − reference (the reference design with the same other factors; "
                  "`--reference`, default the Baseline bundle), over shared seeds; ✱: the interval excludes zero.", "",
                  f"| group | reference | {head} |", f"| --- | --- | {rule} |"]
        for g in a.groups:
            if g.label in a.differences:
                d = a.differences[g.label]
                cells = " | ".join(_fmt_est(d.get(k), _digits(k), signed=True) for k, _ in shown)
                lines.append(f"| {g.label} | {a.references[g.label]} | {cells} |")
    if a.effects:
        levels = ", ".join(f"`{f}` {lo} → {hi}" for f, (lo, hi) in a.effect_levels.items())
        lines += ["", f"Effects of the full 2^{len(a.factors)} design ({levels}): a main effect is the mean "
                  "change from the low to the high level, averaged over the other factors; an interaction "
                  "A x B is half the difference between A's effect at B high and at B low. Per seed, then "
                  "a t-interval over seeds; ✱: excludes zero.", "",
                  f"| effect | {head} |", f"| --- | {rule} |"]
        for term in next(iter(a.effects.values())):  # stats.factorial_effects' names and order
            cells = " | ".join(_fmt_est(a.effects.get(k, {}).get(term), _digits(k), signed=True) for k, _ in shown)
            lines.append(f"| {term} | {cells} |")
    if a.effects_note:
        lines += ["", f"No effects table: {a.effects_note}."]
    if res.groups_plot:
        lines += ["", f"![{title} groups]({res.groups_plot})"]
    return lines + [""]


def _captions(res: DatasetResult) -> list[str]:
    if not res.captions:
        return []
    lines = ["Captions of the first validation images (beam search) beside a reference:", "",
             "| image | reference | Baseline CoCa | GRR-CoCa |", "| --- | --- | --- | --- |"]
    def cell(text: str | None) -> str:
        return (text or "—").replace("|", "\\|")

    for c in res.captions:
        lines.append(f"| {cell(c['image_id'])} | {cell(c['references'][0] if c['references'] else None)} | "
                     f"{cell(c.get('baseline'))} | {cell(c.get('grr'))} |")
    return lines + [""]


def _summary(results: list[DatasetResult]) -> list[str]:
    """The four sets in one table, with the fine-tuning average beside the paper's."""
    keys = (("coca_loss", "CoCa loss"), ("perplexity", "perplexity"), ("contrastive_loss", "contrastive loss"))
    lines = ["## Summary", "", "Change = (GRR − Baseline) / Baseline of the means; the paper's beside it.", "",
             "| validation set | seeds (Baseline / GRR) | " + " | ".join(f"{label} | paper" for _, label in keys) + " |",
             "| --- | --- | " + " | ".join("---: | ---:" for _ in keys) + " |"]
    ours: dict[str, list[float]] = {k: [] for k, _ in keys}
    for res in results:
        seeds = " / ".join(str(len(res.seeds.get(e, {}))) for e in COLUMNS)
        cells = []
        for k, _ in keys:
            change = change_pct(_mean(res, "baseline", k), _mean(res, "grr", k))
            if change is not None and phase_of(res.dataset) == "finetune":
                ours[k].append(change)
            cells.append(f"{_fmt_pct(change)} | {_fmt_pct(PAPER_TABLE2[res.dataset]['change'][k])}")
        lines.append(f"| {DATASET_TITLES[res.dataset]} | {seeds} | " + " | ".join(cells) + " |")
    finetune = [r.dataset for r in results if phase_of(r.dataset) == "finetune"]
    cells = []
    for k, _ in keys:
        paper = sum(PAPER_TABLE2[d]["change"][k] for d in finetune) / len(finetune)
        mine = sum(ours[k]) / len(ours[k]) if len(ours[k]) == len(finetune) else None
        cells.append(f"{_fmt_pct(mine)} | {_fmt_pct(paper)}")
    lines.append("| fine-tuning average (MSCOCO, ROCO, Flickr30K) | | " + " | ".join(cells) + " |")
    return lines + [""]


def _benchmarks(results: list[DatasetResult]) -> list[str]:
    """The benchmark stage's scores of every checkpoint, both encoders side by side (rows only where a
    run logged the score)."""
    lines = ["## Zero-shot and standard benchmarks", "",
             "The benchmark stage (`benchmark@<run>`) on each stage's output model: zero-shot classification "
             "(prompt templates averaged) and the frozen-feature linear probe on the classification set "
             "(`data.sources.imagenet_val`: ImageNet-1k validation, or the demo's shapes), and retrieval and "
             "captioning on Karpathy's MSCOCO 5K and Flickr30K 1K test splits (zero-shot for the pre-trained "
             "model). Over several seeds a cell is the mean [95% t-interval].", "",
             "| model | metric | Baseline CoCa | GRR-CoCa | GRR − Baseline | change |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    rows = 0
    for res in results:
        model = f"{DATASET_TITLES[res.dataset]} ({PHASE_TITLES[phase_of(res.dataset)]})"
        for key, label, _ in BENCHMARK_METRICS:
            cells = [res.estimates.get(e, {}).get(key) for e in COLUMNS]
            if all(c is None for c in cells):
                continue
            rows += 1
            lines.append(f"| {model} | {label} ↑ | {_fmt_est(cells[0], _digits(key))} | {_fmt_est(cells[1], _digits(key))} | "
                         f"{_difference(res, key)} | "
                         f"{_fmt_pct(change_pct(_mean(res, 'baseline', key), _mean(res, 'grr', key)))} |")
    if not rows:
        return lines[:2] + ["No run has benchmark scores yet: `dvc repro` runs the `benchmark@<run>` stages.", ""]
    return lines + [""]


def _joint_section(a: Analysis | None) -> list[str]:
    """The joint fine-tune's runs (stage finetune_joint), grouped by what differs among them (the
    sampling, the design, ...): each fine-tuning set's final CoCa loss and evaluate@joint-<ds> scores."""
    if a is None or not a.groups:
        return []
    shown = [(k, label) for k, label, _ in JOINT_METRICS if any(k in a.summary[g.label] for g in a.groups)]
    lines = ["## Joint fine-tune (MSCOCO, ROCO and Flickr30K at once)", "",
             f"Factors that differ among the finished joint runs: {', '.join(f'`{f}`' for f in a.factors) or 'none'}; "
             "replicates are seeds, the latest finished run of each. Mean [95% t-interval]; compare with the "
             "single-set fine-tunes above.", "",
             "| group | seeds | metric | value |", "| --- | ---: | --- | ---: |"]
    for g in a.groups:
        for k, label in shown:
            if k in a.summary[g.label]:
                lines.append(f"| {g.label} | {len(g.runs)} | {label} | {_fmt_est(a.summary[g.label][k], _digits(k))} |")
    return lines + [""]


def render_markdown(results: list[DatasetResult], uri: str, experiment: str, notes: list[str],
                    joint: Analysis | None = None) -> str:
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
    lines += _summary(results)
    lines += _benchmarks(results)
    for res in results:
        title = DATASET_TITLES[res.dataset]
        lines += [f"## {title} (validation set, {PHASE_TITLES[phase_of(res.dataset)]})", "",
                  "| encoder | run | chosen |", "| --- | --- | --- |"]
        lines += [_run_line(res.selections[e]) for e in COLUMNS]
        lines.append("")
        for note in _notes(res):
            lines += [f"> {note}", ""]
        lines += [_sizes(res), ""]
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
        lines += _captions(res)
        lines += _group_section(res)
    lines += _joint_section(joint)
    return "\n".join(lines)


def as_json(results: list[DatasetResult], uri: str, experiment: str, joint: Analysis | None = None) -> dict[str, Any]:
    """The report's numbers: per validation set, the runs, both encoders' values, the changes, the paper's,
    the estimates over seeds and every run's grouping."""
    out: dict[str, Any] = {"tracking_uri": uri, "experiment": experiment, "datasets": {}}
    keys = [k for k, _, _ in VAL_METRICS + EVAL_METRICS + BENCHMARK_METRICS]
    for res in results:
        base, grr = res.values.get("baseline", {}), res.values.get("grr", {})
        changes = {k: change_pct(_mean(res, "baseline", k), _mean(res, "grr", k)) for k in keys}
        out["datasets"][res.dataset] = {
            "runs": {e: (s.run.info.run_id if s.run is not None else None) for e, s in res.selections.items()},
            "missing": [s.missing for s in res.selections.values() if s.missing],
            "baseline": base, "grr": grr,
            "seeds": {e: {str(seed): run.info.run_id for seed, run in runs.items()} for e, runs in res.seeds.items()},
            "over_seeds": {e: {k: v.as_dict() for k, v in est.items()} for e, est in res.estimates.items()},
            "paired_difference": {k: v.as_dict() for k, v in res.paired.items()},
            "change_pct": {k: v for k, v in changes.items() if v is not None},
            "paper": PAPER_TABLE2[res.dataset],
            "consistency": res.consistency,
            "curves": res.curves,
            "groups": groups_json(res.analysis) if res.analysis is not None else None,
            "captions": res.captions,
        }
    out["joint"] = groups_json(joint) if joint is not None and joint.groups else None
    return out
