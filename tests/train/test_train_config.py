import pytest

from pipeline.config import ConfigError, build_config
from pipeline.train.config import FinetuneConfig, PretrainConfig, TrainConfig


def test_defaults_are_the_papers():
    t = TrainConfig()
    assert (t.micro_batch_size, t.nproc_per_node, t.grad_accum_steps) == (48, 4, 4)
    assert (t.grad_clip, t.weight_decay, t.betas) == (1.0, 0.001, [0.9, 0.999])
    p, f = PretrainConfig(), FinetuneConfig()
    assert (p.epochs, p.lr_max, p.lr_min, p.warmup_steps) == (21, 1e-4, 1e-6, 2000)
    assert (p.lambda_con, p.lambda_cap, p.dropout, p.early_stopping) == (2.0, 1.0, 0.15, False)
    assert (f.lr_max, f.lr_min, f.warmup_steps) == (1e-5, 1e-7, 0)
    assert (f.lambda_con, f.lambda_cap, f.dropout, f.early_stopping) == (1.0, 2.0, 0.1, True)
    assert (f.patience, f.soft_reset_after, f.lr_levels, f.lr_divisor) == (9, 3, 3, 100.0)


def test_errors_name_the_key_the_value_and_what_is_allowed():
    with pytest.raises(ValueError, match=r"train\.micro_batch_size = 0 .*integer >= 1"):
        TrainConfig(micro_batch_size=0)
    with pytest.raises(ValueError, match=r"^finetune\.lr_min = 0.1 .*lr_max"):
        FinetuneConfig(lr_min=0.1)
    with pytest.raises(ValueError, match=r"^pretrain\.dropout = 1.5"):
        PretrainConfig(dropout=1.5)
    with pytest.raises(ValueError, match=r"train\.betas"):
        TrainConfig(betas=[0.9])


def test_built_from_the_yaml_sections():
    cfg = build_config({"preset": "paper", "train": {"micro_batch_size": 8}, "finetune": {"patience": 5}})
    assert cfg.train.micro_batch_size == 8 and cfg.finetune.patience == 5
    assert cfg.finetune.lr_max == 1e-5 and cfg.pretrain.lr_max == 1e-4  # each phase keeps its own defaults
    with pytest.raises(ConfigError, match=r"unknown key 'finetune\.patiense'"):
        build_config({"preset": "smoke", "finetune": {"patiense": 5}})
    with pytest.raises(ConfigError, match=r"train\.precision.*fp32, bf16"):
        build_config({"preset": "smoke", "train": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match=r"pretrain\.dropout = 1\.5"):
        build_config({"preset": "smoke", "pretrain": {"dropout": 1.5}})
