"""`grr-coca compare` over a seeded factorial grid: groups by the factors that differ, means with
t-intervals over seeds, seed-paired differences, main effects and interactions, and Table 2 with
intervals. The values follow a known additive model, so every number is computed by hand here."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest
from mlflow import MlflowClient
from support.reportkit import log_run, section

from pipeline.model.config import BUNDLES
from pipeline.report.compare import compare

SEEDS = {0: 0.0, 1: 0.03, 2: -0.03}  # seed -> its shift of every cell's contrastive loss
T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)
CAPTION = 2.0
DESIGNS = list(itertools.product(("layernorm", "rmsnorm"), ("gelu", "geglu"), ("sincos", "rope2d")))


def contrastive(design: tuple[str, str, str], seed: int) -> float:
    """1.0 + 0.5 N + 0.1 F - 0.25 P + 0.2 N P + the seed's shift, with N, F, P = 1 for GRR's choices."""
    n, f, p = (int(level == grr) for level, grr in zip(design, BUNDLES["grr"]))
    return 1.0 + 0.5 * n + 0.1 * f - 0.25 * p + 0.2 * n * p + SEEDS[seed]


def encoder_of(design) -> str:
    return next((name for name, bundle in BUNDLES.items() if bundle == design), "vit-" + "-".join(design))


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("grid")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("grr-coca", artifact_location=(root / "artifacts").as_uri())
    start = 1000
    for design in DESIGNS:
        tags = dict(zip(("vit.norm", "vit.ffn", "vit.pos"), design))
        for seed in SEEDS:
            if design == BUNDLES["grr"] and seed == 0:  # an older run of the same cell and seed: not counted
                log_run(client, exp, "grr", "cc12m", 9.0, CAPTION, start=start, tags=tags,
                        params={"train.seed": seed, "pretrain.epochs": 8, **tags})
            start += 10
            log_run(client, exp, encoder_of(design), "cc12m", contrastive(design, seed), CAPTION, start=start,
                    tags=tags, params={"train.seed": seed, "pretrain.epochs": 8, "model.vit.norm": design[0], **tags})
    return {"root": root, "uri": uri}


@pytest.fixture(scope="module")
def report(grid, tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("report")
    md = compare(grid["uri"], out).read_text()
    return md, json.loads((out / "comparison.json").read_text())


def cells(md: str, label: str) -> list[str]:
    for line in md.splitlines():
        if line.startswith(f"| {label} |"):
            return [c.strip() for c in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row {label!r}")


def test_runs_are_grouped_by_the_design_factors_with_seeds_as_replicates(report) -> None:
    md, data = report
    groups = data["datasets"]["cc12m"]["groups"]
    # pretrain.epochs is the same everywhere; the params model.vit.norm and vit.* (as the trainer logs
    # them) stand for the design: none is a factor of its own.
    assert groups["factors"] == ["vit.norm", "vit.ffn", "vit.pos"]
    assert len(groups["groups"]) == 8 and all(set(g["runs"]) == {"0", "1", "2"} for g in groups["groups"])
    assert groups["groups"][0]["label"] == "norm=layernorm, ffn=gelu, pos=sincos (baseline)"
    grr = next(g for g in groups["groups"] if g["design"] == list(BUNDLES["grr"]))
    assert grr["summary"]["contrastive_loss"]["mean"] == pytest.approx(1.55)  # the older 9.0 run is not counted
    # Hand: the Baseline cell's values are 1.0, 1.03, 0.97: sd 0.03, half-width t * 0.03 / sqrt(3).
    base = groups["groups"][0]["summary"]["contrastive_loss"]
    half = T_975_2 * 0.03 / math.sqrt(3)
    assert base["mean"] == pytest.approx(1.0) and base["sd"] == pytest.approx(0.03) and base["n"] == 3
    assert base["ci95"] == pytest.approx([1.0 - half, 1.0 + half])
    assert cells(section(md, "CC12M"), "norm=layernorm, ffn=gelu, pos=sincos (baseline)")[:4] == [
        "3", "4.0000 [3.8510, 4.1490]", "7.3891 [7.3891, 7.3891]", "1.0000 [0.9255, 1.0745]"]  # CoCa: 2 x half


def test_main_effects_and_interactions_by_hand(report) -> None:
    md, data = report
    effects = data["datasets"]["cc12m"]["groups"]["effects"]["contrastive_loss"]
    # Main effect of N: 0.5 + 0.2 x (mean of P) = 0.6; of P: -0.25 + 0.2 x 0.5 = -0.15; of F: 0.1.
    # N x P: half of (N's effect at P high, 0.7, minus at P low, 0.5) = 0.1; the other pairs 0.
    expected = {"vit.norm": 0.6, "vit.ffn": 0.1, "vit.pos": -0.15, "vit.norm x vit.ffn": 0.0,
                "vit.norm x vit.pos": 0.1, "vit.ffn x vit.pos": 0.0}
    assert {t: e["mean"] for t, e in effects.items()} == pytest.approx(expected, abs=1e-12)
    assert all(e["n"] == 3 for e in effects.values())  # the seed shift cancels in every contrast
    assert data["datasets"]["cc12m"]["groups"]["effect_levels"]["vit.pos"] == ["sincos", "rope2d"]
    # CoCa loss = 2 x contrastive + caption: twice the effects.
    coca = data["datasets"]["cc12m"]["groups"]["effects"]["coca_loss"]
    assert coca["vit.norm"]["mean"] == pytest.approx(1.2)
    assert cells(md, "vit.norm")[:3] == ["+1.2000 [+1.2000, +1.2000] ✱", "+0.0000 [+0.0000, +0.0000]",
                                          "+0.6000 [+0.6000, +0.6000] ✱"]


def test_paired_differences_against_the_baseline_design(report) -> None:
    _, data = report
    groups = data["datasets"]["cc12m"]["groups"]["groups"]
    only_norm = next(g for g in groups if g["design"] == ["rmsnorm", "gelu", "sincos"])
    assert only_norm["reference"] == "norm=layernorm, ffn=gelu, pos=sincos (baseline)"
    diff = only_norm["paired_difference"]["contrastive_loss"]
    assert diff["mean"] == pytest.approx(0.5) and diff["n"] == 3 and diff["excludes_zero"]
    assert groups[0]["paired_difference"] == {}  # the reference itself


def test_table_2_shows_the_two_bundles_over_seeds(report) -> None:
    md, data = report
    cc12m = section(md, "CC12M")
    assert "Baseline CoCa 3 seed(s) (0, 1, 2); GRR-CoCa 3 seed(s) (0, 1, 2)" in cc12m
    # GRR 1.55 + shift, Baseline 1.0 + shift: each paired difference is 0.55.
    row = cells(cc12m, "contrastive loss ↓")
    assert row[:4] == ["1.0000 [0.9255, 1.0745]", "1.5500 [1.4755, 1.6245]", "+0.5500 [+0.5500, +0.5500] ✱",
                       "+55.00%"]
    assert data["datasets"]["cc12m"]["paired_difference"]["contrastive_loss"]["n"] == 3
    assert "| CC12M | 3 / 3 | +27.50% | -7.15% |" in md  # CoCa: (5.1 - 4.0) / 4.0; the paper's beside it


def test_a_missing_group_keeps_the_rest_and_says_why_there_are_no_effects(grid, tmp_path) -> None:
    shutil.copy(grid["root"] / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("grr-coca").experiment_id
    for run in client.search_runs([exp]):
        if (run.data.tags["vit.norm"], run.data.tags["vit.ffn"], run.data.tags["vit.pos"]) == \
                ("layernorm", "geglu", "rope2d"):
            client.delete_run(run.info.run_id)
    md = compare(uri, tmp_path / "reports").read_text()
    data = json.loads((tmp_path / "reports" / "comparison.json").read_text())["datasets"]["cc12m"]["groups"]
    assert len(data["groups"]) == 7 and data["effects"] == {}
    assert "No effects table: no factorial effects: the 2^3 design lacks 1 of its cells, e.g. norm=layernorm, " \
           "ffn=geglu, pos=rope2d." in md
    assert cells(md, "norm=rmsnorm, ffn=gelu, pos=sincos")[0] == "3"
    assert (tmp_path / "reports" / "groups-cc12m.png").read_bytes()[:4] == b"\x89PNG"


def test_another_reference_design(grid, tmp_path) -> None:
    from pipeline.cli import main

    main(["compare", "--tracking-uri", grid["uri"], "--out", str(tmp_path), "--reference", "rmsnorm-gelu-sincos"])
    groups = json.loads((tmp_path / "comparison.json").read_text())["datasets"]["cc12m"]["groups"]["groups"]
    base = next(g for g in groups if g["design"] == list(BUNDLES["baseline"]))
    assert base["reference"] == "norm=rmsnorm, ffn=gelu, pos=sincos"
    assert base["paired_difference"]["contrastive_loss"]["mean"] == pytest.approx(-0.5)  # 1.0 against 1.5
    with pytest.raises(SystemExit, match="--reference 'rmsnorm-gelu': expected baseline, grr or <norm>-<ffn>-<pos>"):
        main(["compare", "--tracking-uri", grid["uri"], "--out", str(tmp_path), "--reference", "rmsnorm-gelu"])


def test_the_new_switches_are_factors_old_runs_at_their_defaults() -> None:
    """`model.text.ffn`, `train.contrastive_loss`, `finetune.mode` and `finetune.freeze` are factors when
    runs differ in them; a run logged before they existed counts at the default (today's model), and
    the consequences (trainable counts) are no factors of their own."""
    from types import SimpleNamespace

    from pipeline.report.groups import SWITCH_DEFAULTS, group_runs

    def run(rid: str, seed: int, **params) -> SimpleNamespace:
        tags = dict(zip(("vit.norm", "vit.ffn", "vit.pos"), BUNDLES["grr"]))
        logged = {"train.seed": str(seed), "pretrain.epochs": "8", **tags, **params}
        return SimpleNamespace(info=SimpleNamespace(run_id=rid), data=SimpleNamespace(params=logged, tags=tags))

    from pipeline.config import build_config

    logged_by_default = {k: str(v) for k, v in build_config({"preset": "demo"}).flat().items()}  # as tracking logs
    assert {k: logged_by_default[k] for k in SWITCH_DEFAULTS} == SWITCH_DEFAULTS
    new = {**SWITCH_DEFAULTS, "run.trainable_params": "100", "run.trainable_fraction": "1.0"}
    runs = [run("old", 0),  # before the switches: no such params
            run("today", 1, **new),
            run("swiglu", 0, **{**new, "model.text.ffn": "swiglu"}),
            run("sigmoid", 0, **{**new, "train.contrastive_loss": "sigmoid"}),
            run("adapter", 0, **{**new, "finetune.mode": "adapter", "run.trainable_params": "5"}),
            run("frozen", 0, **{**new, "finetune.freeze": "['vit']", "run.trainable_fraction": "0.6"})]
    factors, groups = group_runs(runs)
    assert factors == ["finetune.freeze", "finetune.mode", "model.text.ffn", "train.contrastive_loss"]
    letterbox = run("letterbox", 0, **{**new, "data.shard.resize_mode": "letterbox"})
    assert group_runs([run("old", 0), letterbox])[0] == ["data.shard.resize_mode"]
    at_load = run("at-load", 0, **{**new, "data.shard.resize_at": "load"})
    assert group_runs([run("old", 0), at_load])[0] == ["data.shard.resize_at"]
    by_label = {g.label: sorted(r.info.run_id for r in g.runs.values()) for g in groups}
    assert by_label == {
        "freeze=[], mode=full, ffn=geglu, contrastive_loss=softmax": ["old", "today"],  # seeds 0 and 1
        "freeze=[], mode=full, ffn=swiglu, contrastive_loss=softmax": ["swiglu"],
        "freeze=[], mode=full, ffn=geglu, contrastive_loss=sigmoid": ["sigmoid"],
        "freeze=[], mode=adapter, ffn=geglu, contrastive_loss=softmax": ["adapter"],
        "freeze=['vit'], mode=full, ffn=geglu, contrastive_loss=softmax": ["frozen"]}
    # beside a differing ViT feed-forward the text one is named by its section
    swiglu_vit = run("vit-swiglu", 0, **new)
    swiglu_vit.data.tags = swiglu_vit.data.params = {**swiglu_vit.data.params, "vit.ffn": "swiglu"}
    factors, groups = group_runs([run("a", 0, **new), run("b", 0, **{**new, "model.text.ffn": "swiglu"}), swiglu_vit])
    assert factors == ["vit.ffn", "model.text.ffn"]
    assert {g.label for g in groups} == {"ffn=geglu, text.ffn=geglu (grr)", "ffn=geglu, text.ffn=swiglu (grr)",
                                         "ffn=swiglu, text.ffn=geglu"}


def test_joint_fine_tunes_are_grouped_by_their_sampling_and_reported_per_set() -> None:
    """The joint fine-tune's runs (tag dataset=joint) appear in the report, grouped by `joint.sampling`,
    with each fine-tuning set's final CoCa loss and evaluate@joint-<ds> scores, averaged over seeds."""
    from types import SimpleNamespace

    from pipeline.report.groups import analyse
    from pipeline.report.render import _joint_section, as_json
    from pipeline.report.runs import JOINT_METRICS

    def run(rid: str, seed: int, sampling: str, loss: float) -> SimpleNamespace:
        tags = {**dict(zip(("vit.norm", "vit.ffn", "vit.pos"), BUNDLES["grr"])), "dataset": "joint"}
        params = {"train.seed": str(seed), "joint.sampling": sampling, **tags}
        metrics = {"final/mscoco/coca_loss": loss, "eval/mscoco/bleu4": 0.3, "final/roco/coca_loss": loss + 8,
                   "eval/flickr30k/t2i_r1": 50.0 + seed}
        return SimpleNamespace(info=SimpleNamespace(run_id=rid), data=SimpleNamespace(params=params, tags=tags,
                                                                                       metrics=metrics))

    runs = [run("a", 0, "sqrt", 5.0), run("b", 1, "sqrt", 5.2), run("c", 0, "uniform", 6.0)]
    joint = analyse(runs, metrics=[k for k, _, _ in JOINT_METRICS])
    assert joint.factors == ["joint.sampling"]
    sqrt = joint.summary["sampling=sqrt"]
    assert sqrt["mscoco/coca_loss"].mean == pytest.approx(5.1) and sqrt["mscoco/coca_loss"].n == 2
    assert sqrt["roco/coca_loss"].mean == pytest.approx(13.1) and sqrt["flickr30k/t2i_r1"].mean == pytest.approx(50.5)
    text = "\n".join(_joint_section(joint))
    assert "## Joint fine-tune" in text and "| sampling=uniform | 1 | MSCOCO CoCa loss | 6.0000 |" in text
    assert as_json([], "uri", "exp", joint)["joint"]["factors"] == ["joint.sampling"]
    assert _joint_section(analyse([])) == [] and as_json([], "uri", "exp")["joint"] is None
