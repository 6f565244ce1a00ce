"""The training sections: the paper preset holds the paper's values (docs/paper.md §Training), and
each section checks its own ranges however it is built."""

import pytest

from pipeline.config import ConfigError, build_config


def test_the_paper_preset_trains_as_the_paper():
    cfg = build_config({"preset": "paper"})
    t, p, f = cfg.train, cfg.pretrain, cfg.finetune
    assert (t.micro_batch_size, t.nproc_per_node, t.grad_accum_steps) == (48, 4, 4)  # 768 per step
    assert (t.grad_clip, t.weight_decay, t.betas) == (1.0, 0.001, [0.9, 0.999])
    assert (p.epochs, p.lr_max, p.lr_min, p.warmup_steps) == (21, 1e-4, 1e-6, 2000)
    assert (p.lambda_con, p.lambda_cap, p.dropout, p.early_stopping) == (2.0, 1.0, 0.15, False)
    assert (f.lr_max, f.lr_min, f.warmup_steps) == (1e-5, 1e-7, 0)
    assert (f.lambda_con, f.lambda_cap, f.dropout, f.early_stopping) == (1.0, 2.0, 0.1, True)
    assert (f.patience, f.soft_reset_after, f.lr_levels, f.lr_divisor) == (9, 3, 3, 100.0)


def test_sections_built_in_code_are_checked_too():
    import dataclasses

    t = build_config({"preset": "smoke"}).train
    with pytest.raises(ConfigError, match=r"^key 'train.micro_batch_size': value 0 is not allowed"):
        dataclasses.replace(t, micro_batch_size=0)


def test_built_from_the_yaml_sections():
    cfg = build_config({"preset": "paper", "train": {"micro_batch_size": 8}, "finetune": {"patience": 5}})
    assert cfg.train.micro_batch_size == 8 and cfg.finetune.patience == 5
    assert cfg.finetune.lr_max == 1e-5 and cfg.pretrain.lr_max == 1e-4  # each phase keeps its own values
    with pytest.raises(ConfigError, match=r"unknown key 'finetune\.patiense'"):
        build_config({"preset": "smoke", "finetune": {"patiense": 5}})
    with pytest.raises(ConfigError, match=r"train\.precision.*fp32, bf16"):
        build_config({"preset": "smoke", "train": {"precision": "fp16"}})


def test_the_joint_fine_tune_section_names_a_bad_value():
    for preset in ("demo", "paper", "smoke"):
        assert build_config({"preset": preset}).joint.sampling == "sqrt"  # CROME's balancing by default
    assert build_config({"preset": "smoke", "joint": {"sampling": "uniform"}}).joint.sampling == "uniform"
    with pytest.raises(ConfigError, match=r"^key 'joint.sampling': value 'sqrtt' is not allowed; allowed: "
                                          r"sqrt, proportional, uniform"):
        build_config({"preset": "smoke", "joint": {"sampling": "sqrtt"}})
    with pytest.raises(ConfigError, match=r"^key 'joint.epochs': value 0 is not allowed"):
        build_config({"preset": "smoke", "joint": {"epochs": 0}})
