"""Losses against a direct float64 re-computation of docs/paper.md's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import model_preset
from pipeline.model.coca import CoCa
from pipeline.model.losses import CoCaLoss, caption_loss, contrastive_loss, sigmoid_contrastive_loss


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


def test_coca_loss_is_the_objective_of_the_formulas(sequences):
    cfg = model_preset("smoke")
    torch.manual_seed(0)
    model = CoCa(cfg).double()
    seq = sequences(cfg, [2, 5, 8, 1])
    out = model(torch.randn(4, 3, 32, 32, dtype=torch.float64), seq[:, :-1])
    loss_fn = CoCaLoss(2.0, 1.0, cfg.tokens)
    loss = loss_fn(out, seq[:, 1:])
    assert set(loss) == {"loss", "contrastive_loss", "caption_share", "caption_tokens"}
    con = _reference_contrastive(out["image_embed"].detach(), out["text_embed"].detach(),
                                 out["logit_scale"].item())
    cap = _reference_caption(out["logits"].detach(), seq[:, 1:], {cfg.bos_id, cfg.pad_id, cfg.cls_id})
    assert math.isclose(loss["contrastive_loss"].item(), con, rel_tol=1e-9)
    assert math.isclose(loss["caption_share"].item(), cap, rel_tol=1e-9)  # one process: the whole mean
    # docs/paper.md §Losses and metrics: CoCa loss = lambda_con * L_con + lambda_cap * ln(perplexity)
    assert math.isclose(loss["loss"].item(), 2 * con + math.log(math.exp(cap)), rel_tol=1e-9)
    assert loss_fn.combine(con, cap) == 2 * con + cap
    # the targets that count: caption tokens and EOS (sum of caption lengths + one EOS each)
    assert int(loss["caption_tokens"]) == int(loss_fn.count_targets(seq[:, 1:])) == 2 + 5 + 8 + 1 + 4


def test_coca_loss_backward(smoke_cfg, sequences):
    model = CoCa(smoke_cfg)
    seq = sequences(smoke_cfg, [3, 4])
    loss = CoCaLoss(1.0, 2.0, smoke_cfg.tokens)(model(torch.randn(2, 3, 32, 32), seq[:, :-1]), seq[:, 1:])
    loss["loss"].backward()
    assert model.logit_scale.grad is not None and torch.isfinite(model.logit_scale.grad)
    assert not loss["contrastive_loss"].requires_grad and not loss["caption_share"].requires_grad


def test_the_global_token_count_weights_the_caption_term(smoke_cfg, sequences):
    """Given the micro-batch's global caption-token count (from the other processes too), a process
    backpropagates world_size x its share of the global mean."""
    model = CoCa(smoke_cfg).double()
    seq = sequences(smoke_cfg, [3, 4])
    out = model(torch.randn(2, 3, 32, 32, dtype=torch.float64), seq[:, :-1])
    alone = CoCaLoss(0.0, 1.0, smoke_cfg.tokens)(out, seq[:, 1:])
    tokens = int(alone["caption_tokens"])
    shared = CoCaLoss(0.0, 1.0, smoke_cfg.tokens)(out, seq[:, 1:], global_tokens=4 * tokens)
    assert math.isclose(shared["caption_share"].item(), alone["caption_share"].item() / 4, rel_tol=1e-12)


def test_distributed_loss_needs_initialised_process_group(smoke_cfg):
    with pytest.raises(ValueError, match="world_size"):
        CoCaLoss(1.0, 1.0, smoke_cfg.tokens, rank=0, world_size=2)


def test_sigmoid_loss_by_hand_on_two_pairs():
    """SigLIP on N = 2 with cos(x_i, y_j) = [[1, 0], [0.6, 0.8]]: -(1/2) sum_ij log sigmoid(z_ij (t c_ij + b))."""
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t, b = 10.0, -10.0
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # pairs (i, j): (0,0) match, logit 10*1-10 = 0; (0,1) non-match, logit -10; (1,0) non-match, logit
    # 10*0.6-10 = -4; (1,1) match, logit 10*0.8-10 = -2
    by_hand = -(math.log(sig(0.0)) + math.log(sig(10.0)) + math.log(sig(4.0)) + math.log(sig(-2.0))) / 2
    ours = sigmoid_contrastive_loss(x, y, torch.tensor(t, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert math.isclose(ours.item(), by_hand, rel_tol=1e-12)
    assert math.isclose(by_hand, (0.693147 + 0.0000454 + 0.018150 + 2.126928) / 2, abs_tol=1e-5)


def test_the_sigmoid_objective_uses_the_models_bias_and_siglip_init(sequences):
    cfg = model_preset("smoke")
    torch.manual_seed(0)
    model = CoCa(cfg, contrastive_loss="sigmoid").double()
    assert math.isclose(model.logit_scale.item(), math.log(10), rel_tol=1e-7) and model.logit_bias.item() == -10.0
    seq = sequences(cfg, [2, 5, 8, 1])
    out = model(torch.randn(4, 3, 32, 32, dtype=torch.float64), seq[:, :-1])
    assert out["logit_scale"].item() == pytest.approx(10.0) and out["logit_bias"].item() == -10.0
    loss = CoCaLoss(2.0, 1.0, cfg.tokens, contrastive="sigmoid")(out, seq[:, 1:])
    x, y = out["image_embed"].detach().tolist(), out["text_embed"].detach().tolist()
    scale, bias = out["logit_scale"].item(), out["logit_bias"].item()
    by_hand = 0.0
    for i in range(4):
        for j in range(4):
            z = 1 if i == j else -1
            logit = scale * sum(p * q for p, q in zip(x[i], y[j])) + bias
            by_hand -= math.log(1 / (1 + math.exp(-z * logit)))
    assert math.isclose(loss["contrastive_loss"].item(), by_hand / 4, rel_tol=1e-9)
    loss["loss"].backward()
    assert model.logit_bias.grad is not None and float(model.logit_bias.grad) != 0.0
    decay, no_decay = model.optimizer_param_groups(0.1)
    assert any(p is model.logit_bias for p in no_decay["params"])
    # the softmax objective on a softmax model is today's: no bias, CLIP's init
    plain = CoCa(cfg)
    assert plain.logit_bias is None and "logit_bias" not in dict(plain.named_parameters())
    assert math.isclose(plain.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-7)
    with pytest.raises(ValueError, match="logit_bias"):
        CoCaLoss(1.0, 1.0, cfg.tokens, contrastive="sigmoid")(plain(torch.randn(4, 3, 32, 32), seq[:, :-1]),
                                                               seq[:, 1:])
