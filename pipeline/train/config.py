"""TrainConfig: the `train:` section of params.yaml (SPEC "Training"), validated once.

Defaults are the paper's values; `(ours)` marks choices the paper does not state. `pipeline/config.py`
builds this dataclass from YAML (unknown keys and wrong types are rejected there); `__post_init__`
checks ranges and names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{key} = {value!r} is invalid: allowed {allowed}")


def _check_positive(obj: Any, prefix: str, names: tuple[str, ...], minimum: int = 1) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _fail(f"{prefix}{name}", value, f"an integer >= {minimum}")


@dataclass
class PhaseConfig:
    """One training phase. The defaults are pre-training's (paper); FinetuneConfig overrides them."""

    epochs: int = 21  # maximum epochs (early stopping may end a phase sooner)
    lr_max: float = 1e-4  # cosine-with-warm-restarts upper bound (one cycle per epoch)
    lr_min: float = 1e-6  # its lower bound
    warmup_steps: int = 2000  # linear warm-up, in optimiser steps (0 = none)
    lambda_con: float = 2.0  # CoCa loss = lambda_con * L_con + lambda_cap * L_cap
    lambda_cap: float = 1.0
    dropout: float = 0.15  # replaces model.dropout for this phase
    # Early stopping on the epoch-end validation CoCa loss, with the paper's "soft reset": after
    # soft_reset_after epochs without improvement, reload the best state and divide both LR bounds by
    # lr_divisor; after lr_levels levels have been tried, stop. patience is a hard cap on epochs
    # without improvement (9 = 3 levels x 3 epochs in the paper).
    early_stopping: bool = False
    patience: int = 9
    soft_reset_after: int = 3
    lr_levels: int = 3
    lr_divisor: float = 100.0
    min_delta: float = 0.0  # an improvement must lower the loss by more than this (ours)

    def validate(self, prefix: str) -> None:
        _check_positive(self, prefix, ("epochs", "patience", "soft_reset_after", "lr_levels"))
        _check_positive(self, prefix, ("warmup_steps",), minimum=0)
        if not 0 < self.lr_min <= self.lr_max:
            _fail(f"{prefix}lr_min", self.lr_min, f"a number in (0, lr_max={self.lr_max}]")
        for name in ("lambda_con", "lambda_cap", "min_delta"):
            if getattr(self, name) < 0:
                _fail(f"{prefix}{name}", getattr(self, name), "a number >= 0")
        if not 0.0 <= self.dropout < 1.0:
            _fail(f"{prefix}dropout", self.dropout, "a number in [0, 1)")
        if self.lr_divisor <= 1.0:
            _fail(f"{prefix}lr_divisor", self.lr_divisor, "a number > 1")


@dataclass
class PretrainConfig(PhaseConfig):
    """Pre-training on CC12M (paper): 21 epochs, LR 1e-4 -> 1e-6 after 2000 warm-up steps."""

    section = "pretrain"  # its key in params.yaml (a class attribute, not a setting)

    def __post_init__(self) -> None:
        self.validate(f"{self.section}.")


@dataclass
class FinetuneConfig(PhaseConfig):
    """Fine-tuning (paper): LR 1e-5 -> 1e-7, no warm-up, early stopping with soft reset."""

    section = "finetune"

    epochs: int = 100  # a cap only: early stopping ends fine-tuning (ours)
    lr_max: float = 1e-5
    lr_min: float = 1e-7
    warmup_steps: int = 0
    lambda_con: float = 1.0
    lambda_cap: float = 2.0
    dropout: float = 0.1
    early_stopping: bool = True

    def __post_init__(self) -> None:
        self.validate(f"{self.section}.")


@dataclass
class TrainConfig:
    # Processes per node (torchrun --nproc_per_node); the paper used 4 GPUs.
    nproc_per_node: int = 4
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    # bf16 autocast where the device supports it (CUDA with bf16), otherwise fp32 (ours).
    precision: Literal["fp32", "bf16"] = "bf16"
    compile: bool = False  # torch.compile the model (ours)
    seed: int = 0
    micro_batch_size: int = 48  # per process
    grad_accum_steps: int = 4  # 48 x 4 GPUs x 4 = 768 samples per optimiser step
    num_workers: int = 4  # DataLoader workers per process (ours)
    # Number of data streams an epoch is cut into (each reads its own shards; every micro-batch takes
    # the same number of samples from each). 0 = world size x max(1, num_workers). Fix it to make the
    # data order independent of the number of processes and workers (ours).
    data_streams: int = 0
    shuffle_buffer: int = 1000  # samples per stream's shuffle buffer (ours)
    val_batch_size: int = 192  # validation batch (= one micro-step's contrastive batch, 48 x 4) (ours)
    val_at_start: bool = True  # validate once before the first step (the curve's starting point)
    log_every_steps: int = 10
    val_every_steps: int = 0  # also validate every N steps (curves only); 0 = at each epoch end only
    ckpt_every_steps: int = 500  # resumable checkpoint every N optimiser steps (and at each epoch end)
    max_steps_per_epoch: int = 0  # 0 = whole epochs; > 0 caps an epoch (smoke runs) (ours)
    grad_clip: float = 1.0
    weight_decay: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    threads_per_process: int = 0  # torch CPU threads per process; 0 = cores / local processes

    def __post_init__(self) -> None:
        _check_positive(self, "train.", ("nproc_per_node", "micro_batch_size", "grad_accum_steps",
                                   "shuffle_buffer", "val_batch_size", "log_every_steps"))
        _check_positive(self, "train.", ("num_workers", "data_streams", "val_every_steps", "ckpt_every_steps",
                                   "max_steps_per_epoch", "threads_per_process", "seed"), minimum=0)
        if self.device not in ("auto", "cpu", "cuda"):
            _fail("train.device", self.device, "auto, cpu or cuda")
        if self.precision not in ("fp32", "bf16"):
            _fail("train.precision", self.precision, "fp32 or bf16")
        if self.grad_clip <= 0:
            _fail("train.grad_clip", self.grad_clip, "a number > 0")
        if self.weight_decay < 0:
            _fail("train.weight_decay", self.weight_decay, "a number >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            _fail("train.betas", self.betas, "two numbers in [0, 1)")
        if self.eps <= 0:
            _fail("train.eps", self.eps, "a number > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
