"""`grr-coca compare` (pipeline.evaluate.report) over a real MLflow sqlite store holding fake runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from pipeline.evaluate.report import PAPER_TABLE2, compare, main

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
STEPS = (0, 10, 20)


def losses(dataset: str, con: float, cap: float) -> dict[str, float]:
    lam_con, lam_cap = LAMBDAS["pretrain" if dataset == "cc12m" else "finetune"]
    return {"coca_loss": lam_con * con + lam_cap * cap, "contrastive_loss": con, "caption_loss": cap,
            "perplexity": math.exp(cap)}


def log_run(client: MlflowClient, experiment_id: str, encoder: str, dataset: str, con: float, cap: float, *,
            start: int, status: str = "FINISHED", tags: dict | None = None, final: bool = True,
            evaluation: dict | None = None, lambda_params: bool = True) -> str:
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
    params = [Param(f"{phase}.lambda_{w}", str(v)) for w, v in zip(("con", "cap"), LAMBDAS[phase])]
    client.log_batch(run.info.run_id, metrics=metrics, params=params if lambda_params else [])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status, end_time=start + 100)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """One sqlite store: a current pair of pipelines, an older GRR pipeline, and runs that must be skipped."""
    root = tmp_path_factory.mktemp("mlflow")
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
                                     evaluation=EVAL[encoder], lambda_params=encoder == "grr")
        for dataset in ("mscoco", "roco", "flickr30k"):
            ids[f"{encoder}-{dataset}"] = log_run(
                client, exp, encoder, dataset, *VALUES[encoder][dataset], start=3000, evaluation=EVAL[encoder],
                tags={"pretrain_run_id": pre}, lambda_params=encoder == "grr",
                final=(encoder, dataset) != ("baseline", "flickr30k"))  # that one: only val/ metrics
    # Newer but not finished: never chosen by default.
    log_run(client, exp, "grr", "cc12m", 5.0, 5.0, start=5000, status="RUNNING")
    log_run(client, exp, "baseline", "roco", 5.0, 5.0, start=5000, status="FAILED")
    return {"root": root, "uri": uri, "ids": ids}


@pytest.fixture(scope="module")
def default_report(store, tmp_path_factory) -> Path:
    return compare(store["uri"], tmp_path_factory.mktemp("reports"))


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


TITLES = {"cc12m": "CC12M", "mscoco": "MSCOCO", "roco": "ROCO", "flickr30k": "Flickr30K"}


def test_report_has_both_encoders_changes_and_the_papers_numbers(default_report: Path) -> None:
    md = default_report.read_text()
    assert "Table 2 of the GRR-CoCa preprint" in md
    # Hand-checked: MSCOCO CoCa loss 1.0 + 2 * 1.5 = 4.0 against 0.5 + 2 * 1.25 = 3.0; CC12M contrastive 0.4 -> 0.3.
    assert row(md, "MSCOCO", "CoCa loss ↓") == ["4.0000", "3.0000", "-25.00%", "4.6955", "4.4090", "-6.10%"]
    assert row(md, "CC12M", "contrastive loss ↓") == ["0.4000", "0.3000", "-25.00%", "0.3610", "0.2626", "-27.25%"]
    assert row(md, "CC12M", "BLEU-4 ↑") == ["0.2000", "0.2500", "+25.00%", "not reported", "not reported",
                                           "not reported"]
    assert row(md, "ROCO", "text→image R@10 (%) ↑")[:3] == ["50.00", "55.00", "+10.00%"]
    for dataset, title in TITLES.items():
        b, g = losses(dataset, *VALUES["baseline"][dataset]), losses(dataset, *VALUES["grr"][dataset])
        paper = PAPER_TABLE2[dataset]
        for key, label in (("coca_loss", "CoCa loss ↓"), ("perplexity", "perplexity ↓"),
                           ("contrastive_loss", "contrastive loss ↓")):
            assert row(md, title, label) == [f"{b[key]:.4f}", f"{g[key]:.4f}", pct(b[key], g[key]),
                                             f"{paper['baseline'][key]:.4f}", f"{paper['grr'][key]:.4f}",
                                             f"{paper['change'][key]:+.2f}%"]
        assert row(md, title, "caption loss ↓")[:3] == [f"{b['caption_loss']:.4f}", f"{g['caption_loss']:.4f}",
                                                        pct(b["caption_loss"], g["caption_loss"])]
        for key, label in (("cider", "CIDEr ↑"), ("i2t_r5", "image→text R@5 (%) ↑")):
            assert row(md, title, label)[2] == pct(EVAL["baseline"][key], EVAL["grr"][key])
        assert (default_report.parent / f"curves-{dataset}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](curves-{dataset}.png)" in section(md, title)
    assert "Missing" not in md


def test_default_selection_is_the_latest_finished_run_of_each_stage(store, default_report: Path) -> None:
    md, ids = default_report.read_text(), store["ids"]
    assert ids["grr"] in section(md, "CC12M") and ids["old-grr"] not in md  # older and RUNNING runs skipped
    assert ids["baseline-roco"] in section(md, "ROCO")  # not the newer FAILED one
    data = json.loads((default_report.parent / "comparison.json").read_text())
    assert data["datasets"]["mscoco"]["runs"] == {"baseline": ids["baseline-mscoco"], "grr": ids["grr-mscoco"]}
    assert data["datasets"]["mscoco"]["change_pct"]["coca_loss"] == pytest.approx(-25.0)
    assert data["datasets"]["roco"]["paper"]["grr"]["coca_loss"] == 6.8708
    # The baseline Flickr30K run logged no final/ metrics: its last val/ values are used.
    assert data["datasets"]["flickr30k"]["baseline"]["coca_loss"] == pytest.approx(1.2 + 2 * 2.0)


def test_consistency_check_per_row_with_lambdas_from_params_or_defaults(default_report: Path) -> None:
    md = default_report.read_text()
    cc12m, roco = section(md, "CC12M"), section(md, "ROCO")
    assert "- GRR-CoCa: λ = (2, 1) from run params" in cc12m and "- Baseline CoCa: λ = (2, 1) from defaults" in cc12m
    assert "- GRR-CoCa: λ = (1, 2) from run params" in roco
    assert md.count(": consistent") == 8 and "**inconsistent**" not in md
    assert "- paper, Baseline CoCa: λ = (1, 2) from paper: λ_con·L_con + λ_cap·ln(perplexity) = 7.064109, " \
           "residual -3.21e-03 (-0.045%): beyond what 4-decimal rounding allows (±1.1e-04)" in roco


def test_missing_baseline_runs_are_reported_not_fatal(store, tmp_path: Path) -> None:
    shutil.copy(store["root"] / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("grr-coca").experiment_id
    for run in client.search_runs([exp]):
        if run.data.tags["encoder"] == "baseline":
            client.delete_run(run.info.run_id)
    md = compare(uri, tmp_path / "reports").read_text()
    for dataset, title in TITLES.items():
        name = "pretrain-baseline" if dataset == "cc12m" else f"finetune-{dataset}-baseline"
        assert (f"> **Missing** — Baseline CoCa: no finished run `{name}` in experiment grr-coca at {uri} — "
                f"run `dvc exp run -S model.encoder=baseline -S preset=smoke`") in section(md, title)
        assert (tmp_path / "reports" / f"curves-{dataset}.png").exists()  # GRR's curves alone
    assert row(md, "MSCOCO", "CoCa loss ↓") == ["—", "3.0000", "—", "4.6955", "4.4090", "-6.10%"]


def test_runs_pinned_by_id(store, tmp_path: Path, capsys) -> None:
    ids = store["ids"]
    # A pinned pre-training run brings the fine-tuning runs tagged with its id; a pinned fine-tuning run
    # is used for its own set.
    main(["--tracking-uri", store["uri"], "--out", str(tmp_path), "--grr", ids["old-grr"],
          "--baseline", ids["baseline-roco"]])
    assert "wrote" in capsys.readouterr().out
    md = (tmp_path / "comparison.md").read_text()
    assert ids["old-grr"] in section(md, "CC12M") and "pinned by --grr" in section(md, "CC12M")
    assert row(md, "CC12M", "contrastive loss ↓")[1] == "0.9000"
    assert ids["old-grr-mscoco"] in section(md, "MSCOCO")
    assert row(md, "MSCOCO", "contrastive loss ↓")[:2] == ["1.0000", "0.7000"]
    assert (f"GRR-CoCa: no finished run `finetune-roco-grr` tagged pretrain_run_id={ids['old-grr']}"
            in section(md, "ROCO"))
    assert ids["baseline-roco"] in section(md, "ROCO") and "pinned by --baseline" in section(md, "ROCO")
    assert ids["baseline"] in section(md, "CC12M")  # baseline not pinned there: the default choice


def test_bad_pins_fail_with_a_clear_message(store, tmp_path: Path) -> None:
    ids = store["ids"]
    with pytest.raises(SystemExit, match="--grr 0123abc: no such run"):
        main(["--tracking-uri", store["uri"], "--out", str(tmp_path), "--grr", "0123abc"])
    with pytest.raises(SystemExit, match="is a grr run"):
        main(["--tracking-uri", store["uri"], "--out", str(tmp_path), "--baseline", ids["grr"]])
    with pytest.raises(SystemExit, match="pinned twice"):
        main(["--tracking-uri", store["uri"], "--out", str(tmp_path), "--grr", ids["grr"], "--grr", ids["old-grr"]])


def test_no_tracking_store_yet(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    md = compare(uri, tmp_path / "reports").read_text()
    assert "**No tracking store**" in md and not (tmp_path / "none").exists()
    assert md.count("> **Missing**") == 8
    assert "run `dvc exp run -S model.encoder=grr`" in md
    assert row(md, "ROCO", "CoCa loss ↓") == ["—", "—", "—", "7.0609", "6.8708", "-2.69%"]
    assert not list((tmp_path / "reports").glob("*.png"))
