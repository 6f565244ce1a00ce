"""The one configuration: presets, overrides, and errors that name the key."""

import pytest
import yaml

from pipeline.config import ConfigError, build_config, load_config, preset_names


def test_presets_are_demo_paper_smoke_and_params_yaml_defaults_to_demo():
    assert preset_names() == ["demo", "paper", "smoke"]
    cfg = load_config("params.yaml")
    assert cfg.preset == "demo"
    assert cfg.data.demo is not None and cfg.data.tokenizer.name == "train"


def test_paper_preset_is_the_papers_configuration():
    cfg = build_config({"preset": "paper"})
    assert cfg.data.demo is None
    assert cfg.data.tokenizer.name == "t5-base"
    assert (cfg.data.tokenizer.vocab_size, cfg.data.tokenizer.context_length) == (32102, 64)
    assert cfg.data.shard.image_size == 288 and cfg.data.split.cc12m_val_fraction == 0.05
    m = cfg.model
    assert (m.image_size, m.patch_size, m.num_patches, m.pooler_queries) == (288, 18, 256, 64)
    assert (m.dim, m.heads, m.vit_layers, m.unimodal_layers, m.multimodal_layers) == (768, 12, 12, 12, 12)
    assert (m.mlp_hidden, m.geglu_hidden, m.vocab_size) == (3072, 2073, 32102)


@pytest.mark.parametrize("preset", ["demo", "paper", "smoke"])
def test_encoder_override_works_with_every_preset(preset):
    cfg = build_config({"preset": preset, "model": {"encoder": "baseline"}})
    assert cfg.model.encoder == "baseline"


def test_empty_sections_override_nothing_and_values_override_the_preset():
    cfg = build_config({"preset": "paper", "data": {"demo": {}, "download": {"processes_count": 3}}})
    assert cfg.data.demo is None
    assert cfg.data.download.processes_count == 3
    assert cfg.data.download.thread_count == 64  # untouched preset value


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model": {"encoderr": "grr"}}, "unknown key 'model.encoderr'"),
        ({"model": {"encoder": "vit"}}, "'vit'"),
        ({"data": {"download": {"resize_mode": "zoom"}}}, "key 'data.download.resize_mode': value 'zoom'"),
        ({"data": {"download": {"distributor": "dask"}}}, "allowed: multiprocessing, pyspark, ray"),
        ({"data": {"shard": {"workers": "two"}}}, "key 'data.shard.workers': value 'two' is not an integer"),
        ({"data": {"shard": {"image_size": 100}}}, "'data.shard.image_size' (100) must equal 'model.image_size'"),
        ({"preset": "big"}, "preset: unknown value 'big'; allowed: demo, paper, smoke"),
        ({"model": {"context_length": 48}}, "'data.tokenizer.context_length' (40) must equal"),
        ({"data": {"sources": "here"}}, "key 'data.sources': expected a mapping"),
    ],
)
def test_bad_keys_and_values_fail_naming_key_value_and_allowed(params, message):
    with pytest.raises(ConfigError) as error:
        build_config(params)
    assert message in str(error.value)


def test_load_config_reads_params_file_and_names_it_in_errors(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preset": "smoke", "model": {"encoder": "baseline"}}))
    cfg = load_config(params)
    assert (cfg.preset, cfg.model.encoder, cfg.model.dim) == ("smoke", "baseline", 32)
    assert load_config(params, model__encoder="grr").model.encoder == "grr"
    params.write_text("preset: [unclosed")
    with pytest.raises(ConfigError, match=str(params)):
        load_config(params)


def test_flat_lists_every_resolved_parameter():
    flat = build_config({"preset": "paper"}).flat()
    assert flat["model.encoder"] == "grr" and flat["data.tokenizer.name"] == "t5-base"
    assert flat["data.download.image_size"] == 320
