import pytest

from pipeline.config import build_config
from pipeline.train.early_stopping import CONTINUE, IMPROVED, SOFT_RESET, STOP, EarlyStopping, build_early_stopping

PAPER = build_config({"preset": "paper"}).finetune  # the paper's rule (docs/paper.md §Training)


def rule(**changes) -> EarlyStopping:
    """The paper's early-stopping rule with some of its settings changed."""
    settings = dict(patience=PAPER.patience, soft_reset_after=PAPER.soft_reset_after, lr_levels=PAPER.lr_levels,
                    lr_divisor=PAPER.lr_divisor, min_delta=PAPER.min_delta, enabled=PAPER.early_stopping)
    return EarlyStopping(**{**settings, **changes})


def run(stopper: EarlyStopping, losses: list[float]) -> list[str]:
    decisions = []
    for epoch, loss in enumerate(losses):
        decisions.append(stopper.update(loss, epoch))
        if decisions[-1] == STOP:
            break
    return decisions


def test_paper_soft_reset_sequence():
    """Paper: after 3 epochs without improvement reload the best state and divide the LR bounds by
    100; three LR levels in all, then stop."""
    s = build_early_stopping(PAPER)
    assert (s.patience, s.soft_reset_after, s.lr_levels, s.lr_divisor, s.enabled) == (9, 3, 3, 100.0, True)
    losses = [5.0, 4.0, 4.5, 4.6, 4.7,  # best 4.0 at epoch 1; 3 epochs without improvement -> reset
              3.9, 3.95, 3.8,  # level 2 improves
              3.9, 3.9, 3.9,  # 3 without improvement -> reset to epoch 7, level 3
              3.85, 3.81, 3.82,  # level 3: never below 3.8
              9.9]  # never reached
    decisions = run(s, losses)
    assert decisions == [IMPROVED, IMPROVED, CONTINUE, CONTINUE, SOFT_RESET,
                         IMPROVED, CONTINUE, IMPROVED,
                         CONTINUE, CONTINUE, SOFT_RESET,
                         CONTINUE, CONTINUE, STOP]
    assert (s.best, s.best_epoch, s.level) == (3.8, 7, 2)
    assert s.lr_scale == pytest.approx(1e-4)


def test_no_improvement_at_all_stops_after_nine_epochs():
    s = build_early_stopping(PAPER)
    decisions = run(s, [1.0] + [2.0] * 20)
    assert decisions == [IMPROVED] + [CONTINUE, CONTINUE, SOFT_RESET] * 2 + [CONTINUE, CONTINUE, STOP]
    assert len(decisions) - 1 == 9  # = patience


def test_patience_is_a_hard_cap():
    s = rule(patience=4, soft_reset_after=3, lr_levels=3)
    assert run(s, [1.0, 2.0, 2.0, 2.0, 2.0, 2.0]) == [IMPROVED, CONTINUE, CONTINUE, SOFT_RESET, STOP]


def test_min_delta_and_disabled():
    s = rule(min_delta=0.1)
    assert run(s, [1.0, 0.95, 0.85]) == [IMPROVED, CONTINUE, IMPROVED]
    off = rule(enabled=False)
    assert run(off, [1.0] + [2.0] * 30) == [IMPROVED] + [CONTINUE] * 30
    assert off.level == 0


def test_state_round_trip():
    s = rule()
    run(s, [1.0, 2.0, 2.0, 2.0])
    t = rule()
    t.load_state_dict(s.state_dict())
    assert t == s
    assert t.update(2.0, 4) == s.update(2.0, 4)
