"""Check what the MLflow UI shows: start `mlflow server`, render its run-comparison page in headless
Chromium, read the rendered DOM.

The comparison page of MLflow 3.x (its React routes: `getCompareRunPageRoute`) is

    <server>/#/compare-runs?runs=["<run id>", ...]&experiments=["<experiment id>"]

(JSON lists, URL-encoded). Its "Run details" table lists the run ids and names, one column per run, and
its "Metrics" table each metric's latest value per run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1920,2400")  # wide and tall: the grids render every column and row
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def find_chromium() -> str | None:
    """The Chromium executable ($CHROMIUM, else the first of CHROMIUM_NAMES on PATH), or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def compare_runs_url(base_url: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    q = urllib.parse.quote
    return (f"{base_url.rstrip('/')}/#/compare-runs?runs={q(json.dumps(run_ids))}"
            f"&experiments={q(json.dumps(experiment_ids))}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the server's process group (it has its own session), SIGKILL it after grace_s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by a leader that already exited
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifact_root: Path, start_timeout_s: float = 60.0,
                  log_path: Path | None = None, port: int | None = None, grace_s: float = 15.0) -> Iterator[str]:
    """Run `mlflow server` (the interpreter's own) on 127.0.0.1 and `port` (default: a free one); yield
    its base URL once /health answers. The server and all its workers are stopped on exit, whatever
    happens (SIGTERM, SIGKILL after grace_s; grace_s=0: killed at once, as in a crash)."""
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_exe) if mlflow_exe.exists() else "mlflow", "server", "--backend-store-uri", backend_uri,
           "--default-artifact-root", Path(artifact_root).as_uri(), "--artifacts-destination", str(artifact_root),
           "--host", "127.0.0.1", "--port", str(port := port or free_port()), "--workers", "1"]
    log_path = Path(log_path or tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")[1])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(artifact_root).parent,
                                env={**os.environ, **QUIET_ENV}, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {proc.returncode}:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server did not answer {base}/health within {start_timeout_s:.0f} s:\n"
                                   f"{_tail(log_path)}")
            time.sleep(0.5)
        yield base
    finally:
        _stop(proc, grace_s)


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def dump_dom(url: str, chromium: str, timeout_s: float = 60.0, budget_ms: int = 15000,
             ready: Callable[[str], bool] = lambda dom: True) -> str:
    """The DOM of `url` after headless Chromium has run its scripts (`--dump-dom` with a virtual-time
    budget), retried until `ready(dom)` or timeout_s has passed; returns the last DOM."""
    deadline = time.monotonic() + timeout_s
    dom = ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return dom
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                   "--dump-dom", url]
            try:
                out = subprocess.run(cmd, capture_output=True, timeout=left, start_new_session=True)
                dom = out.stdout.decode(errors="replace")
            except subprocess.TimeoutExpired as e:
                dom = (e.stdout or b"").decode(errors="replace")
        if ready(dom):
            return dom
        budget_ms = min(2 * budget_ms, 60000)


class _Text(HTMLParser):
    """Visible text nodes in document order (no script or style)."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "noscript"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style", "noscript") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.items.append(data.strip())


def page_text(dom: str) -> list[str]:
    parser = _Text()
    parser.feed(dom)
    return parser.items


@dataclass
class ComparePage:
    """What the run-comparison page shows: run ids and names in column order, and each metric's row."""

    run_ids: list[str]
    run_names: list[str]
    metrics: dict[str, list[str]]  # metric key -> displayed value per run column

    def value(self, run_id: str, metric: str) -> str:
        return self.metrics[metric][self.run_ids.index(run_id)]


def parse_compare_page(dom: str) -> ComparePage | None:
    """Read the "Run details" and "Metrics" tables of a rendered comparison page (None if not rendered)."""
    text = page_text(dom)
    try:
        details = text.index("Run details")
        ids_at = text.index("Run ID:", details)
        names_at = text.index("Run Name:", ids_at)
        ids = text[ids_at + 1:names_at]
        names = text[names_at + 1:names_at + 1 + len(ids)]
        metrics_at = text.index("Metrics", names_at)
        end = text.index("Artifacts", metrics_at)
    except ValueError:
        return None
    cells = [t for t in text[metrics_at + 1:end] if t != "Show diff only"]
    n_runs = len(ids)
    if not n_runs or len(cells) % (n_runs + 1):
        return None
    n_keys = len(cells) // (n_runs + 1)
    keys, values = cells[:n_keys], cells[n_keys:]
    rows = {k: values[i * n_runs:(i + 1) * n_runs] for i, k in enumerate(keys)}
    return ComparePage(ids, names, rows)
