from pathlib import Path

import yaml

from pipeline.tracking import dvc_hashes, repo_root, tracking_uri


def test_repo_root_of_a_dvc_experiment_copy_is_the_original(tmp_path):
    copy = tmp_path / "repo/.dvc/tmp/exps/tmpabc123"
    copy.mkdir(parents=True)
    assert repo_root(copy) == tmp_path / "repo"
    assert repo_root(tmp_path / "repo") == tmp_path / "repo"


def test_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri(tmp_path) == "http://tracking:5000"


def test_dvc_hashes_of_the_inputs(tmp_path):
    lock = {"schema": "2.0", "stages": {
        "shard@cc12m": {"cmd": "x", "outs": [{"path": "data/shards/cc12m", "md5": "abc.dir"}]},
        "tokenize": {"cmd": "y", "outs": [{"path": "data/tokenizer", "md5": "def.dir"},
                                          {"path": "data/tokens", "md5": "ghi.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    got = dvc_hashes(tmp_path, [Path("data/shards/cc12m/train"), tmp_path / "data/tokenizer", "/elsewhere/x"])
    assert got == {"data/shards/cc12m": "abc.dir", "data/tokenizer": "def.dir"}
    assert dvc_hashes(tmp_path / "nothing", ["data"]) == {}
