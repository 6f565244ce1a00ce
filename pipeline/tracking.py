"""The one metrics interface (`Tracker`), with two back ends: MLflow (process 0 only) and DVC's
metrics files (final-metrics JSON, validation-curve TSV).

MLflow: tracking URI = $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db with artifacts in
<repo>/mlartifacts, where <repo> is the original repository even inside a `dvc exp run --temp` or
`--queue` copy (<repo>/.dvc/tmp/exps/...). Experiment `grr-coca`; a resumed run continues its run.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.train.checkpoint import save_atomic

EXPERIMENT = "grr-coca"
VAL_COLUMNS = ("step", "epoch", "kind", "coca_loss", "caption_loss", "perplexity", "contrastive_loss", "lr_level")


def repo_root(path: str | Path | None = None) -> Path:
    """The repository a stage runs in; for DVC experiment copies, the original repository."""
    p = str(Path(path or Path.cwd()).resolve())
    marker = p.find(f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}")
    return Path(p[:marker]) if marker >= 0 else Path(p)


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


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


class _MLflow:
    def __init__(self, uri: str, root: Path, run_name: str, tags: dict[str, str], params: dict[str, Any],
                 run_id: str | None):
        import mlflow  # imported on process 0 only: the other processes never talk to MLflow
        from mlflow.entities import Param, RunTag

        self.uri = uri
        self.client = mlflow.MlflowClient(uri)
        saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast if unreachable
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        try:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
        except Exception as e:  # noqa: BLE001 - any failure here means: no usable tracking server
            raise RuntimeError(f"MLflow tracking at {uri} cannot be reached: {type(e).__name__}: {e}") from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if experiment is not None:
            experiment_id = experiment.experiment_id
        elif uri.startswith("sqlite:") or uri.startswith("file:"):
            experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())
        else:
            experiment_id = self.client.create_experiment(EXPERIMENT)
        if run_id:
            try:
                self.client.get_run(run_id)
            except Exception:  # noqa: BLE001 - e.g. another tracking URI than before: start a new run
                print(f"MLflow run {run_id} of the checkpoint is not in {uri}: starting a new run", flush=True)
                run_id = None
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.pending: list = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending = []

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)


class Tracker:
    """Metrics of one training phase, to MLflow and the DVC metrics files (process 0 does the work;
    on other processes every method is a no-op)."""

    def __init__(self, mlflow_run: _MLflow | None, metrics_json: Path, val_tsv: Path):
        self.mlflow, self.metrics_json, self.val_tsv = mlflow_run, Path(metrics_json), Path(val_tsv)

    @property
    def run_id(self) -> str | None:
        return self.mlflow.run_id if self.mlflow else None

    def log_train(self, step: int, metrics: dict[str, float]) -> None:
        if self.mlflow:
            self.mlflow.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step)

    def log_val(self, step: int, metrics: dict[str, float], history: list[dict]) -> None:
        if not self.mlflow:
            return
        self.mlflow.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step)
        self.mlflow.flush()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, VAL_COLUMNS, delimiter="\t", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        self.val_tsv.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.val_tsv.with_name(f".{self.val_tsv.name}.tmp")
        tmp.write_text(buffer.getvalue())
        os.replace(tmp, self.val_tsv)

    def log_final(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.mlflow:
            return
        save_atomic(metrics, self.metrics_json)
        self.mlflow.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step)
        self.mlflow.flush()

    def log_artifact(self, path: str | Path | None, artifact_path: str | None = None) -> None:
        if self.mlflow and path is not None:
            self.mlflow.log_artifact(Path(path), artifact_path)

    def flush(self) -> None:
        if self.mlflow:
            self.mlflow.flush()

    def finish(self, status: str = "FINISHED") -> None:
        if self.mlflow:
            self.mlflow.finish(status)


def build_tracker(is_main: bool, *, root: Path, run_name: str, tags: dict[str, str], params: dict[str, Any],
                  run_id: str | None, metrics_json: Path, val_tsv: Path) -> Tracker:
    mlflow_run = _MLflow(tracking_uri(root), root, run_name, tags, params, run_id) if is_main else None
    return Tracker(mlflow_run, metrics_json, val_tsv)
