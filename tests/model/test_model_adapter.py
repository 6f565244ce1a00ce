"""CROME's gated cross-modal adapter (`finetune.mode: adapter`): its shapes, its zero-initialised
up-projection (a fresh adapter leaves the pre-trained model's outputs exactly as they were), its size at
paper scale, and its checkpoint, which records the adapter and loads back for evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.checkpoint import load_init, load_model, save_model
from pipeline.config import model_preset
from pipeline.model.coca import CoCa
from pipeline.model.config import FREEZABLE_PARTS
from pipeline.model.generate import generate
from pipeline.model.losses import CoCaLoss
from pipeline.model.params import build_on_meta, count, parameter_breakdown
from pipeline.train.optim import freeze_parts


def _pair(cfg):
    """A model and the same weights with a fresh adapter (what fine-tuning starts from)."""
    torch.manual_seed(0)
    plain = CoCa(cfg).eval()
    adapted = CoCa(cfg, adapter=True).eval()
    missing, unexpected = adapted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("adapter.") for k in missing) and missing
    return plain, adapted


def test_module_shapes_and_the_shared_zero_up_projection(smoke_cfg):
    adapter = CoCa(smoke_cfg, adapter=True).adapter
    d, m = smoke_cfg.dim, smoke_cfg.adapter_dim
    for down in (adapter.image_down, adapter.text_down):  # modality-specific, gated: two d -> m maps each
        assert down.gate.weight.shape == down.down.weight.shape == (m, d)
        assert down.gate.bias.shape == down.down.bias.shape == (m,)
    assert adapter.up.weight.shape == (d, m)  # one up-projection, shared by the two modalities
    assert not adapter.up.weight.any() and not adapter.up.bias.any()
    assert adapter.image_down.gate.weight.std() > 0  # the down-projections are initialised like the rest
    assert CoCa(smoke_cfg).adapter is None  # no adapter unless asked


def test_the_adapter_is_gate_times_down_then_the_shared_up_with_a_skip(smoke_cfg):
    adapter = CoCa(smoke_cfg, adapter=True).adapter.double()
    torch.nn.init.normal_(adapter.up.weight)
    image, text = torch.randn(2, 4, smoke_cfg.dim, dtype=torch.float64), torch.randn(2, 5, smoke_cfg.dim, dtype=torch.float64)
    new_image, new_text = adapter(image, text)
    for x, y, down in ((image, new_image, adapter.image_down), (text, new_text, adapter.text_down)):
        z = F.silu(x @ down.gate.weight.T + down.gate.bias) * (x @ down.down.weight.T + down.down.bias)
        assert torch.allclose(y, x + z @ adapter.up.weight.T + adapter.up.bias)


def test_a_fresh_adapter_changes_nothing(smoke_cfg, sequences):
    plain, adapted = _pair(smoke_cfg)
    images, seq = torch.randn(3, 3, 32, 32), sequences(smoke_cfg, [3, 6, 2])
    with torch.no_grad():
        a, b = plain(images, seq[:, :-1]), adapted(images, seq[:, :-1])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(generate(plain, images, method="beam", num_beams=2),
                       generate(adapted, images, method="beam", num_beams=2))


def test_adapter_fine_tuning_trains_the_adapter_alone(smoke_cfg, sequences):
    """All parts frozen but the adapter: a step moves the adapter, leaves every other weight as it was,
    and then changes the captions' logits (the adapter is on the multimodal decoder's path)."""
    _, model = _pair(smoke_cfg)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = freeze_parts(model, list(FREEZABLE_PARTS))
    assert summary["trainable_params"] == count(model.adapter) == parameter_breakdown(model)["adapter"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images, seq = torch.randn(4, 3, 32, 32), sequences(smoke_cfg, [3, 6, 2, 5])
    for _ in range(2):  # the first step moves only `up` (the down-projections see a zero gradient through it)
        optimizer.zero_grad()
        CoCaLoss(1.0, 2.0, smoke_cfg.tokens)(model(images, seq[:, :-1]), seq[:, 1:])["loss"].backward()
        optimizer.step()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != name.startswith("adapter."), name
    plain, _ = _pair(smoke_cfg)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(images, seq[:, :-1])["logits"], plain(images, seq[:, :-1])["logits"])


def test_paper_size_adapter_count_and_fraction():
    """m = 512 at d = 768: 4 maps d -> m with biases (two per modality) and one m -> d: about 2M
    trainable parameters, half a percent of the model."""
    cfg = model_preset("paper")
    assert cfg.adapter_dim == 512
    model = build_on_meta(cfg, adapter=True)
    expected = 4 * (768 * 512 + 512) + (512 * 768 + 768)
    assert count(model.adapter) == parameter_breakdown(model)["adapter"] == expected == 1_968_896
    total = parameter_breakdown(model)["total"]
    assert total == parameter_breakdown(cfg)["total"] + expected  # the rest of the count is unchanged
    fraction = expected / total
    assert 1_000_000 <= expected <= 5_000_000 and 0.004 < fraction < 0.006


def test_an_adapter_checkpoint_records_it_and_loads_back(tmp_path, smoke_cfg, sequences):
    plain, _ = _pair(smoke_cfg)
    pretrained = save_model(tmp_path / "pretrain.pt", plain.state_dict(), smoke_cfg, options=plain.options)
    model = CoCa(smoke_cfg, adapter=True)
    load_init(pretrained, model)  # a pre-trained checkpoint (no adapter) starts an adapter fine-tune
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert not model.adapter.up.weight.any()
    with torch.no_grad():
        torch.nn.init.normal_(model.adapter.up.weight, std=0.02)
    path = save_model(tmp_path / "final.pt", model.state_dict(), smoke_cfg, options=model.options)
    loaded = load_model(path)
    assert loaded.options == {"contrastive_loss": "softmax", "adapter": True}
    rebuilt = loaded.build().eval()
    assert rebuilt.adapter is not None and torch.equal(rebuilt.adapter.up.weight, model.adapter.up.weight)
    images, seq = torch.randn(2, 3, 32, 32), sequences(smoke_cfg, [3, 6])
    with torch.no_grad():
        assert torch.equal(rebuilt(images, seq[:, :-1])["logits"], model.eval()(images, seq[:, :-1])["logits"])
    with pytest.raises(Exception, match="do not fit this model"):  # an adapter checkpoint is no plain init
        load_init(path, CoCa(smoke_cfg))
