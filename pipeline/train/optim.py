"""AdamW (docs/paper.md §Training: betas 0.9/0.999, weight decay 0.001 on matmul/conv weights only;
fused on GPU)."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float, device: torch.device) -> torch.optim.AdamW:
    """`model` is the bare CoCa (not the DDP wrapper); its `optimizer_param_groups` decide the decay."""
    groups = model.optimizer_param_groups(cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=device.type == "cuda")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
