"""Learning rate: linear warm-up, then cosine annealing with warm restarts, one cycle per epoch.

For optimiser step t (0-based, counted over the whole phase) that is step i of an epoch of n steps:

    warm-up (t < W):  lr = lr_max * (t + 1) / W
    afterwards:       lr = lr_min + (lr_max - lr_min) * (1 + cos(pi * j / m)) / 2

where the cycle is the epoch (j = i, m = n), except in the epoch where warm-up ends, whose cycle
starts at the end of warm-up (j = i - a, m = n - a with a the warm-up steps in that epoch), so the
LR is continuous there and every later cycle starts with an epoch (ours: the paper does not say
how the two meet). Without warm-up this is torch's CosineAnnealingWarmRestarts with T_0 = n.
A soft reset (early stopping) divides both bounds by a divisor: `scale` is the product.
"""

from __future__ import annotations

import math

from .config import PhaseConfig


class LRSchedule:
    def __init__(self, lr_max: float, lr_min: float, warmup_steps: int):
        self.lr_max, self.lr_min, self.warmup_steps = lr_max, lr_min, warmup_steps
        self.scale = 1.0

    def lr(self, step: int, step_in_epoch: int, steps_in_epoch: int) -> float:
        hi, lo = self.lr_max * self.scale, self.lr_min * self.scale
        if step < self.warmup_steps:
            return hi * (step + 1) / self.warmup_steps
        start = max(0, self.warmup_steps - (step - step_in_epoch))  # warm-up steps in this epoch
        return lo + (hi - lo) * (1 + math.cos(math.pi * (step_in_epoch - start) / (steps_in_epoch - start))) / 2

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])


def build_schedule(phase: PhaseConfig) -> LRSchedule:
    return LRSchedule(phase.lr_max, phase.lr_min, phase.warmup_steps)
