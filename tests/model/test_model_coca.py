"""CoCa behaviour: shapes, causality, padding independence, the two ViTs, init, optimiser groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import model_preset
from pipeline.model.coca import CoCa
from pipeline.model.losses import contrastive_loss
from pipeline.model.config import ModelConfig
from pipeline.model.layers import GEGLU, GeluMLP, RMSNorm


def _model(cfg: ModelConfig, seed: int = 0) -> CoCa:
    torch.manual_seed(seed)
    return CoCa(cfg).double().eval()


def _images(cfg: ModelConfig, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("encoder", ["baseline", "grr"])
def test_forward_outputs(encoder, sequences):
    cfg = model_preset("smoke", encoder=encoder)
    model = _model(cfg)
    text = sequences(cfg, [3, 8, 1])[:, :-1]
    out = model(_images(cfg, 3), text)
    assert out["image_embed"].shape == out["text_embed"].shape == (3, cfg.dim)
    assert torch.allclose(out["image_embed"].norm(dim=-1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(out["text_embed"].norm(dim=-1), torch.ones(3, dtype=torch.float64))
    assert out["logits"].shape == (3, cfg.context_length, cfg.vocab_size)
    assert math.isclose(out["logit_scale"].item(), 1 / 0.07, rel_tol=1e-6)
    assert torch.allclose(model.encode_image(_images(cfg, 3)), out["image_embed"])
    assert torch.allclose(model.encode_text(text), out["text_embed"])


def test_logit_scale_is_clamped_at_100(smoke_cfg, sequences):
    model = _model(smoke_cfg)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    out = model(_images(smoke_cfg, 1), sequences(smoke_cfg, [2])[:, :-1])
    assert math.isclose(out["logit_scale"].item(), 100.0, rel_tol=1e-9)


@pytest.mark.parametrize("encoder", ["baseline", "grr"])
def test_changing_token_t_never_changes_earlier_positions(encoder, sequences):
    cfg = model_preset("smoke", encoder=encoder)
    model = _model(cfg)
    images = _images(cfg, 2)
    text = sequences(cfg, [4, 7])[:, :-1]
    out = model(images, text)
    _, hidden, _ = model.text_features(text)
    for t in range(1, cfg.context_length):
        for new_token in (5, cfg.pad_id, cfg.eos_id):
            changed = text.clone()
            changed[:, t] = new_token
            if torch.equal(changed, text):
                continue
            _, hidden2, _ = model.text_features(changed)
            logits2 = model(images, changed)["logits"]
            # unimodal decoder outputs and multimodal decoder logits before t are untouched
            assert torch.allclose(hidden2[:, :t], hidden[:, :t], atol=1e-12), (t, new_token)
            assert torch.allclose(logits2[:, :t], out["logits"][:, :t], atol=1e-12), (t, new_token)
            assert not torch.allclose(logits2[:, t:], out["logits"][:, t:])


def test_text_embedding_is_independent_of_padding(smoke_cfg, sequences):
    model = _model(smoke_cfg)
    short = sequences(smoke_cfg, [5], length=9, seed=3)
    long = sequences(smoke_cfg, [5], length=17, seed=3)
    assert torch.equal(short[0, :7], long[0, :7])  # same caption ...
    assert (long[0, :-1] == smoke_cfg.pad_id).sum() > (short[0, :-1] == smoke_cfg.pad_id).sum()
    emb_short = model.encode_text(short[:, :-1])
    emb_long = model.encode_text(long[:, :-1])
    assert torch.allclose(emb_short, emb_long, atol=1e-12)
    # the same caption with no padding at all
    none = torch.cat([short[:, :7], torch.tensor([[smoke_cfg.cls_id]])], dim=1)
    assert torch.allclose(model.encode_text(none), emb_short, atol=1e-12)
    # and in a batch next to a caption of another length
    batch = torch.cat([long, sequences(smoke_cfg, [12], length=17, seed=4)])
    assert torch.allclose(model.encode_text(batch[:, :-1])[:1], emb_long, atol=1e-12)
    # the caption logits do not depend on the padding either
    images = _images(smoke_cfg, 1)
    logits_short = model(images, short[:, :-1])["logits"][:, :7]
    logits_long = model(images, long[:, :-1])["logits"][:, :7]
    assert torch.allclose(logits_short, logits_long, atol=1e-12)


def test_text_embedding_reads_the_last_position(smoke_cfg, sequences):
    model = _model(smoke_cfg)
    text = sequences(smoke_cfg, [5])[:, :-1]
    changed = text.clone()
    changed[0, 3] = 9  # a caption token: CLS sees it
    assert not torch.allclose(model.encode_text(changed), model.encode_text(text))


def _structure(model: nn.Module) -> dict[str, tuple]:
    return {name: (type(m).__name__, tuple((n, tuple(p.shape)) for n, p in m.named_parameters(recurse=False)),
                   tuple(n for n, _ in m.named_buffers(recurse=False)))
            for name, m in model.named_modules()}


def test_baseline_and_grr_differ_only_in_vit_norm_feed_forward_and_positions():
    base = CoCa(model_preset("smoke", encoder="baseline"))
    grr = CoCa(model_preset("smoke", encoder="grr"))
    sb, sg = _structure(base), _structure(grr)
    assert sb.keys() == sg.keys()
    differing = {name for name in sb if sb[name] != sg[name]}
    vit_blocks = range(len(base.visual.blocks))
    expected = {"visual"}  # buffers: pos_embed vs rope_cos / rope_sin
    for i in vit_blocks:
        expected |= {f"visual.blocks.{i}.{part}" for part in
                     ("norm_attn", "norm_ff", "ff", "ff.fc_in", "ff.fc_out")}
    assert differing == expected
    for i in vit_blocks:
        bb, gb = base.visual.blocks[i], grr.visual.blocks[i]
        assert isinstance(bb.norm_attn, nn.LayerNorm) and isinstance(gb.norm_attn, RMSNorm)
        assert isinstance(bb.norm_ff, nn.LayerNorm) and isinstance(gb.norm_ff, RMSNorm)
        assert isinstance(bb.ff, GeluMLP) and isinstance(gb.ff, GEGLU)
    # positions: a fixed buffer in the baseline (not trainable, not in the checkpoint), RoPE in GRR
    assert dict(base.visual.named_buffers(recurse=False)).keys() == {"pos_embed"}
    assert dict(grr.visual.named_buffers(recurse=False)).keys() == {"rope_cos", "rope_sin"}
    assert not any("pos" in n for n, _ in base.named_parameters())
    assert "visual.pos_embed" not in base.state_dict()
    # the text decoders use RMSNorm, GEGLU and no LayerNorm / GELU MLP in both variants
    for model in (base, grr):
        text_modules = list(model.unimodal.modules()) + list(model.multimodal.modules())
        assert not any(isinstance(m, (nn.LayerNorm, GeluMLP)) for m in text_modules)
        assert sum(isinstance(m, GEGLU) for m in text_modules) == 2 + 2 * 2 and any(
            isinstance(m, RMSNorm) for m in text_modules)


def _shuffle_patches(images: torch.Tensor, patch: int, order: torch.Tensor) -> torch.Tensor:
    """Move whole patches to other grid cells (the set of patch contents stays the same)."""
    B, C, H, W = images.shape
    g = H // patch
    blocks = images.view(B, C, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C, patch, patch)
    blocks = blocks[:, order]
    return blocks.view(B, g, g, C, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def _forget_positions(model: CoCa) -> None:
    """Make the ViT position-blind: no absolute positions added (Baseline), RoPE as the identity (GRR)."""
    if model.cfg.encoder == "baseline":
        model.visual.pos_embed.zero_()
    else:
        model.visual.rope_cos.fill_(1.0)
        model.visual.rope_sin.zero_()


@pytest.mark.parametrize("encoder", ["baseline", "grr"])
def test_vit_positions_matter(encoder):
    """Moving whole patches to other places changes the ViT's output beyond moving its tokens: the ViT
    knows where each patch is. A position-blind ViT only moves its tokens (the control)."""
    cfg = model_preset("smoke", encoder=encoder)
    model = _model(cfg)
    with torch.no_grad():  # weights as after training: at init (std 0.02) attention is nearly uniform,
        for param in model.visual.parameters():  # and a uniform average ignores RoPE's rotations
            if param.ndim >= 2:
                param.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(param.numel()))
    images = _images(cfg, 1)
    order = torch.randperm(cfg.num_patches, generator=torch.Generator().manual_seed(0))
    shuffled = _shuffle_patches(images, cfg.patch_size, order)
    with torch.no_grad():
        moved = model.visual(images)[:, order]
        difference = (model.visual(shuffled) - moved).abs().max().item()
        assert difference > 1e-2 * moved.abs().max().item(), difference
        _forget_positions(model)
        moved = model.visual(images)[:, order]
        assert torch.allclose(model.visual(shuffled), moved, rtol=0, atol=1e-9)


def test_optimizer_param_groups_partition_parameters(smoke_cfg):
    model = CoCa(smoke_cfg)
    decay, no_decay = model.optimizer_param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert "unimodal.token_embedding.weight" not in decayed
    assert "logit_scale" not in decayed
    assert not any(n.endswith(("bias", "query")) or "norm" in n for n in decayed)
    assert "multimodal.head.weight" in decayed and "visual.patch_embed.weight" in decayed


def test_initialisation(smoke_cfg):
    torch.manual_seed(0)
    model = CoCa(model_preset("smoke", dim=64, heads=4, vit_layers=3))
    std = 0.02
    assert abs(float(model.unimodal.token_embedding.weight.detach().std()) - std) < 0.003
    assert float(model.unimodal.token_embedding.weight.detach().abs().max()) <= 2 * std + 1e-6
    vit_out = model.visual.blocks[0].attn.out_proj.weight
    assert abs(float(vit_out.detach().std()) - std / math.sqrt(2 * 3)) < 0.002
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules()
               if isinstance(m, nn.Linear) and m.bias is not None)


def test_dropout_only_in_training_mode(sequences):
    cfg = model_preset("smoke")
    torch.manual_seed(0)
    model = CoCa(cfg, dropout=0.3)
    images, text = torch.randn(2, 3, 32, 32), sequences(cfg, [3, 5])[:, :-1]
    model.eval()
    assert torch.equal(model(images, text)["logits"], model(images, text)["logits"])
    model.train()
    assert not torch.equal(model(images, text)["logits"], model(images, text)["logits"])


def test_backward_reaches_every_parameter(smoke_cfg, sequences):
    model = CoCa(smoke_cfg)
    out = model(torch.randn(2, 3, 32, 32), sequences(smoke_cfg, [3, 5])[:, :-1])
    (out["logits"].square().mean() + (out["image_embed"] * out["text_embed"]).sum()
     * out["logit_scale"]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("change, message", [
    (dict(encoder="vit"), "key 'model.encoder': value 'vit'"),
    (dict(image_size=30), "key 'model.image_size': value 30 is not allowed; allowed: a multiple of model.patch_size"),
    (dict(dim=30, heads=4), "key 'model.dim'"),
    (dict(context_length=3), "key 'model.context_length': value 3 is not allowed; allowed: an integer >= 4"),
    (dict(vocab_size=5), "key 'model.vocab_size'"),
    (dict(heads=0), "key 'model.heads'"),
    (dict(geglu_ratio=0.0), "key 'model.geglu_ratio'"),
])
def test_config_validation_names_the_key_the_value_and_what_is_allowed(change, message):
    with pytest.raises(ValueError) as error:
        model_preset("smoke", **change)
    assert message in str(error.value)


def test_presets_and_the_token_layout():
    paper = model_preset("paper")
    assert (paper.bos_id, paper.cls_id, paper.pad_id, paper.eos_id) == (32100, 32101, 0, 1)
    assert paper.num_patches == 256 and paper.geglu_hidden == 2073 and paper.mlp_hidden == 3072
    demo = model_preset("demo", encoder="baseline")
    assert demo.encoder == "baseline" and demo.bos_id == demo.vocab_size - 2
    # BOS and CLS follow the vocabulary size: a replaced size moves them
    bigger = paper.replace(vocab_size=40000)
    assert (bigger.bos_id, bigger.cls_id, bigger.tokens.non_targets) == (39998, 39999, (39998, 0, 39999))
    with pytest.raises(ValueError, match="preset"):
        model_preset("huge")


def test_encode_text_rejects_input_that_does_not_end_with_cls(smoke_cfg, sequences):
    model = CoCa(smoke_cfg).eval()
    seq = sequences(smoke_cfg, [3, 5])
    assert model.encode_text(seq[:, :-1]).shape == (2, smoke_cfg.dim)
    with pytest.raises(ValueError, match=r"last token is CLS .*rows \[0, 1\]"):
        model.encode_text(seq[:, 1:])  # the targets, not the inputs: they end with PAD


def test_logit_scale_clamped_in_place_keeps_its_gradient(smoke_cfg, sequences):
    """Above the cap the clamp inside forward passes no gradient; clamping the parameter itself
    (what the trainer does after each step) brings the gradient back."""
    model = CoCa(smoke_cfg)
    images, text = torch.randn(4, 3, 32, 32), sequences(smoke_cfg, [3, 5, 2, 4])[:, :-1]

    def grad_of_scale() -> float:
        model.zero_grad()
        out = model(images, text)
        contrastive_loss(out["image_embed"], out["text_embed"], out["logit_scale"]).backward()
        return float(model.logit_scale.grad)

    with torch.no_grad():
        model.logit_scale.fill_(math.log(100) + 0.5)
    assert grad_of_scale() == 0.0
    model.clamp_logit_scale_()
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(100))
    assert grad_of_scale() != 0.0
