from pathlib import Path

import yaml

from pipeline.tracking import dvc_hashes, repo_root, tracking_uri


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    """`condition()` becomes true within the timeout (the spool's sender works in the background)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


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


def test_the_metrics_files_are_written_without_mlflow(tmp_path):
    """DVC's metrics files do not depend on the MLflow back end (they once did)."""
    import csv
    import json

    from pipeline.tracking import MetricsFilesBackend, NullTracker, Tracker

    tracker = Tracker([MetricsFilesBackend(tmp_path / "m/final.json", tmp_path / "m/curve.tsv")])
    assert tracker.run_id is None
    history = [{"step": 0, "epoch": 0, "kind": "start", "coca_loss": 3.0}, {"step": 4, "epoch": 1, "kind": "epoch",
                                                                          "coca_loss": 2.0}]
    tracker.log_train(4, {"coca_loss": 2.5})
    tracker.log_val(4, {"coca_loss": 2.0}, history)
    (tmp_path / "m/curve.tsv").unlink()  # as DVC does before rerunning a stage resumed after its last validation
    tracker.log_final(4, {"coca_loss": 2.0, "epoch": 1}, history)
    rows = list(csv.DictReader((tmp_path / "m/curve.tsv").open(), delimiter="\t"))
    assert [(r["step"], r["kind"], r["coca_loss"]) for r in rows] == [("0", "start", "3.0"), ("4", "epoch", "2.0")]
    assert json.loads((tmp_path / "m/final.json").read_text()) == {"coca_loss": 2.0, "epoch": 1}
    nothing = NullTracker()  # what processes other than 0 hold
    nothing.log_final(1, {"x": 1.0}, [])
    nothing.finish("FINISHED")
    assert nothing.run_id is None


def test_evaluation_attaches_to_the_training_run_without_changing_its_status(tmp_path, monkeypatch):
    import json

    from mlflow import MlflowClient

    from pipeline.tracking import attach, start_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = start_run(tmp_path, {"mlflow.runName": "pretrain-grr"}, {"model.encoder": "grr"}, None,
                    tmp_path / "pretrain.json", state_dir=tmp_path / "state")
    run.log_final(3, {"coca_loss": 1.5}, [])
    run.finish("FINISHED")
    evaluation = attach(run.run_id, root=tmp_path, metrics_json=tmp_path / "eval.json")
    evaluation.log_eval({"bleu4": 0.25})
    evaluation.finish()
    got = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.metrics == {"final/coca_loss": 1.5, "eval/bleu4": 0.25}
    assert json.loads((tmp_path / "eval.json").read_text()) == {"bleu4": 0.25}
    # a checkpoint whose run is not in this store: the scores still reach the metrics file
    elsewhere = attach("0123456789abcdef", root=tmp_path, metrics_json=tmp_path / "eval2.json")
    elsewhere.log_eval({"bleu4": 0.5})
    assert json.loads((tmp_path / "eval2.json").read_text()) == {"bleu4": 0.5}


def test_a_resumed_run_logs_each_step_once(tmp_path, monkeypatch):
    """After a resume the trainer replays the steps since its last checkpoint; those already in MLflow
    are not logged again."""
    from mlflow import MlflowClient

    from pipeline.tracking import start_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = start_run(tmp_path, {"mlflow.runName": "pretrain-grr"}, {}, None, None, state_dir=tmp_path / "state")
    for step in range(1, 6):
        first.log_train(step, {"coca_loss": float(step)})
    first.log_val(4, {"coca_loss": 0.4}, [])
    first.flush()  # killed here: steps 1-5 logged, the checkpoint holds step 2
    first.backends[0].stop.set()  # its sender dies with it
    resumed = start_run(tmp_path, {"mlflow.runName": "pretrain-grr"}, {}, first.run_id, None, state_dir=tmp_path / "state")
    for step in range(3, 8):
        resumed.log_train(step, {"coca_loss": float(step)})
    resumed.log_val(4, {"coca_loss": 0.4}, [])
    resumed.log_val(8, {"coca_loss": 0.3}, [])
    resumed.finish()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "train/coca_loss")) == [1, 2, 3, 4, 5, 6, 7]
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "val/coca_loss")) == [4, 8]


def test_a_run_killed_before_its_first_checkpoint_is_marked_failed(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from pipeline.tracking import start_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    state = tmp_path / "state"
    killed = start_run(tmp_path, {"mlflow.runName": "pretrain-grr"}, {}, None, None, state_dir=state)
    # ... killed here: no checkpoint names the run, so the rerun starts a new one
    rerun = start_run(tmp_path, {"mlflow.runName": "pretrain-grr"}, {}, None, None, state_dir=state)
    rerun.finish()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(killed.run_id).info.status == "FAILED"
    assert client.get_run(rerun.run_id).info.status == "FINISHED"
    # a resumed run (the checkpoint names it) is the marked one: nothing else is touched
    resumed = start_run(tmp_path, {"mlflow.runName": "pretrain-grr"}, {}, rerun.run_id, None, state_dir=state)
    resumed.flush()
    assert resumed.run_id == rerun.run_id and wait_for(lambda: client.get_run(rerun.run_id).info.status == "RUNNING")


def test_runs_are_named_and_tagged_by_their_vit_design(tmp_path):
    """A bundle keeps its name (and the report finds it); any other design is named by its factors,
    so the comparison of the two bundles never picks up an ablation run."""
    from types import SimpleNamespace

    from pipeline.config import build_config
    from pipeline.tracking import run_description

    spec = SimpleNamespace(phase="pretrain", dataset="cc12m", repo=tmp_path, train_shards=tmp_path, val_shards=tmp_path,
                           tokenizer=None, init=None)
    for vit, name in (({}, "pretrain-baseline"), ({"norm": "rmsnorm"}, "pretrain-vit-rmsnorm-gelu-sincos"),
                      ({"norm": "rmsnorm", "ffn": "geglu", "pos": "rope2d"}, "pretrain-grr")):
        cfg = build_config({"preset": "smoke", "model": {"encoder": "baseline", "vit": vit}})
        tags, params = run_description(cfg, spec, {}, 1, "cpu", {})
        assert tags["mlflow.runName"] == name and tags["encoder"] == name.removeprefix("pretrain-")
        assert (tags["vit.norm"], params["vit.ffn"]) == (cfg.model.vit_design[0], cfg.model.vit_design[1])
