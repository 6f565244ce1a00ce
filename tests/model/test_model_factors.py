"""One switch per GRR change: `model.vit.norm`, `model.vit.ffn`, `model.vit.pos` over the encoder's bundle."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from pipeline.checkpoint import load_model, save_model
from pipeline.config import ConfigError, build_config, model_preset
from pipeline.model.coca import CoCa
from pipeline.model.config import BUNDLES, VIT_FFNS, VIT_NORMS, VIT_POSITIONS, TextFactors, VitFactors
from pipeline.model.layers import GEGLU, GeluMLP, RMSNorm, SwiGLU
from pipeline.model.params import build_on_meta, count, parameter_breakdown

DESIGNS = list(itertools.product(VIT_NORMS, VIT_FFNS, VIT_POSITIONS))


@pytest.mark.parametrize("norm, ffn, pos", DESIGNS)
def test_each_design_builds_its_modules(norm, ffn, pos):
    cfg = model_preset("smoke", vit=VitFactors(norm, ffn, pos))
    vit = CoCa(cfg).visual
    block = vit.blocks[0]
    assert type(block.norm_attn) is (nn.LayerNorm if norm == "layernorm" else RMSNorm)
    assert type(block.ff) is {"gelu": GeluMLP, "geglu": GEGLU, "swiglu": SwiGLU}[ffn]
    learned = isinstance(getattr(vit, "pos_embed", None), nn.Parameter)
    assert learned == (pos == "learned")
    assert hasattr(vit, "rope_cos") == (pos == "rope2d")
    assert ("pos_embed" in dict(vit.named_buffers())) == (pos == "sincos")
    assert cfg.variant == next((n for n, b in BUNDLES.items() if b == (norm, ffn, pos)), f"vit-{norm}-{ffn}-{pos}")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_bundle_spelt_out_is_the_bundle_parameter_for_parameter(bundle):
    """`model.encoder` alone and the same three choices given explicitly (from the other bundle) build
    the same model, weight for weight: today's two models are unchanged by the switches."""
    other = next(name for name in BUNDLES if name != bundle)
    models = []
    for cfg in (model_preset("demo", encoder=bundle), model_preset("demo", encoder=other, vit=VitFactors(*BUNDLES[bundle]))):
        torch.manual_seed(0)
        models.append(CoCa(cfg).state_dict())
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_each_switch_alone_changes_only_its_part_of_the_count():
    """Paper size: RMSNorm alone drops the 24 LayerNorm biases of the ViT blocks (24 x 768); learned
    positions add 256 x 768; the bundles' difference stays 685,656."""
    counts = {design: parameter_breakdown(model_preset("paper", vit=VitFactors(*design)))["total"]
              for design in [BUNDLES["baseline"], BUNDLES["grr"], ("rmsnorm", "gelu", "sincos"),
                             ("layernorm", "gelu", "learned")]}
    baseline = counts[BUNDLES["baseline"]]
    assert counts[BUNDLES["grr"]] - baseline == 685_656
    assert counts[("rmsnorm", "gelu", "sincos")] - baseline == -24 * 768
    assert counts[("layernorm", "gelu", "learned")] - baseline == 256 * 768


def test_learned_positions_train_without_weight_decay():
    model = CoCa(model_preset("smoke", vit=VitFactors(pos="learned")))
    decay, no_decay = model.optimizer_param_groups(0.1)
    assert any(p is model.visual.pos_embed for p in no_decay["params"])
    assert count(model.visual.pos_embed) == model.cfg.num_patches * model.cfg.dim
    assert 0 < float(model.visual.pos_embed.detach().std()) < 0.03  # initialised like the embeddings


def test_factors_are_checked_and_travel_with_the_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match=r"^key 'model.vit.norm': value 'batchnorm' is not allowed; allowed: "
                                          r"layernorm, rmsnorm$"):
        build_config({"preset": "smoke", "model": {"vit": {"norm": "batchnorm"}}})
    cfg = build_config({"preset": "smoke", "model": {"encoder": "baseline", "vit": {"pos": "rope2d"}}}).model
    assert cfg.vit_design == ("layernorm", "gelu", "rope2d") and cfg.variant == "vit-layernorm-gelu-rope2d"
    path = save_model(tmp_path / "final.pt", CoCa(cfg).state_dict(), cfg)
    assert load_model(path).config == cfg


def test_swiglu_counts_exactly_as_geglu_at_paper_size():
    """SwiGLU has GEGLU's shapes (hidden geglu_ratio x dim, the same biases): a ViT or text decoders
    with SwiGLU have exactly the GEGLU model's parameters, and the breakdown counts them."""
    grr = parameter_breakdown(model_preset("paper"))
    vit_swiglu = parameter_breakdown(model_preset("paper", vit=VitFactors(ffn="swiglu")))
    text_swiglu = parameter_breakdown(model_preset("paper", text=TextFactors(ffn="swiglu")))
    assert vit_swiglu == grr and text_swiglu == grr
    model = build_on_meta(model_preset("paper", vit=VitFactors(ffn="swiglu"), text=TextFactors(ffn="swiglu")))
    ff = model.visual.blocks[0].ff
    assert type(ff) is SwiGLU and ff.hidden == 2073
    assert count(ff) == 2 * (768 * 2073 + 2073) + 2073 * 768 + 768 == 4_781_106
    text_ff = model.unimodal.blocks[0].ff
    assert type(text_ff) is SwiGLU and count(text_ff) == 3 * 768 * 2073  # no biases in the text decoders
    assert count(model) == grr["total"]


def test_text_gelu_uses_the_mlp_width_without_biases():
    """`model.text.ffn: gelu` swaps every text feed-forward (12 unimodal + 24 multimodal at paper size)
    for a 768 -> 3072 -> 768 GELU MLP without biases: the count changes by exactly that."""
    cfg = model_preset("paper", text=TextFactors(ffn="gelu"))
    model = build_on_meta(cfg)
    assert type(model.multimodal.layers[0].cross_block.ff) is GeluMLP
    per_ff = 2 * 768 * 3072 - 3 * 768 * 2073
    n_ff = cfg.unimodal_layers + 2 * cfg.multimodal_layers
    assert count(model) - parameter_breakdown(model_preset("paper"))["total"] == n_ff * per_ff


def test_text_ffn_default_is_todays_model_and_bad_values_are_named():
    torch.manual_seed(0)
    before = CoCa(model_preset("smoke")).state_dict()
    torch.manual_seed(0)
    explicit = CoCa(build_config({"preset": "smoke", "model": {"text": {"ffn": "geglu"}}}).model).state_dict()
    assert before.keys() == explicit.keys() and all(torch.equal(before[k], explicit[k]) for k in before)
    with pytest.raises(ConfigError, match=r"^key 'model.text.ffn': value 'relu' is not allowed; allowed: "
                                          r"geglu, swiglu, gelu$"):
        build_config({"preset": "smoke", "model": {"text": {"ffn": "relu"}}})
    with pytest.raises(ConfigError, match=r"^key 'model.vit.ffn': value 'reglu' is not allowed; allowed: "
                                          r"gelu, geglu, swiglu$"):
        build_config({"preset": "smoke", "model": {"vit": {"ffn": "reglu"}}})
