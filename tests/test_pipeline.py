"""End to end: the real `dvc repro` on the smoke preset, in a copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
# .gitignore too: without it DVC writes data/raw/.gitignore, which then belongs to the download stages'
# `data/raw` dependency in this repository but not in a queued experiment's copy.
COPIED = ["dvc.yaml", "params.yaml", "pipeline", "stages", ".dvc/config", ".dvcignore", ".gitignore"]


def run(cmd, cwd, env=None):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def copy_as_smoke_repo(repo: Path, extra: tuple[str, ...] = ()) -> Path:
    """The project's files (COPIED, plus `extra`) in `repo`, with preset: smoke; no data, no cache."""
    for name in [*COPIED, *extra]:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["preset"] = "smoke"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the project with preset: smoke, as a fresh clone would have it (no data, no cache)."""
    repo = copy_as_smoke_repo(tmp_path_factory.mktemp("repo"))
    run(["git", "init", "-q"], repo)
    return repo


def run_compare(repo, env) -> str:
    run([str(Path(sys.executable).parent / "grr-coca"), "compare", "--out", "reports"], repo, env)
    return (repo / "reports/comparison.json").read_text()


def dvc(*args):
    return [str(Path(sys.executable).parent / "dvc"), *args]


@pytest.fixture(scope="module")
def env():
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the repository's own store
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def test_dvc_repro_runs_the_data_stages_and_counts_every_planted_bad_row(repo, env):
    run(dvc("repro", "shard"), repo, env)

    demo = json.loads((repo / "metrics/demo_data.json").read_text())
    planted = {}
    for bad in demo["bad_rows"]:
        planted.setdefault(bad["dataset"], []).append(bad["kind"])
    for dataset in ("cc12m", "mscoco", "flickr30k", "roco"):
        report = json.loads((repo / f"metrics/download/{dataset}.json").read_text())
        assert report["failed"] == len(planted[dataset]) == 3, (dataset, report)
        assert report["success"] + report["failed"] == report["rows"]

        manifest = json.loads((repo / f"data/shards/{dataset}/train/manifest.json").read_text())
        assert manifest["samples"] > 0 and manifest["skipped_total"] == 0
        counts = json.loads((repo / f"metrics/split/{dataset}.json").read_text())
        assert counts["train_pairs"] == manifest["samples"]
    tokenize = json.loads((repo / "metrics/tokenize.json").read_text())
    assert tokenize["vocab_size"] == 256

    # Nothing changed: every stage is skipped. A model-only change leaves every data stage cached.
    again = run(dvc("repro", "shard"), repo, env)
    assert "Running stage" not in again, again
    assert "up to date" in run(dvc("status", "shard"), repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["encoder"] = "baseline"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(dvc("status", "shard"), repo, env)
    assert "changed" not in status, status
    params["model"]["encoder"] = "grr"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_repro_trains_evaluates_and_tracks_everything(repo, env):
    run(dvc("repro"), repo, env)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("grr-coca").experiment_id])}
    assert set(runs) == {"pretrain-grr", "finetune-mscoco-grr", "finetune-roco-grr", "finetune-flickr30k-grr",
                         "finetune-joint-grr"}
    for name, stage in [("pretrain", "pretrain-grr"), ("mscoco", "finetune-mscoco-grr")]:
        run_ = runs[stage]
        assert run_.info.status == "FINISHED"
        final = json.loads((repo / f"metrics/{'pretrain' if name == 'pretrain' else 'finetune-' + name}.json").read_text())
        assert run_.data.metrics["final/coca_loss"] == final["coca_loss"]
        evaluation = json.loads((repo / f"metrics/eval-{name}.json").read_text())
        assert run_.data.metrics["eval/bleu4"] == evaluation["bleu4"]
        assert 0.0 <= evaluation["t2i_r10"] <= 100.0
        benchmark = json.loads((repo / f"metrics/benchmark-{name}.json").read_text())
        for key in ("zeroshot/top1", "probe/top1", "karpathy_mscoco/i2t_r1", "karpathy_flickr30k/cider"):
            assert run_.data.metrics[f"eval/{key}"] == benchmark[key]
    assert runs["finetune-roco-grr"].data.tags["pretrain_run_id"] == runs["pretrain-grr"].info.run_id
    # The joint fine-tune: validated on each set, evaluated on each, all in its own run.
    joint = runs["finetune-joint-grr"]
    assert joint.info.status == "FINISHED" and joint.data.tags["pretrain_run_id"] == runs["pretrain-grr"].info.run_id
    final = json.loads((repo / "metrics/finetune-joint.json").read_text())
    for dataset in ("mscoco", "roco", "flickr30k"):
        assert joint.data.metrics[f"final/{dataset}/coca_loss"] == final[f"{dataset}/coca_loss"]
        evaluation = json.loads((repo / f"metrics/eval-joint-{dataset}.json").read_text())
        assert joint.data.metrics[f"eval/{dataset}/bleu4"] == evaluation["bleu4"]

    # Nothing reran: every stage is up to date.
    assert "Data and pipelines are up to date" in run(dvc("status"), repo, env)

    # A change to beam search reruns every evaluation and benchmark and nothing else; reverting it makes all clean.
    generate = repo / "pipeline/model/generate.py"
    original = generate.read_text()
    generate.write_text(original + "# a comment\n")
    changed = {line.rstrip(":") for line in run(dvc("status"), repo, env).splitlines()
               if line and not line.startswith(("\t", " "))}
    assert changed == {f"{stage}@{name}" for stage in ("evaluate", "benchmark")
                       for name in ("pretrain", "mscoco", "roco", "flickr30k")} | {
        f"evaluate@joint-{name}" for name in ("mscoco", "roco", "flickr30k")}, changed
    generate.write_text(original)
    assert "Data and pipelines are up to date" in run(dvc("status"), repo, env)

    # An edit to a source file reruns the downloads (the demo's files and the paper's data/raw/<dataset>
    # alike); undone, everything is clean again.
    tsv = repo / "data/raw/demo/cc12m/cc12m.tsv"
    original = tsv.read_bytes()
    tsv.write_bytes(original.replace(b"\t", b"\tedited: ", 1))
    changed = {line.rstrip(":") for line in run(dvc("status"), repo, env).splitlines()
               if line and not line.startswith(("\t", " "))}
    assert {f"download@{d}" for d in ("cc12m", "mscoco", "flickr30k", "roco")} <= changed, changed
    tsv.write_bytes(original)
    paper_tsv = repo / "data/raw/cc12m/cc12m.tsv"  # where the paper preset reads CC12M
    paper_tsv.parent.mkdir(parents=True)
    paper_tsv.write_text("https://example.org/1.jpg\ta caption\n")
    assert "download@cc12m" in run(dvc("status"), repo, env)
    shutil.rmtree(paper_tsv.parent)
    assert "Data and pipelines are up to date" in run(dvc("status"), repo, env)

    # The comparison report finds the runs the trainer logged, by the names it gave them.
    report = json.loads(run_compare(repo, env))
    for dataset in ("cc12m", "mscoco", "roco", "flickr30k"):
        assert report["datasets"][dataset]["runs"]["grr"] == runs[
            "pretrain-grr" if dataset == "cc12m" else f"finetune-{dataset}-grr"].info.run_id
    (group,) = report["joint"]["groups"]  # the joint fine-tune, its per-set numbers from its own run
    assert group["runs"] == {"0": joint.info.run_id}
    for dataset in ("mscoco", "roco", "flickr30k"):
        assert group["summary"][f"{dataset}/coca_loss"]["mean"] == pytest.approx(final[f"{dataset}/coca_loss"])

    # The caption command works on the stage's checkpoint alone.
    image = next((repo / "data/raw/demo/mscoco/val2017").glob("*.jpg"))
    out = run([str(Path(sys.executable).parent / "grr-coca"), "caption", str(image), "--checkpoint",
               "data/models/finetune/mscoco/final.pt"], repo, env)
    assert out.startswith(str(image) + "\t")  # a tiny model trained for 8 steps may say little


def test_a_queued_grid_skips_the_data_stages_and_lands_in_mlflow(repo, env):
    """After the pipeline ran once and dvc.lock is committed (as the repository commits it), every
    queued experiment starts from it: the 14 data stages are skipped, only training and evaluation run."""
    import mlflow

    run(dvc("repro", "evaluate@pretrain"), repo, env)  # done already when the tests above ran
    run(["git", "config", "user.email", "tests@example.org"], repo)
    run(["git", "config", "user.name", "tests"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "the pipeline and its lock"], repo)
    run(dvc("exp", "run", "--queue", "-S", "train.seed=3,4", "evaluate@pretrain"), repo, env)
    run(dvc("queue", "start", "-j", "1"), repo, env)
    deadline = time.time() + 600
    while time.time() < deadline and any(state in run(dvc("queue", "status"), repo, env)
                                         for state in ("Queued", "Running")):
        time.sleep(2)
    status = run(dvc("queue", "status"), repo, env)
    names = [line.split()[1] for line in status.splitlines()[1:] if "Success" in line]
    assert len(names) == 2, status
    for name in names:
        log = run(dvc("queue", "logs", name), repo, env)
        # Upstream of evaluate@pretrain: demo_data, 4 downloads, 4 splits, tokenize, shard@cc12m.
        upstream = ["demo_data", "tokenize", "shard@cc12m",
                    *(f"{stage}@{d}" for stage in ("download", "split") for d in ("cc12m", "mscoco", "flickr30k", "roco"))]
        assert all(f"Stage '{s}' didn't change, skipping" in log for s in upstream), log[-3000:]
        ran = [line for line in log.splitlines() if line.startswith("Running stage")]
        assert ran == ["Running stage 'pretrain':", "Running stage 'evaluate@pretrain':"], ran
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    seeds = {r.data.params["train.seed"] for r in client.search_runs(
        [client.get_experiment_by_name("grr-coca").experiment_id], "attributes.run_name = 'pretrain-grr'")
        if r.info.status == "FINISHED" and "eval/bleu4" in r.data.metrics}
    assert {"3", "4"} <= seeds
    report = json.loads(run_compare(repo, env))
    assert sorted(report["datasets"]["cc12m"]["seeds"]["grr"]) == ["0", "3", "4"]  # the repro's seed 0 too
