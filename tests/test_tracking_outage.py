"""A shared tracking server going down costs telemetry at most, never a training run.

A real `mlflow server` over a real PostgreSQL database (both on 127.0.0.1, started and stopped here)
is the tracking URI of the pretrain stage, run as the pipeline runs it (a torchrun subprocess). The
server is stopped in the middle of training, or is down from the start; the stage must keep training
without waiting on it, and every param, metric (each step once) and artifact must reach the run:
through the stage's own sender when the server comes back, else through `grr-coca tracking-sync`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.postgres import postgres_database
from support.trainkit import REPO, stage_command, stage_env, write_params, write_split
from support.ui_check import free_port, mlflow_server

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH, EPOCHS = 8, 10  # 80 samples in 2 streams, global batch 8: a few seconds of training
MAX_STALL_S = 5.0  # the longest the training may stand still while the server is down


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_split(root / "cc12m/train", "cc12m", "train", 80, seed=0)
    write_split(root / "cc12m/val", "cc12m", "val", 24, seed=1)
    return root


@pytest.fixture(scope="module")
def postgres() -> str:
    try:
        with postgres_database() as uri:
            yield uri
    except FileNotFoundError as e:  # only when PostgreSQL can be neither found nor installed
        pytest.skip(str(e))


class TrackingServer:
    """`mlflow server` over the PostgreSQL database, on one fixed port (the stage sees the same URI
    before and after a restart); stop() kills it at once, as a crash would."""

    def __init__(self, backend: str, folder: Path):
        self.backend, self.folder, self.port = backend, folder, free_port()
        self.uri, self.running, self.starts = f"http://127.0.0.1:{self.port}", None, 0
        (folder / "mlartifacts").mkdir()

    def start(self) -> None:
        self.starts += 1
        self.running = mlflow_server(self.backend, self.folder / "mlartifacts", port=self.port, grace_s=0,
                                     log_path=self.folder / f"mlflow-{self.starts}.log")
        self.running.__enter__()

    def stop(self) -> None:
        if self.running is not None:
            self.running.__exit__(None, None, None)
            self.running = None


@pytest.fixture
def server(postgres, tmp_path):
    tracking = TrackingServer(postgres, tmp_path)
    yield tracking
    tracking.stop()


def start_stage(work: Path, data: Path, uri: str) -> tuple[subprocess.Popen, Path]:
    params = write_params(work / "params.yaml", ckpt_every_steps=1, log_every_steps=1, pretrain={"epochs": EPOCHS})
    log = work / "stage.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(stage_command(work, data, 1, params), cwd=work, env=stage_env(uri), stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, log


def signal_stage(proc: subprocess.Popen, signum: int) -> None:
    """The launcher and its worker (torchrun starts workers in sessions of their own: no killpg)."""
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for pid in [proc.pid, *map(int, workers.read_text().split() if workers.exists() else [])]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        signal_stage(proc, signal.SIGKILL)
        proc.wait(30)


def step_of(work: Path) -> int:
    try:
        return json.loads((work / "state/last.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def wait_for_step(proc: subprocess.Popen, work: Path, step: int, timeout_s: float = 300) -> list[float]:
    """Wait until the checkpoint reaches `step`; return the seconds between successive checkpoints."""
    deadline, last, seen, gaps = time.monotonic() + timeout_s, time.monotonic(), step_of(work), []
    while seen < step:
        assert proc.poll() is None, f"the stage ended at step {seen}, before step {step}"
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout_s} s"
        now = step_of(work)
        if now != seen:
            gaps.append(time.monotonic() - last)
            last, seen = time.monotonic(), now
        time.sleep(0.01)
    return gaps


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> str:
    try:
        proc.wait(timeout_s)
    finally:
        kill(proc)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def assert_run_complete(uri: str, work: Path) -> None:
    """The stage's run holds every param, each step's metrics exactly once, its artifacts, FINISHED."""
    from mlflow import MlflowClient

    from pipeline.tracking import OFFLINE_TAG

    client = MlflowClient(uri)
    key = torch.load(work / "out/final.pt", weights_only=True)["mlflow_run_id"]
    if key.startswith("offline-"):
        (run,) = client.search_runs([client.get_experiment_by_name("grr-coca").experiment_id],
                                    f"tags.`{OFFLINE_TAG}` = '{key}'")
    else:
        run = client.get_run(key)
    rid, steps = run.info.run_id, STEPS_PER_EPOCH * EPOCHS
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain-grr"
    assert run.data.params["pretrain.epochs"] == str(EPOCHS) and run.data.params["run.world_size"] == "1"
    assert run.data.tags["phase"] == "pretrain"
    for name in ("train/coca_loss", "train/lr", "train/grad_norm"):
        assert sorted(m.step for m in client.get_metric_history(rid, name)) == list(range(1, steps + 1)), name
    val_steps = sorted(m.step for m in client.get_metric_history(rid, "val/coca_loss"))
    assert val_steps == [0, *range(STEPS_PER_EPOCH, steps + 1, STEPS_PER_EPOCH)]  # at start, each epoch once
    final = json.loads((work / "metrics/pretrain.json").read_text())
    assert run.data.metrics["final/coca_loss"] == final["coca_loss"]
    assert {a.path for a in client.list_artifacts(rid, "checkpoints")} == {"checkpoints/best.pt",
                                                                         "checkpoints/final.pt"}
    downloaded = client.download_artifacts(rid, "checkpoints/final.pt", str(work / "downloaded"))
    assert Path(downloaded).read_bytes() == (work / "out/final.pt").read_bytes()
    assert {a.path for a in client.list_artifacts(rid, "metrics")} == {"metrics/pretrain.json",
                                                                      "metrics/pretrain_val.tsv"}
    assert not (work / "state").exists()  # everything sent: the spool is gone with the state directory


@pytest.mark.parametrize("comes_back", ["during the run", "after the run"])
def test_a_tracking_server_stopped_mid_run_costs_no_training_and_no_record(tmp_path, data, server, comes_back):
    """Stopped at step 3: training goes on without stalling. Back during the run: the stage's sender
    sends what waited. Back only after the run: the spool keeps it all, `tracking-sync` sends it."""
    server.start()
    proc, log = start_stage(tmp_path, data, server.uri)
    try:
        wait_for_step(proc, tmp_path, 3)
        server.stop()  # killed with its workers: connections are refused
        outage = wait_for_step(proc, tmp_path, 3 + 2 * STEPS_PER_EPOCH)  # two validations, two epochs' ends
        assert max(outage) < MAX_STALL_S, f"training stood still {max(outage):.1f} s while the server was down"
        if comes_back == "during the run":
            signal_stage(proc, signal.SIGSTOP)  # the restart takes seconds: there must be training left
            server.start()
            signal_stage(proc, signal.SIGCONT)
        text = finish(proc, log)
    finally:
        kill(proc)
    assert f"MLflow tracking at {server.uri} failed" in text  # the stage noticed
    if comes_back == "during the run":
        assert f"MLflow tracking at {server.uri} answers again" in text  # sent while training, not at the end
    else:
        assert f"grr-coca tracking-sync {tmp_path / 'state/tracking'}" in text
        server.start()
        sync = tracking_sync(tmp_path / "state/tracking", server.uri)
        assert " 0 left" in sync
    assert_run_complete(server.uri, tmp_path)


def test_a_run_started_while_the_server_is_down_trains_and_syncs_later(tmp_path, data, server):
    """No server at the start: the run trains under an offline key; `tracking-sync` creates the run
    (tagged with that key) and sends everything."""
    proc, log = start_stage(tmp_path, data, server.uri)
    try:
        text = finish(proc, log)
    finally:
        kill(proc)
    assert f"MLflow tracking at {server.uri} cannot be reached" in text
    server.start()
    tracking_sync(tmp_path / "state/tracking", server.uri)
    assert_run_complete(server.uri, tmp_path)


def tracking_sync(spool: Path, uri: str) -> str:
    sync = subprocess.run([sys.executable, "-m", "pipeline.cli", "tracking-sync", str(spool), "--tracking-uri", uri],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    return sync.stdout
