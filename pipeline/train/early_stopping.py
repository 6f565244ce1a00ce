"""Early stopping with the paper's "soft reset" (docs/paper.md §Training, fine-tuning).

After each epoch's validation: an improvement (loss < best - min_delta) records the new best state.
Otherwise the epochs-without-improvement counters grow. When the current LR level has gone
`soft_reset_after` epochs without improvement, training is reset to the best state and both LR
bounds are divided by `lr_divisor` (the next level); when the last of `lr_levels` levels runs out,
or `patience` epochs have passed without improvement in all, training stops. Paper: 3 epochs,
/100, 3 levels, patience 9 (= 3 x 3, so both rules end training at the same epoch).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .config import PhaseConfig

IMPROVED, CONTINUE, SOFT_RESET, STOP = "improved", "continue", "soft_reset", "stop"


@dataclass
class EarlyStopping:
    patience: int  # the rule, from the phase's section (build_early_stopping)
    soft_reset_after: int
    lr_levels: int
    lr_divisor: float
    min_delta: float
    enabled: bool
    best: float = math.inf
    best_epoch: int = -1
    level: int = 0  # LR level: bounds divided by lr_divisor ** level
    bad_epochs: int = 0  # epochs without improvement since the best or the last soft reset
    since_best: int = 0  # epochs without improvement since the best (patience)

    @property
    def lr_scale(self) -> float:
        return self.lr_divisor ** -self.level

    def update(self, loss: float, epoch: int) -> str:
        """Record an epoch's validation loss; return improved, continue, soft_reset or stop."""
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs, self.since_best = loss, epoch, 0, 0
            return IMPROVED
        self.bad_epochs += 1
        self.since_best += 1
        if not self.enabled:
            return CONTINUE
        if self.since_best >= self.patience:
            return STOP
        if self.bad_epochs >= self.soft_reset_after:
            if self.level + 1 >= self.lr_levels:
                return STOP
            self.level += 1
            self.bad_epochs = 0
            return SOFT_RESET
        return CONTINUE

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def build_early_stopping(phase: PhaseConfig) -> EarlyStopping:
    return EarlyStopping(phase.patience, phase.soft_reset_after, phase.lr_levels, phase.lr_divisor,
                         phase.min_delta, phase.early_stopping)
