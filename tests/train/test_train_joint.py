"""The joint fine-tune in one process: three sets mixed by sqrt sampling, validated on each, its
checkpoint evaluated on each set by the evaluate stage, everything in the joint run's MLflow record."""

from __future__ import annotations

import csv
import json
import runpy
import sys

import pytest
import torch
import yaml
from support.trainkit import REPO, merge, params, write_split

from pipeline.config import build_config
from pipeline.data.tokenizer import build_tokenizer
from pipeline.train.loop import RunSpec, train

pytestmark = pytest.mark.slow

SETS = ("mscoco", "roco", "flickr30k")


@pytest.fixture(scope="module")
def joint_data(tmp_path_factory, data):
    """The trainer tests' MSCOCO shards plus small ROCO and Flickr30K ones, and a tokenizer."""
    root = tmp_path_factory.mktemp("joint")
    write_split(root / "roco/train", "roco", "train", 24, seed=4)
    write_split(root / "roco/val", "roco", "val", 8, seed=5)
    write_split(root / "flickr30k/train", "flickr30k", "train", 32, seed=6)
    write_split(root / "flickr30k/val", "flickr30k", "val", 8, seed=7)
    build_tokenizer("train", 256, [f"class {i} a red circle" for i in range(6)] * 20).save_pretrained(root / "tokenizer")
    dirs = {"mscoco": data / "mscoco"} | {name: root / name for name in ("roco", "flickr30k")}
    return root, {name: (dirs[name] / "train", dirs[name] / "val") for name in SETS}


def test_a_joint_fine_tune_validates_on_each_set_and_its_checkpoint_evaluates_on_each(
        tmp_path, joint_data, mlflow_env, monkeypatch):
    from mlflow import MlflowClient

    root, sets = joint_data
    run_params = merge(params(), {"joint": {"sampling": "sqrt", "epochs": 2}, "finetune": {"epochs": 12}})
    cfg = build_config(run_params)
    spec = RunSpec("finetune", "joint", *sets["mscoco"], tmp_path / "out", tmp_path / "state",
                   tmp_path / "finetune-joint.json", tmp_path / "finetune-joint_val.tsv", tokenizer=root / "tokenizer",
                   repo=tmp_path, mixed=sets)
    final = train(cfg, spec)

    # joint.epochs, not finetune.epochs: (48 + 24 + 32) samples / global batch 8 = 13 steps an epoch
    assert final["epochs_run"] == 2 and final["steps_run"] == 26
    per_set = [final[f"{name}/coca_loss"] for name in SETS]
    assert final["coca_loss"] == pytest.approx(sum(per_set) / 3)  # early stopping's: the plain mean
    assert json.loads(spec.metrics_json.read_text()) == final
    rows = list(csv.DictReader(spec.val_tsv.open(), delimiter="\t"))
    assert [r["kind"] for r in rows] == ["start", "epoch", "epoch"]
    ckpt = torch.load(tmp_path / "out/final.pt", weights_only=True)
    assert ckpt["dataset"] == "joint" and ckpt["phase"] == "finetune"

    client = MlflowClient(mlflow_env)
    run = client.get_run(ckpt["mlflow_run_id"])
    assert run.info.run_name == "finetune-joint-grr" and run.data.params["joint.sampling"] == "sqrt"
    for name in SETS:
        assert len(client.get_metric_history(run.info.run_id, f"val/{name}/coca_loss")) == 3

    # The evaluate stage, as dvc.yaml's evaluate@joint-<dataset> runs it, on each set's validation shards.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(run_params))
    monkeypatch.chdir(tmp_path)
    for name in SETS:
        monkeypatch.setattr(sys, "argv", ["evaluate.py", f"joint-{name}", "--checkpoint", str(tmp_path / "out/final.pt"),
                                          "--val", str(sets[name][1]), "--metrics", f"metrics/eval-joint-{name}.json",
                                          "--samples", f"data/eval/joint-{name}-captions.md"])
        runpy.run_path(str(REPO / "stages/evaluate.py"), run_name="__main__")
    metrics = client.get_run(run.info.run_id).data.metrics
    for name in SETS:
        scores = json.loads((tmp_path / f"metrics/eval-joint-{name}.json").read_text())
        assert 0.0 <= scores["t2i_r10"] <= 100.0
        assert metrics[f"eval/{name}/bleu4"] == scores["bleu4"]  # side by side in the joint run
    assert "eval/bleu4" not in metrics
