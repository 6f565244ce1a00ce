"""Which MLflow runs the report compares, and what it reads from them.

Runs of experiment `grr-coca` are named `pretrain-<encoder>` and `finetune-<dataset>-<encoder>`; a run's
validation set and encoder come from its tags (`phase`, `dataset`, `encoder`), else from its name.
- By default, for each validation set and encoder, the latest FINISHED run is used.
- Runs pinned by id (`--grr ID` / `--baseline ID`, repeatable) come first. A pinned fine-tuning run is
  used for its own dataset. A pinned pre-training run is used for CC12M, and for each fine-tuning set
  the latest finished run tagged `pretrain_run_id=<ID>` (fine-tuned from it), unless pinned as well.
A set with no run is a `Selection` with `missing` saying which command produces it; nothing fails.

Values of a run: `final/<metric>` (what the stage outputs: with early stopping, the best epoch's), else
the last `val/<metric>`; `eval/<metric>` for the captioning and retrieval scores and the benchmark
stage's (`eval/zeroshot/top1`, `eval/probe/top1`, `eval/karpathy_mscoco/i2t_r1`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.names import (DATASET_TITLES, ENCODER_TITLES, ENCODERS, FINETUNE_DATASETS, JOINT, PRETRAIN_DATASET,
                            TABLE2_ORDER, phase_of, run_name)

from .paper import PAPER_LAMBDAS

# (key, label, lower is better); the trainer logs val/<key> and final/<key>, the evaluation eval/<key>.
VAL_METRICS = (("coca_loss", "CoCa loss", True), ("perplexity", "perplexity", True),
               ("contrastive_loss", "contrastive loss", True), ("caption_loss", "caption loss", True))
EVAL_METRICS = (("bleu4", "BLEU-4", False), ("cider", "CIDEr", False),
                ("i2t_r1", "image→text R@1 (%)", False), ("i2t_r5", "image→text R@5 (%)", False),
                ("i2t_r10", "image→text R@10 (%)", False), ("t2i_r1", "text→image R@1 (%)", False),
                ("t2i_r5", "text→image R@5 (%)", False), ("t2i_r10", "text→image R@10 (%)", False))

# The benchmark stage's scores (stages/benchmark.py), logged as eval/<key>: zero-shot classification,
# the linear probe, and Karpathy-test retrieval and captioning of MSCOCO 5K and Flickr30K 1K.
BENCHMARK_METRICS = (
    ("zeroshot/top1", "zero-shot classification top-1 (%)", False),
    ("zeroshot/top5", "zero-shot classification top-5 (%)", False),
    ("zeroshot/mean_per_class", "zero-shot mean per-class accuracy (%)", False),
    ("probe/top1", "linear probe top-1 (%)", False),
    *((f"karpathy_{d}/{k}", f"{title} test {label}", False)
      for d, title in (("mscoco", "MSCOCO 5K"), ("flickr30k", "Flickr30K 1K"))
      for k, label, _ in (("i2t_r1", "image→text R@1 (%)", False), ("i2t_r5", "image→text R@5 (%)", False),
                          ("i2t_r10", "image→text R@10 (%)", False), ("t2i_r1", "text→image R@1 (%)", False),
                          ("t2i_r5", "text→image R@5 (%)", False), ("t2i_r10", "text→image R@10 (%)", False),
                          ("bleu4", "BLEU-4", False), ("cider", "CIDEr", False))),
)


# The joint fine-tune (stage finetune_joint): per fine-tuning set, its final validation CoCa loss
# (final/<ds>/coca_loss) and the evaluate@joint-<ds> scores (eval/<ds>/<m>).
JOINT_METRICS = tuple(
    (f"{d}/{k}", f"{DATASET_TITLES[d]} {label}", lower)
    for d in FINETUNE_DATASETS
    for k, label, lower in (("coca_loss", "CoCa loss", True), ("bleu4", "BLEU-4", False), ("cider", "CIDEr", False),
                            ("i2t_r1", "i→t R@1", False), ("t2i_r1", "t→i R@1", False)))


@dataclass
class Selection:
    """The run chosen for one (validation set, encoder), or why there is none."""

    dataset: str
    encoder: str
    run: Any = None  # mlflow.entities.Run
    how: str = ""  # how it was chosen
    missing: str = ""  # when run is None: what is missing and how to produce it


def name_of(run) -> str:
    return run.info.run_name or run.data.tags.get("mlflow.runName", "")


def _identify(run) -> tuple[str | None, str | None]:
    """(dataset, encoder) of a run from its tags (`encoder`, `phase`, `dataset`), else from its name."""
    name, tags = name_of(run), run.data.tags
    parts = name.split("-")
    encoder = tags.get("encoder") or (parts[-1] if parts[-1] in ENCODERS else None)
    if tags.get("phase") == "pretrain" or parts[0] == "pretrain":
        return PRETRAIN_DATASET, encoder
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


def _pinned(client, pins: dict[str, list[str]], where: str) -> dict[tuple[str, str], Selection]:
    """The pinned runs by (validation set, encoder); ValueError for an unknown, foreign or doubly pinned id."""
    chosen: dict[tuple[str, str], Selection] = {}
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
                raise ValueError(f"--{encoder} {run_id}: run `{name_of(run)}` is neither a pre-training nor a "
                                 f"fine-tuning run (expected a name like pretrain-{encoder} or "
                                 f"finetune-mscoco-{encoder})")
            if run_encoder is not None and run_encoder != encoder:
                raise ValueError(f"--{encoder} {run_id}: run `{name_of(run)}` is a {run_encoder} run")
            if (dataset, encoder) in chosen:
                raise ValueError(f"--{encoder} {run_id}: a {DATASET_TITLES[dataset]} run of this encoder is pinned "
                                 f"twice ({chosen[dataset, encoder].run.info.run_id} and {run_id})")
            status = "" if run.info.status == "FINISHED" else f", status {run.info.status}"
            chosen[dataset, encoder] = Selection(dataset, encoder, run, f"pinned by --{encoder}{status}")
    return chosen


def select_runs(client, experiment_id: str | None, pins: dict[str, list[str]] | None = None,
                where: str = "") -> dict[tuple[str, str], Selection]:
    """The run for every (validation set, encoder): pinned ids first, else the latest finished run."""
    chosen = _pinned(client, pins or {}, where)
    from_pretrain = {e: s.run.info.run_id for (d, e), s in chosen.items() if d == PRETRAIN_DATASET}
    runs = _all_runs(client, experiment_id) if experiment_id is not None else []
    finished = [r for r in runs if r.info.status == "FINISHED"]
    missing = []
    for dataset in TABLE2_ORDER:
        for encoder in ENCODERS:
            if (dataset, encoder) in chosen:
                continue
            name = run_name(phase_of(dataset), dataset, encoder)
            candidates = [r for r in finished if _identify(r) == (dataset, encoder)]
            how = f"latest finished `{name}`"
            parent = from_pretrain.get(encoder) if dataset != PRETRAIN_DATASET else None
            if parent:
                candidates = [r for r in candidates if r.data.tags.get("pretrain_run_id") == parent]
                how += " fine-tuned from the pinned pre-training run"
            chosen[dataset, encoder] = Selection(dataset, encoder, candidates[0] if candidates else None, how)
            if not candidates:
                missing.append((dataset, encoder, name, parent))

    # Say what is missing, with the command that makes it (in the preset of the runs that exist).
    presets = {s.run.data.tags.get("preset") for s in chosen.values() if s.run is not None} - {None}
    for dataset, encoder, name, parent in missing:
        other = next(chosen[dataset, e].run for e in ENCODERS if e != encoder)  # the other encoder's run
        if other is not None:
            preset = other.data.tags.get("preset")
        else:
            preset = next(iter(presets)) if len(presets) == 1 else None
        tagged = f" tagged pretrain_run_id={parent}" if parent else ""
        chosen[dataset, encoder].how = ""
        chosen[dataset, encoder].missing = (f"{ENCODER_TITLES[encoder]}: no finished run `{name}`{tagged} in {where} "
                                            f"— {_hint(encoder, preset)}")
    return chosen


def run_values(run) -> dict[str, float]:
    """final/<m> (else the last val/<m>) for the validation metrics, eval/<m> for the scores."""
    m = run.data.metrics
    out = {}
    for key, _, _ in VAL_METRICS:
        value = m.get(f"final/{key}", m.get(f"val/{key}"))
        if value is not None:
            out[key] = value
    for key, _, _ in EVAL_METRICS + BENCHMARK_METRICS:
        if f"eval/{key}" in m:
            out[key] = m[f"eval/{key}"]
    for key, _, _ in JOINT_METRICS:  # a joint fine-tune's per-set metrics (no other run logs these)
        value = m.get(f"final/{key}", m.get(f"eval/{key}"))
        if value is not None:
            out[key] = value
    return out


def run_lambdas(run, dataset: str) -> tuple[float, float, str]:
    """(lambda_con, lambda_cap, source): the run's logged `<phase>.lambda_*` params, else the paper's."""
    phase = phase_of(dataset)
    params = run.data.params
    try:
        return float(params[f"{phase}.lambda_con"]), float(params[f"{phase}.lambda_cap"]), "run params"
    except (KeyError, ValueError):
        return (*PAPER_LAMBDAS[phase], "defaults")


def curve(client, run_id: str, key: str) -> tuple[list[int], list[float]]:
    """A metric's history, one value per step (the latest logged, should a resumed run repeat a step)."""
    by_step: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
            by_step[m.step] = (m.timestamp, m.value)
    steps = sorted(by_step)
    return steps, [by_step[s][1] for s in steps]


def finished_runs(client, experiment_id: str | None) -> dict[str, list]:
    """Every finished run by validation set, newest first (what the grouping analyses)."""
    out: dict[str, list] = {d: [] for d in TABLE2_ORDER}
    if experiment_id is None:
        return out
    for run in _all_runs(client, experiment_id):
        dataset, _ = _identify(run)
        if run.info.status == "FINISHED" and dataset is not None:
            out[dataset].append(run)
    return out


def finished_joint_runs(client, experiment_id: str | None) -> list:
    """Every finished joint fine-tune run (tag dataset=joint), newest first."""
    if experiment_id is None:
        return []
    return [run for run in _all_runs(client, experiment_id)
            if run.info.status == "FINISHED" and run.data.tags.get("dataset") == JOINT]


def caption_samples(client, run) -> dict[str, dict]:
    """{image_id: {"generated", "references"}} from the run's `eval/*-captions.md` artifact (the
    evaluation stage's table, pipeline.evaluate.samples); {} when it has none."""
    import tempfile

    from pipeline.evaluate.samples import read_samples_markdown

    try:
        names = [a.path for a in client.list_artifacts(run.info.run_id, "eval") if a.path.endswith("-captions.md")]
        if not names:
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(run.info.run_id, names[0], tmp)).read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001 - artifacts are optional extras of the report
        return {}
    return read_samples_markdown(text)
