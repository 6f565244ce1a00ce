"""Losses against a direct float64 re-computation of the SPEC formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import CoCa, CoCaLoss, ModelConfig, caption_loss, contrastive_loss


def _reference_contrastive(x: torch.Tensor, y: torch.Tensor, scale: float) -> float:
    """Paper Eq. 1: -(1/N)[sum_i log softmax_j(x_i.y_j/s)_i + sum_i log softmax_j(y_i.x_j/s)_i]."""
    x, y = x.tolist(), y.tolist()
    n = len(x)
    dot = lambda a, b: sum(p * q for p, q in zip(a, b))  # noqa: E731
    total = 0.0
    for i in range(n):
        row = [scale * dot(x[i], y[j]) for j in range(n)]
        total += row[i] - math.log(sum(math.exp(v) for v in row))
        col = [scale * dot(y[i], x[j]) for j in range(n)]
        total += col[i] - math.log(sum(math.exp(v) for v in col))
    return -total / n


def _reference_caption(logits: torch.Tensor, targets: torch.Tensor, ignore: set[int]) -> float:
    total, count = 0.0, 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            target = int(targets[b, t])
            if target in ignore:
                continue
            row = logits[b, t].tolist()
            total += math.log(sum(math.exp(v) for v in row)) - row[target]
            count += 1
    return total / count


def test_contrastive_loss_matches_equation_1():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(6, 5, dtype=torch.float64, generator=g), dim=-1)
    y = F.normalize(torch.randn(6, 5, dtype=torch.float64, generator=g), dim=-1)
    for scale in (1.0, 1 / 0.07, 100.0):
        ours = contrastive_loss(x, y, torch.tensor(scale, dtype=torch.float64))
        assert math.isclose(ours.item(), _reference_contrastive(x, y, scale), rel_tol=1e-10)
    # perfectly aligned pairs with a large scale: loss -> 0; it is a SUM of two directions
    assert contrastive_loss(x, x, 1000.0).item() < 1e-6
    assert math.isclose(contrastive_loss(x, y, 0.0).item(), 2 * math.log(6), rel_tol=1e-12)


def test_caption_loss_ignores_bos_pad_and_cls():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 11, dtype=torch.float64, generator=g)
    targets = torch.randint(0, 11, (3, 7), generator=g)
    targets[0, 0], targets[1, 3], targets[2, 6] = 9, 0, 10  # BOS, PAD, CLS
    ours = caption_loss(logits, targets, (9, 0, 10))
    assert math.isclose(ours.item(), _reference_caption(logits, targets, {9, 0, 10}), rel_tol=1e-9)


def test_coca_loss_dict_and_perplexity(sequences):
    cfg = ModelConfig.smoke()
    torch.manual_seed(0)
    model = CoCa(cfg).double()
    seq = sequences(cfg, [2, 5, 8, 1])
    out = model(torch.randn(4, 3, 32, 32, dtype=torch.float64), seq[:, :-1])
    loss = CoCaLoss.from_config(cfg, contrastive_weight=2.0, caption_weight=1.0)(out, seq[:, 1:])
    assert set(loss) == {"coca_loss", "contrastive_loss", "caption_loss", "perplexity"}
    con = _reference_contrastive(out["image_embed"].detach(), out["text_embed"].detach(),
                                 out["logit_scale"].item())
    cap = _reference_caption(out["logits"].detach(), seq[:, 1:], {cfg.bos_id, cfg.pad_id, cfg.cls_id})
    assert math.isclose(loss["contrastive_loss"].item(), con, rel_tol=1e-9)
    assert math.isclose(loss["caption_loss"].item(), cap, rel_tol=1e-9)
    assert math.isclose(loss["perplexity"].item(), math.exp(cap), rel_tol=1e-9)
    # SPEC: CoCa loss = lambda_con * L_con + lambda_cap * ln(perplexity)
    assert math.isclose(loss["coca_loss"].item(), 2 * con + math.log(loss["perplexity"].item()),
                        rel_tol=1e-9)
    # the targets that count: caption tokens and EOS (sum of caption lengths + one EOS each)
    counted = ~torch.isin(seq[:, 1:], torch.tensor([cfg.bos_id, cfg.pad_id, cfg.cls_id]))
    assert int(counted.sum()) == 2 + 5 + 8 + 1 + 4


def test_coca_loss_backward(smoke_cfg, sequences):
    model = CoCa(smoke_cfg)
    seq = sequences(smoke_cfg, [3, 4])
    loss = CoCaLoss.from_config(smoke_cfg, 1.0, 2.0)(model(torch.randn(2, 3, 32, 32), seq[:, :-1]),
                                                     seq[:, 1:])
    loss["coca_loss"].backward()
    assert model.logit_scale.grad is not None and torch.isfinite(model.logit_scale.grad)
    assert loss["perplexity"].requires_grad is False


def test_distributed_loss_needs_initialised_process_group():
    with pytest.raises(ValueError, match="world_size"):
        CoCaLoss(1.0, 1.0, pad_id=0, bos_id=1, cls_id=2, rank=0, world_size=2)
