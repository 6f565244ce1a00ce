"""The training loop in one process: MLflow records, non-finite losses, fine-tuning with soft resets."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from support.trainkit import build_cfg, pretrain_spec

from pipeline.train import loop
from pipeline.train.loop import NonFiniteLoss, RunSpec, train

pytestmark = pytest.mark.slow


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data, mlflow_uri):
    work = tmp_path_factory.mktemp("pretrain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        final = train(build_cfg(), pretrain_spec(data, work))
    return work, final


def test_mlflow_metrics_read_back_equal_the_metrics_files(pretrained, mlflow_uri):
    work, final = pretrained
    metrics = json.loads((work / "metrics/pretrain.json").read_text())
    assert metrics == final
    ckpt = torch.load(work / "out/final.pt", weights_only=True)
    run = client(mlflow_uri).get_run(ckpt["mlflow_run_id"])
    assert run.info.run_name == "pretrain-grr" and run.info.status == "FINISHED"
    assert run.data.tags["encoder"] == "grr" and run.data.tags["preset"] == "smoke"
    assert run.data.tags["phase"] == "pretrain" and "git_commit" in run.data.tags
    for key in ("coca_loss", "perplexity", "contrastive_loss", "caption_loss"):
        assert run.data.metrics[f"final/{key}"] == metrics[key]
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["caption_loss"]))
    assert metrics["coca_loss"] == pytest.approx(2 * metrics["contrastive_loss"] + metrics["caption_loss"])
    # the validation curve file holds exactly what MLflow recorded
    rows = list(csv.DictReader((work / "metrics/pretrain_val.tsv").open(), delimiter="\t"))
    assert [r["kind"] for r in rows] == ["start", "epoch", "epoch"]
    history = client(mlflow_uri).get_metric_history(run.info.run_id, "val/perplexity")
    assert [(m.step, m.value) for m in history] == [(int(r["step"]), float(r["perplexity"])) for r in rows]
    assert float(rows[-1]["coca_loss"]) == metrics["coca_loss"]
    # every step's training metrics, and the resolved parameters
    for key in ("coca_loss", "caption_loss", "contrastive_loss", "lr", "grad_norm", "samples_per_s"):
        assert len(client(mlflow_uri).get_metric_history(run.info.run_id, f"train/{key}")) == 16  # 2 epochs x 8 steps
    assert run.data.params["pretrain.lambda_con"] == "2.0" and run.data.params["model.encoder"] == "grr"
    assert run.data.params["run.global_batch_size"] == "8"
    artifacts = {a.path for a in client(mlflow_uri).list_artifacts(run.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/final.pt", "checkpoints/best.pt"}
    assert not (work / "state").exists()


def test_pretraining_learns(pretrained):
    work, _ = pretrained
    rows = list(csv.DictReader((work / "metrics/pretrain_val.tsv").open(), delimiter="\t"))
    assert float(rows[-1]["caption_loss"]) < float(rows[0]["caption_loss"])


class ScriptedValidation:
    """Validation returning scripted CoCa losses; remembers the weights it saw."""

    def __init__(self, losses):
        self.losses, self.seen = list(losses), []

    def __call__(self, model, loader, loss_fn, device, amp):
        self.seen.append({k: v.clone() for k, v in model.state_dict().items()})
        loss = self.losses.pop(0)
        return {"coca_loss": loss, "caption_loss": loss / 2, "perplexity": math.exp(loss / 2),
                "contrastive_loss": 0.0, "samples": 16, "corrupt_samples": 0}


def test_finetune_soft_resets_then_stops_with_the_best_weights(tmp_path, data, pretrained, mlflow_env, monkeypatch):
    work, _ = pretrained
    # start, then epochs 1..11: best at epoch 2; resets after epochs 5 and 8; stop after epoch 11
    script = ScriptedValidation([9.0, 5.0, 4.0, 4.5, 4.6, 4.7, 4.2, 4.3, 4.4, 4.1, 4.1, 4.1])
    monkeypatch.setattr(loop, "validate", script)
    loads = []
    real_load_best = loop.Checkpointer.load_best

    def spy(self, device):
        loads.append(real_load_best(self, device))
        return loads[-1]

    monkeypatch.setattr(loop.Checkpointer, "load_best", spy)
    spec = RunSpec("finetune", "mscoco", data / "mscoco/train", data / "mscoco/val", tmp_path / "out",
                   tmp_path / "state", tmp_path / "finetune.json", tmp_path / "finetune_val.tsv",
                   init=work / "out/final.pt", repo=tmp_path)
    final = train(build_cfg(), spec)
    assert final["epochs_run"] == 11 and final["epoch"] == 2 and final["coca_loss"] == 4.0
    best_weights = script.seen[2]  # validated after epoch 2
    assert len(loads) == 3  # two soft resets, then the final weights
    for loaded in loads:
        assert "optimizer" in loaded and loaded["epoch"] == 2
        assert all(torch.equal(loaded["model"][k], v) for k, v in best_weights.items())
    out = torch.load(tmp_path / "out/final.pt", weights_only=True)
    assert all(torch.equal(out["model"][k], v) for k, v in best_weights.items())
    # LR bounds divided by 100 at each reset: 4 steps per epoch
    run = client(mlflow_env).get_run(out["mlflow_run_id"])
    lrs = dict((m.step, m.value) for m in client(mlflow_env).get_metric_history(run.info.run_id, "train/lr"))
    per_epoch = [max(lrs[e * 4 + i] for i in range(1, 5)) for e in range(11)]
    assert per_epoch[:5] == pytest.approx([1e-4] * 5)
    assert per_epoch[5:8] == pytest.approx([1e-6] * 3)
    assert per_epoch[8:] == pytest.approx([1e-8] * 3)
    assert run.info.run_name == "finetune-mscoco-grr"
    pretrain_run = torch.load(work / "out/final.pt", weights_only=True)["mlflow_run_id"]
    assert run.data.tags["pretrain_run_id"] == pretrain_run
    rows = list(csv.DictReader((tmp_path / "finetune_val.tsv").open(), delimiter="\t"))
    assert [int(r["lr_level"]) for r in rows] == [0] * 6 + [1] * 3 + [2] * 3


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data, mlflow_env, monkeypatch):
    calls = {"n": 0}

    class Exploding(loop.CoCaLoss):
        def forward(self, outputs, targets, global_tokens=None):
            calls["n"] += 1
            losses = super().forward(outputs, targets, global_tokens)
            if calls["n"] == 7:  # step 4, first micro-batch
                losses["caption_share"] = losses["caption_share"] * float("nan")
            return losses

    monkeypatch.setattr(loop, "CoCaLoss", Exploding)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss .* step 4 .*last good checkpoint"):
        train(build_cfg(ckpt_every_steps=1), pretrain_spec(data, tmp_path))
    summary = json.loads((tmp_path / "state/last.json").read_text())
    assert summary["step"] == 3
    state = torch.load(tmp_path / "state/last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert client(mlflow_env).get_run(state["train"]["run_id"]).info.status == "FAILED"
    assert not (tmp_path / "out/final.pt").exists()


def test_an_unreachable_tracking_server_costs_no_training(tmp_path, data, monkeypatch, capsys):
    """A run that starts while the server is down trains, keeps its records in the state directory's
    spool, and `tracking-sync` later sends them all: the same run, every step once, its artifacts."""
    from pipeline.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    final = train(build_cfg(), pretrain_spec(data, tmp_path))
    out = capsys.readouterr().out
    assert "MLflow tracking at http://127.0.0.1:9 cannot be reached" in out
    spool = tmp_path / "state/tracking"
    assert f"grr-coca tracking-sync {spool}" in out
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["tracking"]  # the checkpoints are gone
    key = torch.load(tmp_path / "out/final.pt", weights_only=True)["mlflow_run_id"]
    assert key.startswith("offline-")

    uri = f"sqlite:///{tmp_path / 'later.db'}"  # the server, back (here: another store)
    main(["tracking-sync", str(spool), "--tracking-uri", uri])
    assert not (tmp_path / "state").exists()  # all sent: the spool and its state directory are gone
    from pipeline.tracking import OFFLINE_TAG

    (run,) = client(uri).search_runs([client(uri).get_experiment_by_name("grr-coca").experiment_id])
    assert run.data.tags[OFFLINE_TAG] == key and run.info.status == "FINISHED"
    assert run.info.run_name == "pretrain-grr" and run.data.params["train.micro_batch_size"] == "4"
    steps = [m.step for m in client(uri).get_metric_history(run.info.run_id, "train/coca_loss")]
    assert sorted(steps) == list(range(1, final["steps_run"] + 1))
    assert run.data.metrics["final/coca_loss"] == final["coca_loss"]
    artifacts = {a.path for a in client(uri).list_artifacts(run.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.pt", "checkpoints/final.pt"}


def test_state_of_another_configuration_is_not_resumed(tmp_path, data, mlflow_env, monkeypatch, capsys):
    class Stop(Exception):
        pass

    def stop_after_start(self):
        raise Stop

    with monkeypatch.context() as mp:
        mp.setattr(loop.Trainer, "_run_epoch", stop_after_start)
        with pytest.raises(Stop):
            train(build_cfg(), pretrain_spec(data, tmp_path))
    assert (tmp_path / "state/last.pt").exists()
    first = json.loads((tmp_path / "state/last.json").read_text())
    with monkeypatch.context() as mp:
        mp.setattr(loop.Trainer, "_run_epoch", stop_after_start)
        with pytest.raises(Stop):
            train(build_cfg(seed=1), pretrain_spec(data, tmp_path))
    assert "belongs to another configuration or data: starting afresh" in capsys.readouterr().out
    second = json.loads((tmp_path / "state/last.json").read_text())
    assert second["fingerprint"] != first["fingerprint"] and (second["step"], second["epoch"]) == (0, 0)


def test_the_trainer_clamps_the_logit_scale_after_each_step(tmp_path, data, mlflow_env, monkeypatch):
    """A temperature parameter above the cap is brought back to ln(100) by the first optimiser step
    (inside forward alone it would stay above, with no gradient)."""

    class HotCoCa(loop.CoCa):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                self.logit_scale.fill_(math.log(100) + 1.0)

    monkeypatch.setattr(loop, "CoCa", HotCoCa)
    train(build_cfg(pretrain={"epochs": 1}), pretrain_spec(data, tmp_path))
    weights = torch.load(tmp_path / "out/final.pt", weights_only=True)["model"]
    assert float(weights["logit_scale"]) <= math.log(100) + 1e-6


def test_non_finite_validation_stops_the_run(tmp_path, data, mlflow_env, monkeypatch):
    """A diverged model's validation loss is caught (it once passed unnoticed and left early stopping
    to reload a best.pt that was never written)."""
    import pipeline.train.validate as validation

    real = validation.caption_loss_sum

    def poisoned(logits, targets, ignore):
        total, count = real(logits, targets, ignore)
        return total * float("nan"), count

    monkeypatch.setattr(validation, "caption_loss_sum", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"validation on .*: non-finite loss \(caption nan"):
        train(build_cfg(), pretrain_spec(data, tmp_path))
    assert not (tmp_path / "out/final.pt").exists()


def test_a_missing_input_stops_the_stage_with_one_line(tmp_path, data):
    """Before torchrun starts: one line naming the missing file, not a traceback per process."""
    import subprocess
    import sys

    from support.trainkit import REPO, write_params

    params = write_params(tmp_path / "params.yaml", nproc_per_node=2, micro_batch_size=4)
    missing = tmp_path / "pretrain/final.pt"
    result = subprocess.run([sys.executable, str(REPO / "stages/finetune.py"), "mscoco", "--params", str(params),
                             "--init", str(missing), "--train", str(data / "mscoco/train"), "--val",
                             str(data / "mscoco/val"), "--tokenizer", str(tmp_path / "tok"), "--out",
                             str(tmp_path / "out"), "--state", str(tmp_path / "state"), "--metrics",
                             str(tmp_path / "m.json"), "--curve", str(tmp_path / "c.tsv")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {missing}: not found; run the stages that make them first (dvc repro)"]


def test_the_seed_alone_decides_the_weights(tmp_path, data, pretrained, mlflow_env):
    """train.seed reaches initial weights, data order and dropout: the same seed twice gives the same
    weights bit for bit; another seed gives other weights (dropout on, so all three sources count)."""
    def weights(work, seed):
        train(build_cfg(seed=seed, pretrain={"dropout": 0.1}), pretrain_spec(data, work))
        return torch.load(work / "out/final.pt", weights_only=True)["model"]

    first, again, other = (weights(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_train_compile_runs_on_the_cpu_and_matches_eager(tmp_path, data, mlflow_env):
    """train.compile: torch.compile (inductor, C++ on the CPU) around the same model. The checkpoint
    keeps the plain parameter names, and a pre-training epoch ends where eager's does (the compiled
    kernels fuse and reorder float work: equal within a tolerance, not bit for bit)."""
    one_epoch = {"epochs": 1}
    train(build_cfg(pretrain=one_epoch), pretrain_spec(data, tmp_path / "eager"))
    final = train(build_cfg(compile=True, pretrain=one_epoch), pretrain_spec(data, tmp_path / "compiled"))
    eager = torch.load(tmp_path / "eager/out/final.pt", weights_only=True)["model"]
    compiled = torch.load(tmp_path / "compiled/out/final.pt", weights_only=True)["model"]
    assert compiled.keys() == eager.keys()  # no "_orig_mod." prefixes
    moved = max((compiled[k] - eager[k]).abs().max().item() for k in eager)
    assert moved < 1e-3, f"compiled and eager weights differ by up to {moved}"
    assert math.isfinite(final["coca_loss"])


def test_decoding_on_the_device_trains_the_weights_decoding_in_the_workers_trains(tmp_path, data, mlflow_env,
                                                                                  monkeypatch):
    """train.decode_on device: the training process decodes each micro-batch's JPEGs together on its
    device (here the CPU, the same libjpeg-turbo as the workers): an epoch ends with the same weights
    bit for bit, and validation sees the same samples."""
    from pipeline.data import loader as loader_module

    batches_decoded, decode = [], loader_module.decode_images

    def counted(encoded, device):
        batches_decoded.append(len(encoded))
        return decode(encoded, device)

    monkeypatch.setattr(loader_module, "decode_images", counted)
    one_epoch = {"epochs": 1}
    workers = train(build_cfg(pretrain=one_epoch, num_workers=2), pretrain_spec(data, tmp_path / "workers"))
    assert batches_decoded == []
    device = train(build_cfg(pretrain=one_epoch, num_workers=2, decode_on="device"),
                   pretrain_spec(data, tmp_path / "device"))
    assert batches_decoded and max(batches_decoded) > 1  # in the training process, a batch per call
    a = torch.load(tmp_path / "workers/out/final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "device/out/final.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert device == workers


def test_adapter_finetune_trains_the_adapter_alone_and_its_checkpoint_says_so(tmp_path, data, pretrained,
                                                                              mlflow_env, capsys):
    """`finetune.mode: adapter` from a pre-trained checkpoint without an adapter: every pre-trained
    weight comes out as it went in, the adapter has trained, the checkpoint records the adapter and
    rebuilds it, and the trainable count is printed and logged."""
    from pipeline.checkpoint import load_model

    work, _ = pretrained
    spec = RunSpec("finetune", "mscoco", data / "mscoco/train", data / "mscoco/val", tmp_path / "out",
                   tmp_path / "state", tmp_path / "finetune.json", tmp_path / "finetune_val.tsv",
                   init=work / "out/final.pt", repo=tmp_path)
    train(build_cfg(finetune={"mode": "adapter", "epochs": 1, "lr_max": 1e-3, "lr_min": 1e-4}), spec)
    init = torch.load(work / "out/final.pt", weights_only=True)["model"]
    out = load_model(tmp_path / "out/final.pt")
    assert out.options == {"contrastive_loss": "softmax", "adapter": True}
    assert all(torch.equal(out.weights[k], v) for k, v in init.items())
    assert out.weights["adapter.up.weight"].any() and out.build().adapter is not None
    adapter_params = sum(v.numel() for k, v in out.weights.items() if k.startswith("adapter."))
    run_id = torch.load(tmp_path / "out/final.pt", weights_only=True)["mlflow_run_id"]
    params = client(mlflow_env).get_run(run_id).data.params
    assert params["finetune.mode"] == "adapter" and int(params["run.trainable_params"]) == adapter_params
    assert f"trainable parameters: {adapter_params:,} of" in capsys.readouterr().out
