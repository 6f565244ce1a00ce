"""End to end: the data stages pushed to a DVC remote and pulled into a clone elsewhere are up to date there.

This is how several nodes (or machines) share the data: one runs the data stages and pushes, the
others `git clone` (or pull) the repository and `dvc pull`; nothing is recomputed.
"""

import os
import sys
from pathlib import Path

import pytest
from test_pipeline import copy_as_smoke_repo, dvc, run

pytestmark = pytest.mark.e2e

DATASETS = ("cc12m", "mscoco", "flickr30k", "roco")
DATA_STAGES = ["demo_data", "tokenize", *(f"{stage}@{d}" for stage in ("download", "split", "shard") for d in DATASETS)]


@pytest.fixture
def env():
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # dvc runs the stages with this python
    return env


def git(repo, *args):
    return run(["git", "-c", "user.email=tests@example.org", "-c", "user.name=tests", *args], repo)


def would_run(repo, env) -> list[str]:
    """The stages `dvc repro --dry` of the data stages would run."""
    out = run(dvc("repro", "--dry", *DATA_STAGES), repo, env)
    return [line for line in out.splitlines() if line.startswith("Running stage")]


def test_data_stages_pushed_to_a_remote_and_pulled_into_a_clone_are_up_to_date(tmp_path, env):
    origin, clone, remote = tmp_path / "origin", tmp_path / "clone", tmp_path / "remote"
    copy_as_smoke_repo(origin, extra=(".dvc/.gitignore",))  # .dvc/.gitignore: the cache is not committed
    git(origin, "init", "-q")

    run(dvc("repro", *DATA_STAGES), origin, env)
    run(dvc("remote", "add", "-d", "local", str(remote)), origin, env)
    run(dvc("push"), origin, env)
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "the data stages and their lock")

    git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert not (clone / "data").exists()
    run(dvc("pull", "--with-deps", "shard"), clone, env)  # the data stages' outputs (no model was made)
    assert (clone / "data/shards/cc12m/train/manifest.json").exists()
    status = run(dvc("status", *DATA_STAGES), clone, env)
    assert "Data and pipelines are up to date" in status, status
    assert would_run(clone, env) == [], status

    # The demo's source files name their images relative to their own folder, so regenerating them in
    # the clone gives the bytes pulled from the remote (absolute file:// URLs would differ here, and the
    # downloads would refuse the origin's paths as outside the clone's dataset folders).
    run(dvc("repro", "-f", "demo_data"), clone, env)
    status = run(dvc("status", *DATA_STAGES), clone, env)
    assert "Data and pipelines are up to date" in status, status
    # A download forced in the clone fetches the clone's own files: as many images as the origin got.
    run(dvc("repro", "-f", "--single-item", "download@cc12m"), clone, env)
    origin_report = (origin / "metrics/download/cc12m.json").read_text()
    assert (clone / "metrics/download/cc12m.json").read_text() == origin_report
