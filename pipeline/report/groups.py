"""Any set of runs, grouped by what differs among them, summarised over seeds.

The runs of one validation set are grouped by their *factors*: the ViT design in force (the `vit.norm`,
`vit.ffn`, `vit.pos` tags, bundles resolved) and every other logged parameter whose value differs
among them (`train.seed` excepted: seeds are the replicates). A parameter some runs lack (a run from
before it existed) is not a factor, unless it is a switch with a default (SWITCH_DEFAULTS: the text
feed-forward, the contrastive loss, the fine-tuning mode and frozen parts, the resize mode, augmentation), which such runs ran at. Within a group the latest finished run of each seed counts.

For each group and metric: mean, standard deviation and a 95% t-interval over seeds
(`pipeline.report.stats`). Each group is compared with its reference, the group of the reference
design (default: the Baseline bundle's; `grr-coca compare --reference`) with the same other factors,
by differences paired on `train.seed`. When the factors
form a full two-level grid (the 2x2x2 ablation), the main effects and two-way interactions follow, the
high level of a design factor being GRR's choice. Pure functions of runs: no MLflow calls here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from pipeline.model.config import BUNDLES

from .runs import BENCHMARK_METRICS, EVAL_METRICS, VAL_METRICS, run_values
from .stats import Estimate, estimate, factorial_effects, paired_difference

DESIGN_FACTORS = ("vit.norm", "vit.ffn", "vit.pos")  # the run tags of the design in force
# Params that are not factors of their own: the seed is the replicate; the rest is the design, which
# the trainer logs as model.* (as set, null for the bundle's) and as vit.* (in force).
NOT_FACTORS = {"train.seed", "model.encoder", "model.vit.norm", "model.vit.ffn", "model.vit.pos", *DESIGN_FACTORS,
               # consequences of the switches, not choices: the trainable count follows finetune.freeze/mode
               "run.trainable_params", "run.total_params", "run.trainable_fraction"}
# Switches added after runs were first logged, at their defaults (today's behaviour, as MLflow logs the
# value): a run from before a switch existed ran at its default, so the switch is a factor as soon as
# runs differ in it, old runs included.
SWITCH_DEFAULTS = {"model.text.ffn": "geglu", "train.contrastive_loss": "softmax", "finetune.mode": "full",
                   "finetune.freeze": "[]", "data.shard.resize_mode": "naive", "data.shard.resize_at": "shard",
                   "pretrain.crop_scale": "None", "pretrain.hflip": "False",
                   "finetune.crop_scale": "None", "finetune.hflip": "False"}
METRIC_KEYS = [k for k, _, _ in VAL_METRICS + EVAL_METRICS + BENCHMARK_METRICS]


def design_of(run) -> tuple[str, str, str]:
    """(norm, ffn, pos) of a run: its tags, else its encoder's bundle (runs logged before the switches)."""
    tags = run.data.tags
    bundle = BUNDLES.get(tags.get("encoder", ""), (None, None, None))
    return tuple(tags.get(f) or default for f, default in zip(DESIGN_FACTORS, bundle))


def seed_of(run) -> int | None:
    try:
        return int(run.data.params["train.seed"])
    except (KeyError, ValueError):
        return None


def short_name(factor: str, factors) -> str:
    """A factor's last key (`ffn`), or its key without the section when another factor shares that last
    key (`text.ffn` beside the design's `vit.ffn`)."""
    last = factor.split(".")[-1]
    if factor in DESIGN_FACTORS or sum(f.split(".")[-1] == last for f in factors) == 1:
        return last
    return factor.split(".", 1)[-1]


@dataclass
class Group:
    levels: dict[str, str]  # factor -> level (only the factors that differ in the set)
    design: tuple[str, str, str]
    runs: dict[int | None, Any] = field(default_factory=dict)  # seed -> the latest finished run

    @property
    def label(self) -> str:
        if not self.levels:
            return "all runs"
        bundle = next((name for name, b in BUNDLES.items() if b == self.design), None)
        text = ", ".join(f"{short_name(f, self.levels)}={v}" for f, v in self.levels.items())
        return f"{text} ({bundle})" if bundle and any(f in DESIGN_FACTORS for f in self.levels) else text

    def summary(self, metrics: list[str] = METRIC_KEYS) -> dict[str, Estimate]:
        """Per metric, its estimate over this group's seeds (metrics no run logged are left out)."""
        return {k: estimate(list(v.values())) for k in metrics if (v := self.values(k))}

    def paired_with(self, reference: Group, metrics: list[str] = METRIC_KEYS) -> dict[str, Estimate]:
        """Per metric, this group minus `reference`, paired by seed (metrics with no shared seed left out)."""
        out = {}
        for k in metrics:
            mine, theirs = self.values(k), reference.values(k)
            if set(mine) & set(theirs):
                out[k] = paired_difference(mine, theirs)
        return out

    def values(self, key: str) -> dict[int | None, float]:
        """{seed: value} of one metric, for the seeds whose run logged it."""
        out = {}
        for seed, run in self.runs.items():
            value = run_values(run).get(key)
            if value is not None:
                out[seed] = value
        return out


@dataclass
class Analysis:
    """One validation set's groups, their summaries, paired differences and factorial effects."""

    factors: list[str]
    groups: list[Group]
    summary: dict[str, dict[str, Estimate]]  # group label -> metric -> estimate over seeds
    differences: dict[str, dict[str, Estimate]]  # group label -> metric -> paired (group - reference)
    references: dict[str, str]  # group label -> its reference group's label
    effects: dict[str, dict[str, Estimate]]  # metric -> term -> effect (empty unless a full 2^k grid)
    effect_levels: dict[str, tuple[str, str]]  # factor -> (low, high) of the effects
    effects_note: str = ""  # why there are no effects, when factors differ but do not form a full grid


def group_runs(runs: list) -> tuple[list[str], list[Group]]:
    """(factors, groups) of finished runs of one validation set, newest first as given."""
    if not runs:
        return [], []
    designs = {run.info.run_id: design_of(run) for run in runs}
    params = {run.info.run_id: {**SWITCH_DEFAULTS, **{k: v for k, v in run.data.params.items() if k not in NOT_FACTORS}}
              for run in runs}
    common = set.intersection(*(set(p) for p in params.values()))
    factors = [f for i, f in enumerate(DESIGN_FACTORS) if len({d[i] for d in designs.values()}) > 1]
    factors += sorted(k for k in common if len({p[k] for p in params.values()}) > 1)
    groups: dict[tuple, Group] = {}
    for run in runs:
        rid = run.info.run_id
        levels = {f: designs[rid][DESIGN_FACTORS.index(f)] if f in DESIGN_FACTORS else params[rid][f] for f in factors}
        group = groups.setdefault(tuple(levels.items()), Group(levels, designs[rid]))
        group.runs.setdefault(seed_of(run), run)  # newest first: the first run of a seed is its latest
    return factors, sorted(groups.values(), key=lambda g: _order(g, factors))


def _order(group: Group, factors: list[str]) -> tuple:
    """Baseline's design first, then by how many design factors take GRR's choice, then by levels."""
    grr = sum(group.design[i] == BUNDLES["grr"][i] for i in range(3))
    return (grr, tuple(str(group.levels[f]) for f in factors))


def _levels(factor: str, seen: set[str]) -> tuple[str, str] | None:
    """(low, high) of a two-level factor: for a design factor Baseline's then GRR's choice."""
    if len(seen) != 2:
        return None
    if factor in DESIGN_FACTORS:
        i = DESIGN_FACTORS.index(factor)
        pair = (BUNDLES["baseline"][i], BUNDLES["grr"][i])
        if set(pair) == seen:
            return pair
    return tuple(sorted(seen))


def parse_design(text: str) -> tuple[str, str, str]:
    """A reference design by name: a bundle (`baseline`, `grr`) or `<norm>-<ffn>-<pos>`
    (the run-name form, with or without its `vit-` prefix): ValueError naming what is allowed."""
    from pipeline.model.config import VIT_FFNS, VIT_NORMS, VIT_POSITIONS

    if text in BUNDLES:
        return BUNDLES[text]
    parts = tuple(text.removeprefix("vit-").split("-"))
    if len(parts) == 3 and parts[0] in VIT_NORMS and parts[1] in VIT_FFNS and parts[2] in VIT_POSITIONS:
        return parts
    raise ValueError(f"--reference {text!r}: expected baseline, grr or <norm>-<ffn>-<pos> with norm in "
                     f"{'|'.join(VIT_NORMS)}, ffn in {'|'.join(VIT_FFNS)}, pos in {'|'.join(VIT_POSITIONS)}")


def analyse(runs: list, metrics: list[str] = METRIC_KEYS, reference: tuple[str, str, str] = BUNDLES["baseline"]
            ) -> Analysis:
    """Group `runs` and compare each group with the one of design `reference` (default the Baseline
    bundle's) that shares its other factors."""
    factors, groups = group_runs(runs)
    summary = {g.label: g.summary(metrics) for g in groups}
    references, differences = {}, {}
    for g in groups:
        others = {f: v for f, v in g.levels.items() if f not in DESIGN_FACTORS}
        ref = next((r for r in groups if r.design == reference
                    and {f: v for f, v in r.levels.items() if f not in DESIGN_FACTORS} == others), None)
        if ref is None or ref is g:
            continue
        references[g.label] = ref.label
        differences[g.label] = g.paired_with(ref, metrics)
    effects, effect_levels, note = {}, {}, ""
    levels = {f: _levels(f, {g.levels[f] for g in groups}) for f in factors}
    cells = {tuple(g.levels[f] for f in factors): g for g in groups}
    if not all(levels.values()):
        note = "no factorial effects: " + ", ".join(f"`{f}` has {len({g.levels[f] for g in groups})} levels"
                                                    for f, v in levels.items() if v is None) + " (two are needed)"
    elif factors and len(cells) < 2 ** len(factors):
        lacking = [dict(zip(factors, cell)) for cell in itertools.product(*(levels[f] for f in factors))
                   if cell not in cells]
        note = (f"no factorial effects: the 2^{len(factors)} design lacks {len(lacking)} of its cells, e.g. "
                + ", ".join(f"{f.split('.')[-1]}={v}" for f, v in lacking[0].items()))
    if factors and not note:
        effect_levels = levels
        for k in metrics:
            results = {cell: g.values(k) for cell, g in cells.items()}
            common = set.intersection(*(set(r) for r in results.values()))
            if common:
                effects[k] = factorial_effects({c: {s: r[s] for s in common} for c, r in results.items()},
                                               factors, levels)
    return Analysis(factors, groups, summary, differences, references, effects, effect_levels, note)


def as_json(analysis: Analysis) -> dict[str, Any]:
    return {
        "factors": analysis.factors,
        "groups": [{"label": g.label, "levels": g.levels, "design": list(g.design),
                    "runs": {str(s): r.info.run_id for s, r in g.runs.items()},
                    "summary": {k: e.as_dict() for k, e in analysis.summary[g.label].items()},
                    "reference": analysis.references.get(g.label),
                    "paired_difference": {k: e.as_dict() for k, e in analysis.differences.get(g.label, {}).items()}}
                   for g in analysis.groups],
        "effect_levels": {f: list(v) for f, v in analysis.effect_levels.items()},
        "effects": {k: {t: e.as_dict() for t, e in by_term.items()} for k, by_term in analysis.effects.items()},
        "effects_note": analysis.effects_note,
    }
