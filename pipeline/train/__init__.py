"""The trainer: one loop (loop.py) built from small parts, each with a builder function.

config.py (TrainConfig), parallelize.py (processes, devices, DDP, precision, compile), optim.py
(AdamW), schedule.py (warm-up + cosine with warm restarts), early_stopping.py (soft reset),
validate.py, checkpoint.py (atomic, exact resume), tracking.py (MLflow + metrics files). The data
loader is pipeline/data/loader.py; the model and its losses are pipeline/model.
"""

from .config import FinetuneConfig, PhaseConfig, PretrainConfig, TrainConfig

__all__ = ["TrainConfig", "PhaseConfig", "PretrainConfig", "FinetuneConfig"]
