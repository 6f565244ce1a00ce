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


class MLflowBackend:
    """One MLflow run: created, or continued when `run_id` is given. `attach=True` adds records to a
    run without touching its status (the evaluation of a finished training run)."""

    def __init__(self, uri: str, root: Path, run_name: str, tags: dict[str, str], params: dict[str, Any],
                 run_id: str | None, attach: bool = False):
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
        self.attach = attach
        if run_id:
            try:
                self.client.get_run(run_id)
            except Exception:  # noqa: BLE001 - e.g. another tracking URI than before: start a new run
                if attach:
                    raise LookupError(f"MLflow run {run_id} is not in {uri}") from None
                print(f"MLflow run {run_id} of the checkpoint is not in {uri}: starting a new run", flush=True)
                run_id = None
        if run_id:
            if not attach:
                self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.pending: list = []
        # A resumed run replays the steps after its last checkpoint, which may already be logged: the
        # replayed values are the same (exact resume), so each step is logged once.
        self.logged_until = {"train": -1, "val": -1}
        if run_id and not attach:
            for kind in self.logged_until:
                history = self.client.get_metric_history(self.run_id, f"{kind}/coca_loss")
                self.logged_until[kind] = max((m.step for m in history), default=-1)

    def log(self, kind: str, step: int, metrics: dict[str, Any], history: list[dict] | None = None) -> None:
        from mlflow.entities import Metric

        if step <= self.logged_until.get(kind, -1):  # final/ and eval/ records are never skipped
            return
        now = int(time.time() * 1000)
        self.pending += [Metric(f"{kind}/{k}", float(v), now, step) for k, v in metrics.items()]
        if kind != "train":  # a validation or a result is in the store before anything else happens
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending = []

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        self.flush()
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str) -> None:
        self.flush()
        if not self.attach:
            self.client.set_terminated(self.run_id, status)


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
              metrics_json: Path | None, val_tsv: Path | None = None, marker: Path | None = None) -> Tracker:
    """A tracker for one stage: MLflow (a new run named by tags["mlflow.runName"], or `run_id`
    continued) and the stage's metrics files.

    `marker` (in the stage's state directory) names the run as soon as it exists. A run killed before
    its first checkpoint cannot be continued (no checkpoint names it); the next start finds it there
    and marks it FAILED rather than leaving it RUNNING for ever."""
    mlflow_run = MLflowBackend(tracking_uri(root), root, tags["mlflow.runName"], tags, params, run_id)
    if marker is not None:
        earlier = read_json(marker).get("run_id") if marker.exists() else None
        if earlier and earlier != mlflow_run.run_id:
            try:
                if mlflow_run.client.get_run(earlier).info.status == "RUNNING":
                    mlflow_run.client.set_terminated(earlier, "FAILED")
                    print(f"MLflow run {earlier} was killed before its first checkpoint: marked FAILED", flush=True)
            except Exception:  # noqa: BLE001 - not in this store (another tracking URI): nothing to mark
                pass
        write_json(marker, {"run_id": mlflow_run.run_id})
    return Tracker([mlflow_run, MetricsFilesBackend(metrics_json, val_tsv)])


def attach(run_id: str | None, *, root: Path, metrics_json: Path | None) -> Tracker:
    """A tracker that adds to an existing MLflow run (the evaluation of a trained checkpoint), or only
    writes the metrics file when the checkpoint names no run."""
    backends: list = [MetricsFilesBackend(metrics_json)]
    if run_id:
        try:
            backends.insert(0, MLflowBackend(tracking_uri(root), root, "", {}, {}, run_id, attach=True))
        except LookupError as e:
            print(f"{e}: the scores go to {metrics_json} only", flush=True)
    return Tracker(backends)


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
    tags.update({f"dvc_md5.{path}": md5 for path, md5 in dvc_hashes(Path(spec.repo), inputs).items()})
    if init_meta.get("run_id"):
        tags["pretrain_run_id"] = init_meta["run_id"]
    params = {**cfg.flat(), **design, "run.phase": spec.phase, "run.dataset": spec.dataset, "run.world_size": world_size,
              "run.init": init_meta.get("path", ""), **extra}
    return tags, params
