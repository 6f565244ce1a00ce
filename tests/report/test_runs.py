"""pipeline.report.runs: which runs the report compares, and the values, λ and curves it reads from them."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from support.reportkit import LAMBDAS, STEPS, losses

from pipeline.report.runs import curve, run_lambdas, run_values, select_runs


def chosen_ids(selections) -> dict:
    return {key: (s.run.info.run_id if s.run is not None else None) for key, s in selections.items()}


def test_default_selection_is_the_latest_finished_run_of_each_stage(store) -> None:
    ids = store["ids"]
    selections = select_runs(MlflowClient(store["uri"]), store["experiment_id"])
    got = chosen_ids(selections)
    assert got["cc12m", "grr"] == ids["grr"]  # not the older run, nor the newer RUNNING one
    assert got["roco", "baseline"] == ids["baseline-roco"]  # not the newer FAILED one
    assert got["mscoco", "grr"] == ids["grr-mscoco"]
    assert ids["old-grr"] not in got.values() and len(got) == 8
    assert selections["mscoco", "grr"].how == "latest finished `finetune-mscoco-grr`"
    assert not any(s.missing for s in selections.values())


def test_a_pinned_pretraining_run_brings_the_finetuning_runs_tagged_with_it(store) -> None:
    ids = store["ids"]
    selections = select_runs(MlflowClient(store["uri"]), store["experiment_id"],
                             {"grr": [ids["old-grr"]], "baseline": [ids["baseline-roco"]]}, "the store")
    got = chosen_ids(selections)
    assert got["cc12m", "grr"] == ids["old-grr"] and selections["cc12m", "grr"].how == "pinned by --grr"
    assert got["mscoco", "grr"] == ids["old-grr-mscoco"]
    assert got["roco", "grr"] is None
    assert selections["roco", "grr"].missing == (
        f"GRR-CoCa: no finished run `finetune-roco-grr` tagged pretrain_run_id={ids['old-grr']} in the store "
        "— run `dvc exp run -S model.encoder=grr -S preset=smoke`")
    assert got["roco", "baseline"] == ids["baseline-roco"]
    assert selections["roco", "baseline"].how == "pinned by --baseline"
    assert got["cc12m", "baseline"] == ids["baseline"]  # baseline not pinned there: the default choice


def test_a_pinned_unfinished_run_says_its_status(store) -> None:
    ids = store["ids"]
    selections = select_runs(MlflowClient(store["uri"]), store["experiment_id"], {"grr": [ids["grr-running"]]})
    assert selections["cc12m", "grr"].how == "pinned by --grr, status RUNNING"


@pytest.mark.parametrize("pins, message", [
    ({"grr": ["0123abc"]}, "--grr 0123abc: no such run"),
    ({"baseline": ["grr"]}, "is a grr run"),
    ({"grr": ["grr", "old-grr"]}, "pinned twice"),
    ({"vit": ["grr"]}, "unknown encoder 'vit'"),
])
def test_bad_pins_raise(store, pins, message) -> None:
    pins = {e: [store["ids"].get(i, i) for i in ids] for e, ids in pins.items()}
    with pytest.raises(ValueError, match=message):
        select_runs(MlflowClient(store["uri"]), store["experiment_id"], pins)


def test_no_experiment_leaves_every_run_missing_with_its_command() -> None:
    selections = select_runs(None, None, where="nowhere")
    assert all(s.run is None for s in selections.values()) and len(selections) == 8
    assert selections["cc12m", "baseline"].missing == ("Baseline CoCa: no finished run `pretrain-baseline` in nowhere "
                                                       "— run `dvc exp run -S model.encoder=baseline`")


def test_values_are_final_else_the_last_validation_and_eval_scores(store) -> None:
    client, ids = MlflowClient(store["uri"]), store["ids"]
    grr = run_values(client.get_run(ids["grr-mscoco"]))
    assert grr["coca_loss"] == pytest.approx(losses("mscoco", 0.5, 1.25)["coca_loss"]) and grr["cider"] == 0.6
    # The baseline Flickr30K run logged no final/ metrics: its last val/ values are used.
    assert run_values(client.get_run(ids["baseline-flickr30k"]))["coca_loss"] == pytest.approx(1.2 + 2 * 2.0)


def test_lambdas_from_run_params_else_the_papers(store) -> None:
    client, ids = MlflowClient(store["uri"]), store["ids"]
    assert run_lambdas(client.get_run(ids["grr"]), "cc12m") == (*LAMBDAS["pretrain"], "run params")
    assert run_lambdas(client.get_run(ids["baseline-roco"]), "roco") == (*LAMBDAS["finetune"], "defaults")


def test_curve_is_one_value_per_step(store) -> None:
    client, ids = MlflowClient(store["uri"]), store["ids"]
    steps, values = curve(client, ids["grr-roco"], "val/contrastive_loss")
    assert steps == list(STEPS) and values[-1] == pytest.approx(1.5) and values[0] == pytest.approx(3.0)
