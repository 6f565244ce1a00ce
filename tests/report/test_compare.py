"""`grr-coca compare` (pipeline.report.compare, via pipeline.cli) over a real MLflow sqlite store of fake runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from support.reportkit import TITLES, row, section

from pipeline.cli import main
from pipeline.report.compare import compare


def test_writes_the_report_json_and_a_curves_png_per_validation_set(default_report: Path) -> None:
    md = default_report.read_text()
    assert default_report.name == "comparison.md" and (default_report.parent / "comparison.json").exists()
    for dataset, title in TITLES.items():
        assert (default_report.parent / f"curves-{dataset}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](curves-{dataset}.png)" in section(md, title)


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
    assert row(md, "MSCOCO", "CoCa loss ↓") == ["—", "3.0000", "—", "—", "4.6955", "4.4090", "-6.10%"]


def test_runs_pinned_by_id(store, tmp_path: Path, capsys) -> None:
    ids = store["ids"]
    # A pinned pre-training run brings the fine-tuning runs tagged with its id; a pinned fine-tuning run
    # is used for its own set.
    main(["compare", "--tracking-uri", store["uri"], "--out", str(tmp_path), "--grr", ids["old-grr"],
          "--baseline", ids["baseline-roco"]])
    assert capsys.readouterr().out == f"wrote {tmp_path / 'comparison.md'} (2 run(s) missing: see the report)\n"
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
    ids, base = store["ids"], ["compare", "--tracking-uri", store["uri"], "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="^grr-coca compare: --grr 0123abc: no such run"):
        main([*base, "--grr", "0123abc"])
    with pytest.raises(SystemExit, match="is a grr run"):
        main([*base, "--baseline", ids["grr"]])
    with pytest.raises(SystemExit, match="pinned twice"):
        main([*base, "--grr", ids["grr"], "--grr", ids["old-grr"]])


def test_no_tracking_store_yet(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    with pytest.raises(SystemExit, match=r"^grr-coca compare: no experiment 'grr-coca' at .*: nothing to compare"):
        main(["compare", "--tracking-uri", uri, "--out", str(tmp_path / "reports")])  # the report is written
    assert capsys.readouterr().out.endswith(" (8 run(s) missing: see the report)\n")
    md = (tmp_path / "reports" / "comparison.md").read_text()
    assert "**No tracking store**" in md and not (tmp_path / "none").exists()
    assert md.count("> **Missing**") == 8
    assert "run `dvc exp run -S model.encoder=grr`" in md
    assert row(md, "ROCO", "CoCa loss ↓") == ["—", "—", "—", "—", "7.0609", "6.8708", "-2.69%"]
    assert not list((tmp_path / "reports").glob("*.png"))
    with pytest.raises(SystemExit, match="the tracking store .* does not exist"):
        main(["compare", "--tracking-uri", uri, "--out", str(tmp_path / "reports"), "--grr", "abc"])


def test_no_experiment_yet(store, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no experiment 'elsewhere'"):  # a misspelt --experiment is an error
        main(["compare", "--tracking-uri", store["uri"], "--out", str(tmp_path), "--experiment", "elsewhere"])
    md = compare(store["uri"], tmp_path, experiment="elsewhere").read_text()
    assert f"**No experiment** `elsewhere` at `{store['uri']}`" in md and md.count("> **Missing**") == 8


def test_captions_of_both_encoders_beside_a_reference(store, tmp_path: Path) -> None:
    from pipeline.evaluate.samples import samples_markdown

    shutil.copy(store["root"] / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    for encoder, words in (("baseline", "a red square"), ("grr", "a red | blue square")):
        path = tmp_path / encoder / "pretrain-captions.md"
        path.parent.mkdir()
        path.write_text(samples_markdown("pretrain", [
            {"image_id": "img7", "generated": words, "references": ["A red square.", "A square"]},
            {"image_id": f"only-{encoder}", "generated": "x", "references": ["y"]}]))
        client.log_artifact(store["ids"][encoder], str(path), "eval")
    md = compare(uri, tmp_path / "reports").read_text()
    assert "| img7 | A red square. | a red square | a red \\| blue square |" in section(md, "CC12M")  # | escaped
    assert "only-" not in md  # shown only for images both encoders captioned
    assert "Captions of the first validation images" not in section(md, "MSCOCO")  # none logged there
