"""What trains and how: the frozen parts of a fine-tune (`finetune.freeze`, `finetune.mode`), and
AdamW over the rest (docs/paper.md §Training: betas 0.9/0.999, weight decay 0.001 on matmul/conv
weights only; fused: one kernel over all parameters, on the CPU as on the GPU)."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def freeze_parts(model: nn.Module, parts: list[str]) -> dict[str, float]:
    """Stop the named parts (CoCa.part_parameters) from training, before DDP wraps the model and the
    optimiser is built, so that neither holds them; -> the trainable count and fraction."""
    for part in parts:
        for param in model.part_parameters(part):
            param.requires_grad_(False)
    return trainable_summary(model)


def trainable_summary(model: nn.Module) -> dict[str, float]:
    """{trainable_params, total_params, trainable_fraction} of `model`."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total, "trainable_fraction": trainable / total}


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float, device: torch.device) -> torch.optim.AdamW:
    """`model` is the bare CoCa (not the DDP wrapper); its `optimizer_param_groups` decide the decay and
    leave out the frozen parameters."""
    groups = model.optimizer_param_groups(cfg.weight_decay)
    # Fused on the CPU too: the default multi-tensor step there took 0.62-0.99 s per step for the
    # paper-size model's 398M parameters on 2 cores, the fused one 0.16 s (a paper-size batch of 8
    # takes ~11 s), and benchmarks/model_step.py times the fused one.
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=device.type in ("cuda", "cpu"))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
