"""Fixtures of the trainer tests: tiny shards and one MLflow store per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.trainkit import write_split


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_split(root / "cc12m/train", "cc12m", "train", 80, seed=0)
    write_split(root / "cc12m/val", "cc12m", "val", 24, seed=1)
    write_split(root / "mscoco/train", "mscoco", "train", 48, seed=2)
    write_split(root / "mscoco/val", "mscoco", "val", 16, seed=3)
    return root


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def mlflow_env(monkeypatch, mlflow_uri) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    return mlflow_uri
