"""Shared helpers for the model tests: tiny configs and captions in the pipeline's token format."""

from __future__ import annotations

import pytest
from support.captions import make_sequences

from pipeline.config import model_preset
from pipeline.model.config import ModelConfig


@pytest.fixture
def smoke_cfg() -> ModelConfig:
    return model_preset("smoke")


@pytest.fixture
def sequences():
    return make_sequences
