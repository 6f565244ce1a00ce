"""Shards made with data.shard.resize_at: load, by the shard stage from a download: a pre-training
run trains and validates on them, and the evaluate stage scores its checkpoint on them (and refuses
load shards made square another way)."""

from __future__ import annotations

import json
import runpy
import sys

import pytest
import yaml
from support.trainkit import REPO, merge, params, write_download

from pipeline.config import build_config
from pipeline.data.tokenizer import build_tokenizer
from pipeline.train.loop import RunSpec, train

pytestmark = pytest.mark.slow


def run_stage(monkeypatch, script: str, *argv: str) -> None:
    """A stage script in this process, as dvc.yaml runs it."""
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(REPO / "stages" / script), run_name="__main__")


def test_a_run_on_load_shards_trains_and_the_evaluate_stage_scores_it(tmp_path, mlflow_env, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_download(tmp_path / "in", {"train": 64, "val": 16}, corrupt=(70,))  # a val image with bad pixels
    run_params = merge(params(), {"data": {"shard": {"resize_at": "load"}}, "pretrain": {"epochs": 1}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(run_params))
    inputs = ["--download", "in/download", "--splits", "in/splits", "--tokens", "in/tokens"]
    run_stage(monkeypatch, "shard.py", "cc12m", *inputs, "--out", "shards", "--counts", "shard.json")
    counts = json.loads((tmp_path / "shard.json").read_text())
    assert (counts["train_samples"], counts["val_samples"], counts["val_skipped"]) == (64, 16, 0)
    assert json.loads((tmp_path / "shards/val/manifest.json").read_text())["resize_at"] == "load"

    build_tokenizer("train", 256, [f"class {i}" for i in range(6)] * 20).save_pretrained(tmp_path / "tokenizer")
    spec = RunSpec("pretrain", "cc12m", tmp_path / "shards/train", tmp_path / "shards/val", tmp_path / "out",
                   tmp_path / "state", tmp_path / "pretrain.json", tmp_path / "pretrain_val.tsv",
                   tokenizer=tmp_path / "tokenizer", repo=tmp_path)
    final = train(build_config(run_params), spec)
    assert final["steps_run"] > 0 and final["coca_loss"] > 0  # validated on the 15 good val images

    evaluate = ["--checkpoint", "out/final.pt", "--metrics", "eval.json", "--samples", "captions.md"]
    run_stage(monkeypatch, "evaluate.py", "pretrain", *evaluate, "--val", "shards/val")
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert (scores["images"], scores["corrupt_samples"]) == (15, 1) and 0.0 <= scores["t2i_r10"] <= 100.0

    # The same images made square by cropping: the evaluate stage refuses them for this checkpoint.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merge(run_params, {"data": {"shard": {"resize_mode": "crop"}}})))
    run_stage(monkeypatch, "shard.py", "cc12m", *inputs, "--out", "cropped", "--counts", "cropped.json")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_stage(monkeypatch, "evaluate.py", "pretrain", *evaluate, "--val", "cropped/val")
    assert "resize mode 'naive', but cropped/val was made with 'crop': reshard" in capsys.readouterr().err
