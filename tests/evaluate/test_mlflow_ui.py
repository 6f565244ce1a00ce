"""The MLflow UI shows a GRR and a Baseline run side by side, with their val/ metrics.

Starts `mlflow server` over a sqlite store in tmp_path, opens the run-comparison page
(#/compare-runs?runs=[...]&experiments=[...]) in headless Chromium and reads the rendered DOM.
Chromium is required, not optional: `make test` installs it (Debian package `chromium`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from support.ui_check import compare_runs_url, dump_dom, find_chromium, mlflow_server, parse_compare_page

pytestmark = pytest.mark.browser

# Latest (step 20) val/ values; two decimals, so the UI shows them as they are.
LAST = {"baseline": {"val/coca_loss": 4.25, "val/perplexity": 9.5, "val/contrastive_loss": 1.25,
                     "val/caption_loss": 1.5},
        "grr": {"val/coca_loss": 3.75, "val/perplexity": 8.25, "val/contrastive_loss": 0.75,
                "val/caption_loss": 1.25}}


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.fail("headless Chromium is required for the MLflow UI test and was not found on PATH "
                    "(install it: `apt-get install -y chromium`, as `make test` does; or set $CHROMIUM)")
    return path


@pytest.mark.timeout(240)  # store ~10 s + server start <= 60 s + page render <= 60 s + shutdown <= 20 s
def test_compare_page_shows_both_runs_and_their_val_metrics(tmp_path: Path, chromium: str) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("grr-coca", artifact_location=(tmp_path / "artifacts").as_uri())
    ids = {}
    now = int(time.time() * 1000)
    for encoder, last in LAST.items():
        run = client.create_run(exp, run_name=f"finetune-mscoco-{encoder}",
                                tags={"encoder": encoder, "phase": "finetune", "dataset": "mscoco"})
        ids[encoder] = run.info.run_id
        client.log_batch(run.info.run_id, metrics=[Metric(k, v + (20 - step) / 10, now + step, step)
                                                   for k, v in last.items() for step in (0, 10, 20)])
        client.set_terminated(run.info.run_id)

    url = compare_runs_url("", [ids["baseline"], ids["grr"]], [exp])
    with mlflow_server(uri, tmp_path / "artifacts", start_timeout_s=60, log_path=tmp_path / "server.log") as base:
        dom = dump_dom(base + url, chromium, timeout_s=60,
                       ready=lambda d: (p := parse_compare_page(d)) is not None and "val/coca_loss" in p.metrics)
    (tmp_path / "compare.html").write_text(dom)
    page = parse_compare_page(dom)
    assert page is not None, f"the comparison page did not render its run and metric tables; DOM in {tmp_path}"
    assert sorted(page.run_ids) == sorted(ids.values())
    assert sorted(page.run_names) == ["finetune-mscoco-baseline", "finetune-mscoco-grr"]
    for encoder, last in LAST.items():
        for key, value in last.items():
            assert float(page.value(ids[encoder], key)) == pytest.approx(value), (encoder, key, page.metrics)
