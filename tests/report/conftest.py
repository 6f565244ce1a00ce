"""Fixtures of the report tests: one MLflow sqlite store of fake runs, and the default report over it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.reportkit import make_store

from pipeline.report.compare import compare


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> dict:
    return make_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="session")
def default_report(store, tmp_path_factory) -> Path:
    return compare(store["uri"], tmp_path_factory.mktemp("reports"))
