"""The one metrics interface (`Tracker`) that training, evaluation, the report and the CLI share,
with two back ends: MLflow, and DVC's metrics files (a metrics JSON, the validation-curve TSV).
Only process 0 tracks; the others get a `NullTracker`. What a tracker is told:

    log_train(step, metrics)          per optimiser step    MLflow train/<m>
    log_val(step, metrics, history)   per validation        MLflow val/<m>;   TSV of the whole history
    log_final(step, metrics, history) the stage's result    MLflow final/<m>; metrics JSON and the TSV again
    log_eval(metrics)                 evaluation scores     MLflow eval/<m>;  metrics JSON
    log_artifact(path, folder)        checkpoints, tokenizer, samples (MLflow)

MLflow: tracking URI = $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db with artifacts in
<repo>/mlartifacts, where <repo> is the original repository even inside a `dvc exp run --temp` or
`--queue` copy (<repo>/.dvc/tmp/exps/...). Experiment `grr-coca`; a resumed run continues its run.
A stage never waits on MLflow: its records go to a `Spool` on disk (<state dir>/tracking) that a
background thread sends, so a tracking server that is down costs telemetry at most; what is still
there when the stage ends is sent by `grr-coca tracking-sync` (`sync` below) or the stage's next run.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from pipeline.io import read_json, write_json, write_text
from pipeline.names import EXPERIMENT, run_name

VAL_COLUMNS = ("step", "epoch", "kind", "coca_loss", "caption_loss", "perplexity", "contrastive_loss", "lr_level")


def repo_root(path: str | Path | None = None) -> Path:
    """The repository a stage runs in; for DVC experiment copies, the original repository."""
    p = str(Path(path or Path.cwd()).resolve())
    marker = p.find(f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}")
    return Path(p[:marker]) if marker >= 0 else Path(p)


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def sqlite_store(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (sqlite:////abs/path or sqlite:///relative/path), else None.
    MlflowClient creates a missing one: callers that only read check it exists first."""
    return Path(uri[len("sqlite:///"):].split("?")[0]) if uri.startswith("sqlite:///") else None


def git_commit(cwd: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def dvc_hashes(cwd: Path, paths: list[str | Path]) -> dict[str, str]:
    """md5s that dvc.lock records for the outputs that contain (or are) the given paths."""
    lock = cwd / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    wanted = []
    for p in map(Path, paths):
        if p.is_absolute():
            try:
                p = p.resolve().relative_to(cwd.resolve())
            except ValueError:
                continue  # outside the repository: not a DVC output
        wanted.append(p.as_posix().rstrip("/"))
    found = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            path = str(out.get("path", "")).rstrip("/")
            if any(w == path or w.startswith(path + "/") for w in wanted) and out.get("md5"):
                found[path] = out["md5"]
    return found


# --------------------------------------------------------------------------------------------
# MLflow through a spool: a tracking server that goes down costs telemetry at most, never a run
# --------------------------------------------------------------------------------------------

SPOOL = "tracking"  # the spool's folder name, inside a stage's state directory
SPOOLS_UNDER = "data/train_state"  # where dvc.yaml's stages keep their state directories
OFFLINE_TAG = "grr_coca.offline_key"  # a run created from a spool names its spool key here
# MLflow's own HTTP settings, so that a call to a server that is down fails in seconds, not minutes
# of retries (MLflow's default: 7 retries with exponential back-off); the spool retries instead.
HTTP_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
RETRY_AFTER_S = 2.0  # the sender's pause after a failed call
FINISH_WAIT_S = 15.0  # at a stage's end, how long to wait for another sender of its spool (tracking-sync)
REFUSED = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # MLflow's answers to a record it never takes


def fail_fast_http() -> None:
    """Short MLflow HTTP timeouts for this process, unless the user set their own."""
    for name, value in HTTP_FAIL_FAST.items():
        os.environ.setdefault(name, value)


class Spool:
    """MLflow records on their way to the server, on disk: `journal.jsonl` (one record a line, appended
    by the stage) and `sent.json` (how many lines are in MLflow, and the MLflow run of each run key).
    Records are sent in order and each one is idempotent (the same metric with the same timestamp is
    stored once; params, tags and artifacts overwrite themselves), so a record whose answer was lost is
    simply sent again. Artifacts are copied (hard-linked where possible) into `artifacts/` when logged:
    what is sent later is what the stage logged, even if the file changed since.

    A run key is the MLflow run id, or `offline-<hex>` for a run created while the server was down;
    sending that run's first record creates it in MLflow (tagged OFFLINE_TAG=<key>)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.journal, self.progress = self.folder / "journal.jsonl", self.folder / "sent.json"
        self.lock = threading.Lock()  # the stage's thread and its sender share one journal

    def append(self, record: dict, sync: bool = False) -> None:
        with self.lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self.journal.open("a") as f:
                f.write(json.dumps(record) + "\n")
                if sync:  # before a checkpoint: every step it covers is on disk
                    f.flush()
                    os.fsync(f.fileno())

    def records(self) -> list[dict]:
        """The journal's whole lines (a stage killed while appending leaves half a line at the end)."""
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().split("\n")[:-1] if line]

    def state(self) -> dict:
        return read_json(self.progress) if self.progress.exists() else {"lines": 0, "runs": {}}

    def pending(self) -> int:
        return len(self.records()) - self.state()["lines"]

    def run_of(self, key: str) -> str | None:
        """The MLflow run id of a run key, once known."""
        return self.state()["runs"].get(key) if key.startswith("offline-") else key

    def snapshot(self, path: Path) -> str:
        """A copy of an artifact (file or folder) in the spool; its path relative to the spool."""
        target = self.folder / "artifacts" / uuid.uuid4().hex / path.name
        target.parent.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(path, target)
        return str(target.relative_to(self.folder))

    def send(self, uri: str, stop: threading.Event | None = None, wait_s: float = 0.0) -> int:
        """Send the records not sent yet, in order; return how many. The first failure is raised, after
        the progress so far is saved. One sender at a time (the stage's, or `grr-coca tracking-sync`
        beside it): while another sends, wait up to wait_s for it, then send nothing."""
        if not self.journal.exists():
            return 0
        with open(self.folder / ".send.lock", "a") as lock:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return 0
                    time.sleep(0.05)
            client, records, state = _client(uri), self.records(), self.state()
            sent = 0
            for record in records[state["lines"]:]:
                if stop is not None and stop.is_set():
                    break
                try:
                    _send_record(client, uri, record, state["runs"], self.folder)
                except Exception as e:
                    if getattr(e, "error_code", None) not in REFUSED:
                        raise  # the server is down or failing: sent again later
                    # the server answered and will never take it (e.g. a run deleted meanwhile):
                    # waiting would block every record behind it
                    print(f"MLflow at {uri} refused a spooled {record['op']} record of {record['key']}: "
                          f"{str(e)[:300]}; skipped", flush=True)
                    state["refused"] = state.get("refused", 0) + 1
                state["lines"] += 1
                sent += 1
                write_json(self.progress, state)
                if record["op"] == "artifact":
                    shutil.rmtree((self.folder / record["path"]).parent, ignore_errors=True)
            return sent

    def remove(self) -> None:
        """Everything is in MLflow: the spool goes, and its state directory if nothing else is left."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)  # the stage writes its files anew (atomic rename), never in place
    except OSError:
        shutil.copy2(src, dst)


def _client(uri: str):
    import mlflow

    fail_fast_http()
    return mlflow.MlflowClient(uri)


def _experiment_id(client, uri: str, root: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    if uri.startswith("sqlite:") or uri.startswith("file:"):
        return client.create_experiment(EXPERIMENT, artifact_location=(Path(root) / "mlartifacts").as_uri())
    return client.create_experiment(EXPERIMENT)


def _find_offline_run(client, key: str) -> str | None:
    """The MLflow run created for an offline run key (by whichever spool sent it), if any."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    found = client.search_runs([experiment.experiment_id], f"tags.`{OFFLINE_TAG}` = '{key}'", max_results=1)
    return found[0].info.run_id if found else None


def _send_record(client, uri: str, record: dict, runs: dict[str, str], folder: Path) -> None:
    """One journal record to MLflow. `runs` maps offline run keys to MLflow run ids (updated here)."""
    from mlflow.entities import Metric, Param, RunTag

    op, key = record["op"], record["key"]
    if op == "create":  # a run started while the server was down; idempotent through its tag
        runs[key] = _find_offline_run(client, key) or client.create_run(
            _experiment_id(client, uri, record["root"]), run_name=record["run_name"],
            tags={OFFLINE_TAG: key}).info.run_id
        return
    if key.startswith("offline-") and key not in runs:  # a run another spool created (an evaluation's)
        runs[key] = _find_offline_run(client, key) or ""
    run_id = runs[key] if key.startswith("offline-") else key
    if not run_id:
        if record.get("only_if_running"):
            return  # created by no spool: nothing to mark
        raise LookupError(f"MLflow run of {key} not created yet (its training stage's spool holds it)")
    if op == "params":
        items = [Param(k, str(v)[:6000]) for k, v in sorted(record["params"].items())]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i:i + 100])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
    elif op == "metrics":
        metrics = [Metric(name, value, timestamp, step) for name, value, timestamp, step in record["metrics"]]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
    elif op == "artifact":
        path = folder / record["path"]
        if path.is_dir():
            client.log_artifacts(run_id, str(path), record["folder"])
        else:
            client.log_artifact(run_id, str(path), record["folder"])
    elif op == "status":
        if record.get("only_if_running") and client.get_run(run_id).info.status != "RUNNING":
            return  # the marker's run ended after all
        if record["status"] == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, record["status"], end_time=record["time"])
    else:
        raise ValueError(f"unknown spool record {op!r} in {record}")


class MLflowBackend:
    """One MLflow run, fed through a `Spool`: the stage only appends records to the spool's journal and
    a sender thread forwards them, retrying every RETRY_AFTER_S while the server is down, so the
    training loop never waits on MLflow. The run is created, or continued when `run_id` is given; when
    the server cannot be reached at the start, the run gets an offline key and is created in MLflow
    when the server answers. `attach=True` adds records to a run without touching its status (the
    evaluation of a finished training run)."""

    def __init__(self, uri: str, root: Path, run_name: str, tags: dict[str, str], params: dict[str, Any],
                 run_id: str | None, spool: Path, attach: bool = False):
        self.uri, self.attach, self.spool = uri, attach, Spool(spool)
        self.client = None  # None: the server did not answer at the start
        try:
            client = _client(uri)
            experiment_id = _experiment_id(client, uri, str(root))
            self.client = client
        except Exception as e:  # noqa: BLE001 - any failure here means: no usable tracking server now
            print(f"MLflow tracking at {uri} cannot be reached ({type(e).__name__}: {str(e)[:200]}): the run "
                  f"is kept in {self.spool.folder} and sent when the server answers (or by "
                  "`grr-coca tracking-sync`)", flush=True)
        if run_id and not self._known(run_id):
            if attach:
                raise LookupError(f"MLflow run {run_id} is not in {uri}")
            print(f"MLflow run {run_id} of the checkpoint is not in {uri}: starting a new run", flush=True)
            run_id = None
        if run_id:
            self.run_id = run_id
            if not attach:
                self.spool.append({"op": "status", "key": run_id, "status": "RUNNING"})
        else:
            if self.client is not None:
                self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            else:
                self.run_id = f"offline-{uuid.uuid4().hex}"
                self.spool.append({"op": "create", "key": self.run_id, "run_name": run_name, "root": str(root)})
            self.spool.append({"op": "params", "key": self.run_id, "params": {k: str(v) for k, v in params.items()}})
        if tags:
            self.spool.append({"op": "tags", "key": self.run_id, "tags": {k: str(v) for k, v in tags.items()}})
        self.pending: list = []
        # A resumed run replays the steps after its last checkpoint, which may already be logged: the
        # replayed values are the same (exact resume), so each step is logged once. The spool knows
        # what was logged even while the server is down; the server knows it when the spool is gone.
        self.logged_until = {"train": -1, "val": -1}
        if run_id and not attach:
            for record in self.spool.records():
                if record["op"] == "metrics" and record["key"] == run_id:
                    for name, _, _, step in record["metrics"]:
                        kind = name.split("/", 1)[0]
                        if kind in self.logged_until:
                            self.logged_until[kind] = max(self.logged_until[kind], step)
            if self.client is not None and self.spool.run_of(run_id):
                for kind in self.logged_until:
                    history = self.client.get_metric_history(self.spool.run_of(run_id), f"{kind}/coca_loss")
                    self.logged_until[kind] = max([self.logged_until[kind], *(m.step for m in history)])
        self.stop, self.wake = threading.Event(), threading.Event()
        self.sender = threading.Thread(target=self._send_until_stopped, name="mlflow-spool", daemon=True)
        self.sender.start()

    def _known(self, run_id: str) -> bool:
        """Whether a checkpoint's run can be continued: in this spool, or in MLflow (assumed so while
        the server is down)."""
        if any(r["key"] == run_id for r in self.spool.records()):
            return True
        if self.client is None or (self.attach and run_id.startswith("offline-")):
            return True  # an evaluation's records wait until the training's spool has created the run
        try:
            if run_id.startswith("offline-"):
                return bool(_find_offline_run(self.client, run_id))
            self.client.get_run(run_id)
            return True
        except Exception:  # noqa: BLE001 - e.g. another tracking URI than before
            return False

    def _send_until_stopped(self) -> None:
        failing = False
        while not self.stop.is_set():
            try:
                self.spool.send(self.uri, self.stop)
                if failing:
                    print(f"MLflow tracking at {self.uri} answers again: the spooled records are sent", flush=True)
                failing = False
                self.wake.wait(1.0)
                self.wake.clear()
            except Exception as e:  # noqa: BLE001 - the server is down or failing: try again later
                if not failing:
                    print(f"MLflow tracking at {self.uri} failed ({type(e).__name__}: {str(e)[:200]}): "
                          f"records wait in {self.spool.folder}", flush=True)
                failing = True
                self.stop.wait(RETRY_AFTER_S)

    def log(self, kind: str, step: int, metrics: dict[str, Any], history: list[dict] | None = None) -> None:
        if step <= self.logged_until.get(kind, -1):  # final/ and eval/ records are never skipped
            return
        now = int(time.time() * 1000)  # part of the record: a record sent twice is stored once
        self.pending += [[f"{kind}/{k}", float(v), now, step] for k, v in metrics.items()]
        if kind != "train":  # a validation or a result is on disk before anything else happens
            self.flush()

    def flush(self) -> None:
        """The metrics logged so far go to the spool, on disk (so a checkpoint never covers a step whose
        metrics could be lost), and the sender is woken."""
        if self.pending:
            self.spool.append({"op": "metrics", "key": self.run_id, "metrics": self.pending}, sync=True)
            self.pending = []
        self.wake.set()

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        if path.exists():
            self.flush()
            self.spool.append({"op": "artifact", "key": self.run_id, "path": self.spool.snapshot(path),
                               "folder": artifact_path})
            self.wake.set()

    def finish(self, status: str) -> None:
        """The last records, then one attempt to send everything (a server that is down costs one
        failed call); what cannot be sent stays in the spool for `grr-coca tracking-sync`."""
        self.flush()
        if not self.attach:
            self.spool.append({"op": "status", "key": self.run_id, "status": status,
                               "time": int(time.time() * 1000)}, sync=True)
        self.stop.set()
        self.sender.join()
        try:
            self.spool.send(self.uri, wait_s=FINISH_WAIT_S)
        except Exception as e:  # noqa: BLE001 - the server is down: the spool keeps the records
            print(f"MLflow tracking at {self.uri} cannot be reached ({type(e).__name__}: {str(e)[:200]}): "
                  f"{self.spool.pending()} record(s) of run {self.run_id} are kept in {self.spool.folder}; "
                  f"`grr-coca tracking-sync {self.spool.folder}` sends them", flush=True)
            return
        if self.spool.pending() == 0:
            self.spool.remove()


class MetricsFilesBackend:
    """DVC's view of a stage: `dvc metrics show` reads the JSON, `dvc plots show` the TSV."""

    run_id = None

    def __init__(self, metrics_json: str | Path | None, val_tsv: str | Path | None = None):
        self.metrics_json = Path(metrics_json) if metrics_json else None
        self.val_tsv = Path(val_tsv) if val_tsv else None

    def log(self, kind: str, step: int, metrics: dict[str, Any], history: list[dict] | None = None) -> None:
        # The final record rewrites the curve too: a run resumed after its last validation (killed
        # while saving its outputs) logs no new validation, and DVC deleted the TSV before the rerun.
        if kind in ("val", "final") and history is not None and self.val_tsv is not None:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, VAL_COLUMNS, delimiter="\t", extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(history or [])
            write_text(self.val_tsv, buffer.getvalue())
        if kind in ("final", "eval") and self.metrics_json is not None:
            write_json(self.metrics_json, metrics)

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


class Tracker:
    """Sends every record to each of its back ends (see the module docstring)."""

    def __init__(self, backends: list):
        self.backends = backends

    @property
    def run_id(self) -> str | None:
        return next((b.run_id for b in self.backends if b.run_id), None)

    def log_train(self, step: int, metrics: dict[str, float]) -> None:
        self._log("train", step, metrics)

    def log_val(self, step: int, metrics: dict[str, float], history: list[dict]) -> None:
        self._log("val", step, metrics, history)

    def log_final(self, step: int, metrics: dict[str, Any], history: list[dict]) -> None:
        self._log("final", step, metrics, history)

    def log_eval(self, metrics: dict[str, Any]) -> None:
        self._log("eval", 0, metrics)

    def _log(self, kind: str, step: int, metrics: dict[str, Any], history: list[dict] | None = None) -> None:
        for backend in self.backends:
            backend.log(kind, step, metrics, history)

    def log_artifact(self, path: str | Path | None, artifact_path: str | None = None) -> None:
        if path is not None:
            for backend in self.backends:
                backend.log_artifact(Path(path), artifact_path)

    def flush(self) -> None:
        for backend in self.backends:
            backend.flush()

    def finish(self, status: str = "FINISHED") -> None:
        for backend in self.backends:
            backend.finish(status)


class NullTracker(Tracker):
    """What processes other than 0 hold: every call does nothing."""

    def __init__(self):
        super().__init__([])


def start_run(root: Path, tags: dict[str, str], params: dict[str, Any], run_id: str | None,
              metrics_json: Path | None, val_tsv: Path | None = None, *, state_dir: Path) -> Tracker:
    """A tracker for one stage: MLflow (a new run named by tags["mlflow.runName"], or `run_id`
    continued) through the spool `<state_dir>/tracking`, and the stage's metrics files.

    `<state_dir>/run.json` names the run as soon as it exists. A run killed before its first
    checkpoint cannot be continued (no checkpoint names it); the next start finds it there and marks
    it FAILED rather than leaving it RUNNING for ever."""
    state_dir = Path(state_dir)
    mlflow_run = MLflowBackend(tracking_uri(root), root, tags["mlflow.runName"], tags, params, run_id,
                               state_dir / SPOOL)
    marker = state_dir / "run.json"
    earlier = read_json(marker).get("run_id") if marker.exists() else None
    if earlier and earlier != mlflow_run.run_id:
        mlflow_run.spool.append({"op": "status", "key": earlier, "status": "FAILED", "only_if_running": True,
                                 "time": int(time.time() * 1000)})
        print(f"MLflow run {earlier} was killed before its first checkpoint: marked FAILED", flush=True)
    write_json(marker, {"run_id": mlflow_run.run_id})
    return Tracker([mlflow_run, MetricsFilesBackend(metrics_json, val_tsv)])


def attach(run_id: str | None, *, root: Path, metrics_json: Path | None) -> Tracker:
    """A tracker that adds to an existing MLflow run (the evaluation of a trained checkpoint), or only
    writes the metrics file when the checkpoint names no run. Its spool is
    `<root>/data/train_state/evaluate-<run>/tracking`."""
    backends: list = [MetricsFilesBackend(metrics_json)]
    if run_id:
        spool = root / SPOOLS_UNDER / f"evaluate-{run_id}" / SPOOL
        try:
            backends.insert(0, MLflowBackend(tracking_uri(root), root, "", {}, {}, run_id, spool, attach=True))
        except LookupError as e:
            print(f"{e}: the scores go to {metrics_json} only", flush=True)
    return Tracker(backends)


def spools(root: Path) -> list[Path]:
    """The spools of a repository that hold records (what `grr-coca tracking-sync` sends by default)."""
    return sorted(p.parent for p in (root / SPOOLS_UNDER).glob(f"*/{SPOOL}/journal.jsonl"))


def sync(folder: Path, uri: str) -> tuple[int, int]:
    """Send what a spool holds; (records sent, records left). An emptied spool is removed."""
    spool = Spool(folder)
    if not spool.journal.exists():
        raise FileNotFoundError(f"{folder}: no MLflow spool here (no journal.jsonl)")
    sent = spool.send(uri, wait_s=FINISH_WAIT_S)
    left = spool.pending()
    if left == 0 and not _stage_running(folder.parent):
        spool.remove()
    return sent, left


def _stage_running(state_dir: Path) -> bool:
    """Whether a stage holds the state directory's lock (pipeline/train/resume.py's StateLock)."""
    if not (state_dir / ".lock").exists():
        return False
    with open(state_dir / ".lock") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def run_description(cfg: Any, spec: Any, init_meta: dict, world_size: int, device: str,
                    extra: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """(tags, params) of a training stage's MLflow run: every resolved parameter, plus where the run
    comes from (git commit, DVC experiment, the DVC hashes of its inputs, the pre-training run)."""
    encoder = cfg.model.variant  # a bundle's name (grr, baseline), else the ViT design (vit-rmsnorm-gelu-sincos)
    design = dict(zip(("vit.norm", "vit.ffn", "vit.pos"), cfg.model.vit_design))  # in force, bundle resolved
    tags = {"mlflow.runName": run_name(spec.phase, spec.dataset, encoder), "encoder": encoder, **design,
            "preset": cfg.preset, "phase": spec.phase, "dataset": spec.dataset, "git_commit": git_commit(spec.repo),
            "world_size": str(world_size), "device": device}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    inputs = [spec.train_shards, spec.val_shards] + [p for p in (spec.tokenizer, spec.init) if p]
    inputs += [p for pair in getattr(spec, "mixed", {}).values() for p in pair]  # a joint fine-tune's other sets
    tags.update({f"dvc_md5.{path}": md5 for path, md5 in dvc_hashes(Path(spec.repo), inputs).items()})
    if init_meta.get("run_id"):
        tags["pretrain_run_id"] = init_meta["run_id"]
    params = {**cfg.flat(), **design, "run.phase": spec.phase, "run.dataset": spec.dataset, "run.world_size": world_size,
              "run.init": init_meta.get("path", ""), **extra}
    return tags, params
