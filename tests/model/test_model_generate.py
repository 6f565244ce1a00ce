"""Caption generation: the key-value cached path equals the uncached reference token for token."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import model_preset
from pipeline.model.coca import CoCa
from pipeline.model.config import ModelConfig
from pipeline.model.generate import beam_search, generate, greedy_search


def _model(encoder: str = "grr", eos_bias: float = 0.0) -> tuple[ModelConfig, CoCa]:
    cfg = model_preset("smoke", encoder=encoder, context_length=16)
    torch.manual_seed(0)
    model = CoCa(cfg).double()
    if eos_bias:
        # A freshly initialised model has near-uniform logits and never picks EOS: sharpen them and
        # favour EOS so that captions (and beams) end at different steps.
        with torch.no_grad():
            model.multimodal.head.weight.mul_(30.0)
            model.multimodal.head.bias[cfg.eos_id] = eos_bias
    return cfg, model


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("encoder", ["baseline", "grr"])
@pytest.mark.parametrize("eos_bias", [0.0, 3.0])
def test_greedy_cached_equals_uncached(encoder, eos_bias):
    cfg, model = _model(encoder, eos_bias)
    cached = greedy_search(model, _images(), use_cache=True)
    uncached = greedy_search(model, _images(), use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] <= cfg.context_length - 1


@pytest.mark.parametrize("encoder", ["baseline", "grr"])
@pytest.mark.parametrize("eos_bias", [0.0, 3.0])
def test_beam_cached_equals_uncached(encoder, eos_bias):
    _, model = _model(encoder, eos_bias)
    cached = beam_search(model, _images(), num_beams=3, use_cache=True)
    uncached = beam_search(model, _images(), num_beams=3, use_cache=False)
    assert torch.equal(cached, uncached)


def test_greedy_matches_argmax_of_full_forward():
    cfg, model = _model(eos_bias=3.0)
    images = _images(2)
    tokens = greedy_search(model, images)
    model.eval()
    for row in range(2):
        prefix = torch.tensor([[cfg.bos_id]])
        for token in tokens[row]:
            if token == cfg.pad_id:
                break
            with torch.no_grad():
                _, hidden, (rope, mask, causal) = model.text_features(prefix)
                logits = model.multimodal(hidden, model.image_features(images[row:row + 1])[1],
                                          rope=rope, attn_mask=mask, is_causal=causal)[0, -1]
            logits[[cfg.bos_id, cfg.pad_id, cfg.cls_id]] = float("-inf")
            assert int(logits.argmax()) == int(token)
            prefix = torch.cat([prefix, token.view(1, 1)], dim=1)


def test_outputs_stop_at_eos_and_never_contain_special_tokens():
    cfg, model = _model(eos_bias=3.0)
    outputs = (greedy_search(model, _images()), beam_search(model, _images(), num_beams=3))
    ended = torch.cat([tokens.eq(cfg.eos_id).any(dim=1) for tokens in outputs])
    assert ended.any() and not ended.all()  # the checks below see both kinds of rows
    for tokens in outputs:
        assert not torch.isin(tokens, torch.tensor([cfg.bos_id, cfg.cls_id])).any()
        for row in tokens.tolist():
            if cfg.eos_id in row:
                end = row.index(cfg.eos_id)
                assert all(t == cfg.pad_id for t in row[end + 1:])
                assert cfg.pad_id not in row[:end]
            else:
                assert cfg.pad_id not in row


def test_max_length_and_one_beam_is_greedy():
    _, model = _model()
    assert greedy_search(model, _images(), max_length=5).shape == (3, 4)
    assert torch.equal(beam_search(model, _images(), num_beams=1), greedy_search(model, _images()))
    assert torch.equal(generate(model, _images(), method="beam", num_beams=1),
                       generate(model, _images(), method="greedy"))
    with pytest.raises(ValueError, match="method"):
        generate(model, _images(), method="sample")


def test_generation_restores_training_mode():
    _, model = _model()
    model.train()
    greedy_search(model, _images(1), max_length=3)
    assert model.training
