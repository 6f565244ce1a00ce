"""Caption generation: the key-value cached path equals the uncached reference token for token;
sampling is reproducible from its seed; the length and repetition rules hold for every method."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import model_preset
from pipeline.model.coca import CoCa
from pipeline.model.config import ModelConfig
from pipeline.model.generate import beam_search, generate, greedy_search, sample


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
        generate(model, _images(), method="nucleus")


def test_generation_restores_training_mode():
    _, model = _model()
    model.train()
    greedy_search(model, _images(1), max_length=3)
    assert model.training


def test_sampling_is_reproducible_from_its_seed_and_varies_with_it():
    _, model = _model(eos_bias=3.0)
    images = _images(4)
    first = sample(model, images, temperature=1.5, seed=7)
    assert torch.equal(first, sample(model, images, temperature=1.5, seed=7))
    assert torch.equal(first, sample(model, images, temperature=1.5, seed=7, use_cache=False))
    assert not torch.equal(first, sample(model, images, temperature=1.5, seed=8))
    assert torch.equal(first, generate(model, images, method="sample", temperature=1.5, seed=7))


def test_top_k_of_one_and_a_tiny_top_p_are_greedy():
    _, model = _model(eos_bias=3.0)
    greedy = greedy_search(model, _images())
    assert torch.equal(sample(model, _images(), top_k=1, seed=3), greedy)
    assert torch.equal(sample(model, _images(), top_p=1e-6, seed=3), greedy)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_min_and_max_length(method):
    cfg, model = _model(eos_bias=6.0)  # EOS is likely from the first step on
    plain = generate(model, _images(), method=method, num_beams=3, seed=1)
    first_eos = [row.index(cfg.eos_id) for row in plain.tolist() if cfg.eos_id in row]
    assert first_eos and min(first_eos) < 4  # without the rule, some caption ends before 4 tokens
    longer = generate(model, _images(), method=method, num_beams=3, seed=1, min_length=4)
    assert not longer[:, :4].eq(cfg.eos_id).any() and not longer[:, :4].eq(cfg.pad_id).any()
    capped = generate(model, _images(), method=method, num_beams=3, seed=1, min_length=4, max_length=7)
    assert capped.shape[1] <= 6  # max_length counts BOS: at most 6 generated tokens
    never = generate(model, _images(), method=method, num_beams=3, seed=1, min_length=20, max_length=7)
    assert never.shape[1] == 6 and not never.eq(cfg.eos_id).any()  # min_length beyond the cap: no EOS at all


def test_repetition_penalty_on_a_hand_made_model():
    """Logits are the head's bias alone: token a at 5, token b at 4, EOS far below. Greedy repeats a;
    with penalty 2, a (5 / 2 = 2.5) gives way to b once, then a wins again (b is 2 after its turn)."""
    cfg, model = _model()
    a, b = cfg.tokens.first_caption_id, cfg.tokens.first_caption_id + 1
    with torch.no_grad():
        model.multimodal.head.weight.zero_()
        model.multimodal.head.bias.zero_()
        model.multimodal.head.bias[a], model.multimodal.head.bias[b] = 5.0, 4.0
        model.multimodal.head.bias[cfg.eos_id] = -50.0
    plain = greedy_search(model, _images(1), max_length=6)
    assert plain.tolist() == [[a] * 5]
    penalised = greedy_search(model, _images(1), max_length=6, repetition_penalty=2.0)
    assert penalised.tolist() == [[a, b, a, a, a]]
    assert beam_search(model, _images(1), num_beams=2, max_length=6, repetition_penalty=2.0).tolist() == [[a, b, a, a, a]]
    with pytest.raises(ValueError, match="repetition_penalty"):
        greedy_search(model, _images(1), repetition_penalty=0.5)
