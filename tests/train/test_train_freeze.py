"""Frozen parts while fine-tuning (Prismatic's frozen ViT): `finetune.freeze` names parts of the model;
they stay bit for bit as they were through optimiser steps, the rest trains, and the optimiser holds
only the trainable tensors."""

from __future__ import annotations

import re

import pytest
import torch
from support.captions import make_sequences

from pipeline.config import ConfigError, build_config, model_preset
from pipeline.model.coca import CoCa
from pipeline.model.config import FREEZABLE_PARTS
from pipeline.model.losses import CoCaLoss
from pipeline.model.params import count
from pipeline.train.optim import build_optimizer, freeze_parts


def _steps(model: CoCa, optimizer: torch.optim.Optimizer, n: int = 3) -> None:
    cfg = model.cfg
    loss_fn = CoCaLoss(1.0, 2.0, cfg.tokens)
    g = torch.Generator().manual_seed(0)
    for step in range(n):
        seq = make_sequences(cfg, [3, 5, 2, 6], seed=step)
        images = torch.randn(4, 3, cfg.image_size, cfg.image_size, generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images, seq[:, :-1]), seq[:, 1:])["loss"].backward()
        optimizer.step()


@pytest.mark.parametrize("frozen", [["vit"], ["vit", "poolers"], ["unimodal", "temperature"]])
def test_frozen_parts_do_not_move_and_the_rest_trains(frozen):
    torch.manual_seed(0)
    model = CoCa(model_preset("smoke"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen_ids = {id(p) for part in frozen for p in model.part_parameters(part)}
    summary = freeze_parts(model, frozen)

    tcfg = build_config({"preset": "smoke"}).train
    optimizer = build_optimizer(model, tcfg, 1e-3, torch.device("cpu"))
    assert optimizer.defaults["fused"]  # the step benchmarks/model_step.py times, several times faster on the CPU
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(held) == len({id(p) for p in held})
    assert {id(p) for p in held} == {id(p) for p in model.parameters() if p.requires_grad}
    assert not frozen_ids & {id(p) for p in held}

    _steps(model, optimizer)
    for name, param in model.named_parameters():
        if id(param) in frozen_ids:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(param, before[name]), f"trainable {name} did not change"
    frozen_count = sum(p.numel() for part in frozen for p in model.part_parameters(part))
    assert summary["total_params"] == sum(p.numel() for p in model.parameters())
    assert summary["trainable_params"] == summary["total_params"] - frozen_count == count(model)
    assert summary["trainable_fraction"] == pytest.approx(summary["trainable_params"] / summary["total_params"])


def test_the_parts_cover_the_model_once():
    model = CoCa(model_preset("smoke"))
    ids = [id(p) for part in FREEZABLE_PARTS for p in model.part_parameters(part)]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_freeze_defaults_to_nothing_and_bad_lists_are_named():
    f = build_config({"preset": "smoke"}).finetune
    assert (f.freeze, f.mode, f.frozen_parts) == ([], "full", [])
    assert build_config({"preset": "smoke"}).pretrain.frozen_parts == []
    assert build_config({"preset": "smoke", "finetune": {"freeze": ["vit", "poolers"]}}).finetune.frozen_parts == \
        ["vit", "poolers"]
    allowed = "a list of parts from vit, poolers, unimodal, multimodal, temperature"
    for value, allowed in ((["vit", "decoder"], allowed), (["vit", "vit"], "a list that names each part once"),
                           (list(FREEZABLE_PARTS), "a list that leaves at least one part to train")):
        with pytest.raises(ConfigError, match="^" + re.escape(f"key 'finetune.freeze': value {value!r} is not "
                                                               f"allowed; allowed: {allowed}") + "$"):
            build_config({"preset": "smoke", "finetune": {"freeze": value}})
    with pytest.raises(ConfigError, match=r"^key 'finetune.freeze': expected a list, got 'vit'$"):
        build_config({"preset": "smoke", "finetune": {"freeze": "vit"}})
    with pytest.raises(ConfigError, match=r"^key 'finetune.mode': value 'lora' is not allowed; allowed: full, adapter$"):
        build_config({"preset": "smoke", "finetune": {"mode": "lora"}})
