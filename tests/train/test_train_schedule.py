import math

import pytest
import torch

from pipeline.config import build_config
from pipeline.train.schedule import LRSchedule, build_schedule


def lrs(schedule: LRSchedule, steps_per_epoch: int, epochs: int) -> list[float]:
    return [schedule.lr(e * steps_per_epoch + i, i, steps_per_epoch)
            for e in range(epochs) for i in range(steps_per_epoch)]


def test_worked_example():
    """lr_max 1, lr_min 0, warm-up 2 steps, 4 steps per epoch (docs/paper.md §Training: linear warm-up, then one
    cosine cycle per epoch; the first cycle runs from the end of warm-up to the end of epoch 1)."""
    c = (1 + math.cos(math.pi / 4)) / 2
    expected = [0.5, 1.0, 1.0, 0.5,  # warm-up, then the rest of epoch 1
                1.0, c, 0.5, 1 - c,  # epoch 2: a full cycle
                1.0, c, 0.5, 1 - c]  # epoch 3: restart
    assert lrs(LRSchedule(1.0, 0.0, 2), 4, 3) == pytest.approx(expected, abs=1e-12)


def test_without_warmup_equals_torch_cosine_annealing_warm_restarts():
    n, epochs = 7, 3
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1e-5)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=n, eta_min=1e-7)
    expected = []
    for _ in range(n * epochs):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert lrs(LRSchedule(1e-5, 1e-7, 0), n, epochs) == pytest.approx(expected, rel=1e-9)


def test_warmup_then_restarts_with_every_epoch():
    n, w, hi, lo = 10, 4, 1e-4, 1e-6
    got = lrs(LRSchedule(hi, lo, w), n, 3)
    assert got[:w] == pytest.approx([hi * (t + 1) / w for t in range(w)])  # linear warm-up to lr_max
    assert got[w] == pytest.approx(hi)  # continuous at the end of warm-up
    assert all(a > b for a, b in zip(got[w:n], got[w + 1:n]))  # annealing within the epoch
    for e in (1, 2):  # each later epoch: a full cycle from lr_max
        cycle = got[e * n:(e + 1) * n]
        assert cycle == pytest.approx([lo + (hi - lo) * (1 + math.cos(math.pi * i / n)) / 2 for i in range(n)])
    assert min(got) > lo


def test_warmup_longer_than_an_epoch():
    n, w = 4, 6
    got = lrs(LRSchedule(1.0, 0.0, w), n, 3)
    assert got[:6] == pytest.approx([(t + 1) / 6 for t in range(6)])
    assert got[6:8] == pytest.approx([1.0, 0.5])  # epoch 2's remaining two steps form the cycle
    assert got[8] == pytest.approx(1.0)  # epoch 3 restarts


def test_soft_reset_divides_both_bounds():
    s = LRSchedule(1e-5, 1e-7, 0)
    before = lrs(s, 5, 1)
    s.scale = 1e-2
    assert lrs(s, 5, 1) == pytest.approx([x / 100 for x in before], rel=1e-9)
    assert s.lr(4, 4, 5) > 1e-9


def test_paper_defaults():
    s = build_schedule(build_config({"preset": "paper"}).pretrain)
    assert (s.lr_max, s.lr_min, s.warmup_steps) == (1e-4, 1e-6, 2000)
    assert s.lr(0, 0, 14000) == pytest.approx(1e-4 / 2000)
    assert s.lr(1999, 1999, 14000) == pytest.approx(1e-4)
