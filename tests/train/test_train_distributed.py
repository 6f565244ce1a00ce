"""The stage under torchrun with 2 gloo processes: the same losses as 1 process with the same global
batch, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from support.trainkit import run_stage, stage_command, stage_env, write_params

pytestmark = pytest.mark.slow

# Global batch 8 in both: 8 x 1 process or 4 x 2 processes (x 2 accumulation steps), 2 data streams.
ONE = dict(nproc_per_node=1, micro_batch_size=8, ckpt_every_steps=3)
TWO = dict(nproc_per_node=2, micro_batch_size=4, ckpt_every_steps=3)


def run_id(work: Path) -> str:
    return torch.load(work / "out/final.pt", weights_only=True)["mlflow_run_id"]


def history(uri: str, rid: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(rid, key))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data, mlflow_uri) -> Path:
    work = tmp_path_factory.mktemp("two")
    run_stage(work, data, 2, write_params(work / "params.yaml", **TWO), mlflow_uri)
    return work


def test_two_processes_match_one_process_step_by_step(tmp_path, data, mlflow_uri, two_processes):
    run_stage(tmp_path, data, 1, write_params(tmp_path / "params.yaml", **ONE), mlflow_uri)
    one, two = run_id(tmp_path), run_id(two_processes)
    for key in ("train/coca_loss", "train/caption_loss", "train/contrastive_loss", "train/grad_norm",
                "val/coca_loss", "val/perplexity", "val/contrastive_loss"):
        a, b = history(mlflow_uri, one, key), history(mlflow_uri, two, key)
        assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 3, key
        for (step, x), (_, y) in zip(a, b):
            assert abs(x - y) <= 1e-5 * max(1.0, abs(x)), f"{key} step {step}: {x} vs {y}"
    assert len(history(mlflow_uri, one, "train/coca_loss")) == 8  # 2 epochs x 4 steps


def start_until_step(work: Path, data: Path, params: Path, mlflow_uri: str, step: int,
                     **popen) -> subprocess.Popen:
    """The 2-process stage, returned once its checkpoint summary reaches `step` (still running)."""
    proc = subprocess.Popen(stage_command(work, data, 2, params), cwd=work, env=stage_env(mlflow_uri),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    summary, deadline = work / "state/last.json", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if summary.exists() and json.loads(summary.read_text())["step"] >= step:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail("the run ended before it could be killed")
    return proc


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_sigkill_mid_epoch_then_restart_gives_the_same_weights(tmp_path, data, mlflow_uri, two_processes):
    """Both training processes are killed mid-epoch; meanwhile a user edits keys pre-training does not
    read (fine-tuning's LR, the beam width). The rerun resumes and ends bitwise where an uninterrupted
    run ends."""
    params = write_params(tmp_path / "params.yaml", **{**TWO, "ckpt_every_steps": 1})
    summary = tmp_path / "state/last.json"
    proc = start_until_step(tmp_path, data, params, mlflow_uri, 2)
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2
        for pid in workers:  # the two training processes die at once, wherever they are
            os.kill(pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = json.loads(summary.read_text())
    killed_run = torch.load(tmp_path / "state/last.pt", weights_only=True)["train"]["run_id"]
    assert not (tmp_path / "out/final.pt").exists()
    edited = yaml.safe_load(params.read_text())
    edited["finetune"]["lr_max"] = 5.0e-4
    edited["evaluate"] = {"num_beams": 5}
    params.write_text(yaml.safe_dump(edited))

    restarted = subprocess.run(stage_command(tmp_path, data, 2, params), cwd=tmp_path, env=stage_env(mlflow_uri),
                               capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    assert f"resuming from {tmp_path / 'state/last.pt'}: epoch {killed_at['epoch']}" in restarted.stdout
    assert killed_at["step_in_epoch"] > 0  # mid-epoch (4 steps per epoch)

    ours = torch.load(tmp_path / "out/final.pt", weights_only=True)
    reference = torch.load(two_processes / "out/final.pt", weights_only=True)
    assert ours["model"].keys() == reference["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    assert ours["mlflow_run_id"] == killed_run  # the same MLflow run, continued
    steps = history(mlflow_uri, killed_run, "train/coca_loss")
    assert [s for s, _ in steps] == list(range(1, 9))  # each step once, the replayed ones included
    assert [s for s, _ in history(mlflow_uri, killed_run, "val/coca_loss")] == \
        [s for s, _ in history(mlflow_uri, run_id(two_processes), "val/coca_loss")]
    reference_steps = dict(history(mlflow_uri, run_id(two_processes), "train/coca_loss"))
    assert all(value == reference_steps[step] for step, value in steps)  # redone steps: the same values
    assert json.loads((tmp_path / "metrics/pretrain.json").read_text()) == \
        json.loads((two_processes / "metrics/pretrain.json").read_text())
    assert not (tmp_path / "state").exists()  # finished: the next run starts afresh


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("kill_at", [1, 3, 5])
def test_a_process_group_kill_leaves_no_orphans_and_the_rerun_resumes_bitwise(tmp_path, data, mlflow_uri,
                                                                             two_processes, kill_at):
    """`kill -9 -PGID` of the launcher: torchrun starts its workers in sessions of their own, so the kill
    reaches only the launcher. The workers' watchdog ends them (once, orphans trained on into the rerun's
    state directory); the state lock would stop a rerun while one lived. The rerun resumes bitwise."""
    params = write_params(tmp_path / "params.yaml", **{**TWO, "ckpt_every_steps": 1})
    summary = tmp_path / "state/last.json"
    proc = start_until_step(tmp_path, data, params, mlflow_uri, kill_at, start_new_session=True)
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 2  # the watchdog looks every 0.5 s; orphans would still be training
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    orphans = [pid for pid in workers if _alive(pid)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "workers outlived their launcher"
    assert summary.exists(), sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    killed_at = json.loads(summary.read_text())["step"]

    restarted = subprocess.run(stage_command(tmp_path, data, 2, params), cwd=tmp_path, env=stage_env(mlflow_uri),
                               capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    assert f"step {killed_at} " in restarted.stdout.split("resuming from", 1)[1].splitlines()[0]
    ours = torch.load(tmp_path / "out/final.pt", weights_only=True)["model"]
    reference = torch.load(two_processes / "out/final.pt", weights_only=True)["model"]
    assert all(torch.equal(ours[name], tensor) for name, tensor in reference.items())


def _torchrun(work: Path, data: Path, params: Path, *flags: str) -> list[str]:
    """The stage command with other torchrun flags than --standalone."""
    cmd = stage_command(work, data, 1, params)
    at = cmd.index("--standalone")
    return [*cmd[:at], *flags, *cmd[at + 2:]]  # --standalone and --nproc_per_node replaced


def _same_weights(work: Path, reference: Path) -> None:
    ours = torch.load(work / "out/final.pt", weights_only=True)["model"]
    theirs = torch.load(reference / "out/final.pt", weights_only=True)["model"]
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


def test_two_processes_decoding_on_their_device_train_the_same_weights(tmp_path, data, mlflow_uri, two_processes):
    """train.decode_on device under DDP (gloo, the CPU as each process's device): each process decodes
    its micro-batches in the training process, and the run ends with the weights of the workers'
    decoding, bit for bit."""
    run_stage(tmp_path, data, 2, write_params(tmp_path / "params.yaml", **TWO, decode_on="device"), mlflow_uri)
    _same_weights(tmp_path, two_processes)


def test_two_nodes_of_one_process_match_one_node_of_two(tmp_path, data, mlflow_uri, two_processes):
    """Two torchrun launchers (`--nnodes=2`, one process each) meeting at a c10d rendezvous on
    127.0.0.1 train to the same weights, bitwise, as one launcher with two processes."""
    from support.ui_check import free_port

    params = write_params(tmp_path / "params.yaml", **TWO)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(_torchrun(tmp_path, data, params, "--nnodes=2", "--nproc_per_node=1",
                                        "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=two-nodes",
                                        f"--rdzv_conf=is_host={str(node == 0).lower()}"),
                              cwd=tmp_path, env=stage_env(mlflow_uri), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]
    assert "2 process(es)" in outputs[0] + outputs[1]
    _same_weights(tmp_path, two_processes)


def test_an_elastic_restart_after_a_worker_dies_reaches_the_same_weights(tmp_path, data, mlflow_uri, two_processes):
    """Process 1 exits after step 5 (once: a marker file records it); torchrun (`--max-restarts=1`)
    restarts both processes, which resume from the last checkpoint and end bitwise where an
    uninterrupted run ends, in the same MLflow run with each step once."""
    params = write_params(tmp_path / "params.yaml", **{**TWO, "ckpt_every_steps": 2})
    marker = tmp_path / "fault-done"
    env = {**stage_env(mlflow_uri), "GRR_COCA_FAULT_STEP": "5", "GRR_COCA_FAULT_RANK": "1",
           "GRR_COCA_FAULT_MARKER": str(marker)}
    run = subprocess.run(_torchrun(tmp_path, data, params, "--standalone", "--nproc_per_node=2", "--max-restarts=1"),
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert marker.exists() and "fault injected: process 1 exits after step 5" in output
    assert f"resuming from {tmp_path / 'state/last.pt'}: epoch 1, step 4" in output  # the last checkpoint
    _same_weights(tmp_path, two_processes)
    rid = run_id(tmp_path)
    assert [s for s, _ in history(mlflow_uri, rid, "train/coca_loss")] == list(range(1, 9))
