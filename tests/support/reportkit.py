"""Helpers of the report tests: runs logged to a real MLflow sqlite store as the trainer logs them,
and readers of the Markdown report's sections and rows."""

from __future__ import annotations

import math

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

LAMBDAS = {"pretrain": (2.0, 1.0), "finetune": (1.0, 2.0)}
# (contrastive loss, caption loss) of each stage's output model.
VALUES = {
    "baseline": {"cc12m": (0.40, 2.60), "mscoco": (1.00, 1.50), "roco": (2.00, 2.50), "flickr30k": (1.20, 2.00)},
    "grr": {"cc12m": (0.30, 2.50), "mscoco": (0.50, 1.25), "roco": (1.50, 2.45), "flickr30k": (1.00, 1.90)},
}
EVAL = {"baseline": {"bleu4": 0.2, "cider": 0.5, "i2t_r1": 10.0, "i2t_r5": 30.0, "i2t_r10": 40.0,
                     "t2i_r1": 8.0, "t2i_r5": 25.0, "t2i_r10": 50.0},
        "grr": {"bleu4": 0.25, "cider": 0.6, "i2t_r1": 12.0, "i2t_r5": 33.0, "i2t_r10": 40.0,
                "t2i_r1": 10.0, "t2i_r5": 30.0, "t2i_r10": 55.0}}
# The benchmark stage's scores, logged for the pre-training runs only.
BENCHMARK = {"baseline": {"zeroshot/top1": 20.0, "zeroshot/top5": 60.0, "probe/top1": 70.0,
                          "karpathy_mscoco/i2t_r1": 5.0, "karpathy_flickr30k/cider": 0.4},
             "grr": {"zeroshot/top1": 30.0, "zeroshot/top5": 66.0, "probe/top1": 77.0,
                     "karpathy_mscoco/i2t_r1": 4.0, "karpathy_flickr30k/cider": 0.5}}
STEPS = (0, 10, 20)
TITLES = {"cc12m": "CC12M", "mscoco": "MSCOCO", "roco": "ROCO", "flickr30k": "Flickr30K"}


def losses(dataset: str, con: float, cap: float) -> dict[str, float]:
    lam_con, lam_cap = LAMBDAS["pretrain" if dataset == "cc12m" else "finetune"]
    return {"coca_loss": lam_con * con + lam_cap * cap, "contrastive_loss": con, "caption_loss": cap,
            "perplexity": math.exp(cap)}


def log_run(client: MlflowClient, experiment_id: str, encoder: str, dataset: str, con: float, cap: float, *,
            start: int, status: str = "FINISHED", tags: dict | None = None, final: bool = True,
            evaluation: dict | None = None, lambda_params: bool = True, params: dict | None = None) -> str:
    """A run as the trainer logs it: val/ curve ending at (con, cap), final/, eval/, params and tags."""
    phase = "pretrain" if dataset == "cc12m" else "finetune"
    name = f"pretrain-{encoder}" if phase == "pretrain" else f"finetune-{dataset}-{encoder}"
    run = client.create_run(experiment_id, run_name=name, start_time=start, tags={
        "encoder": encoder, "phase": phase, "dataset": dataset, "preset": "smoke", **(tags or {})})
    metrics = []
    for step in STEPS:
        late = (STEPS[-1] - step) / STEPS[-1]
        metrics += [Metric(f"val/{k}", v, start + step, step)
                    for k, v in losses(dataset, con * (1 + late), cap * (1 + late / 2)).items()]
    if final:
        metrics += [Metric(f"final/{k}", v, start + 99, STEPS[-1]) for k, v in losses(dataset, con, cap).items()]
    metrics += [Metric(f"eval/{k}", v, start + 99, STEPS[-1]) for k, v in (evaluation or {}).items()]
    params_of_lambdas = [Param(f"{phase}.lambda_{w}", str(v)) for w, v in zip(("con", "cap"), LAMBDAS[phase])]
    logged = (params_of_lambdas if lambda_params else []) + [Param(k, str(v)) for k, v in (params or {}).items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=logged)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status, end_time=start + 100)
    return run.info.run_id


def make_store(root) -> dict:
    """One sqlite store: a current pair of pipelines, an older GRR pipeline, and runs that must be skipped."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("grr-coca", artifact_location=(root / "artifacts").as_uri())
    ids: dict = {}
    # An older GRR pre-training run and one fine-tuning run from it.
    ids["old-grr"] = log_run(client, exp, "grr", "cc12m", 0.9, 3.0, start=1000)
    ids["old-grr-mscoco"] = log_run(client, exp, "grr", "mscoco", 0.7, 1.4, start=1100,
                                    tags={"pretrain_run_id": ids["old-grr"]})
    for encoder in ("baseline", "grr"):
        pre = ids[encoder] = log_run(client, exp, encoder, "cc12m", *VALUES[encoder]["cc12m"], start=2000,
                                     evaluation={**EVAL[encoder], **BENCHMARK[encoder]},
                                     lambda_params=encoder == "grr")
        for dataset in ("mscoco", "roco", "flickr30k"):
            ids[f"{encoder}-{dataset}"] = log_run(
                client, exp, encoder, dataset, *VALUES[encoder][dataset], start=3000, evaluation=EVAL[encoder],
                tags={"pretrain_run_id": pre}, lambda_params=encoder == "grr",
                final=(encoder, dataset) != ("baseline", "flickr30k"))  # that one: only val/ metrics
    # Newer but not finished: never chosen by default.
    ids["grr-running"] = log_run(client, exp, "grr", "cc12m", 5.0, 5.0, start=5000, status="RUNNING")
    ids["baseline-roco-failed"] = log_run(client, exp, "baseline", "roco", 5.0, 5.0, start=5000, status="FAILED")
    return {"root": root, "uri": uri, "ids": ids, "experiment_id": exp}


def section(md: str, title: str) -> str:
    part = md.split(f"## {title} (validation set")[1]
    return part.split("\n## ")[0]


def row(md: str, title: str, label: str) -> list[str]:
    for line in section(md, title).splitlines():
        if line.startswith(f"| {label} "):
            return [c.strip() for c in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row {label!r} in {title}")


def pct(base: float, grr: float) -> str:
    return f"{100 * (grr - base) / base:+.2f}%"
