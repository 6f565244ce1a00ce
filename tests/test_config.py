"""The one configuration: presets, overrides, and errors that name the key."""

from pathlib import Path

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
        ({"data": {"shard": {"image_size": 100}}},
         "key 'data.shard.image_size': value 100 is not allowed; allowed: the value of 'model.image_size' (64)"),
        ({"preset": "big"}, "key 'preset': value 'big' is not allowed; allowed: demo, paper, smoke"),
        ({"pretrain": {"crop_scale": 0.8}}, "key 'pretrain.crop_scale': expected a list, got 0.8"),
        ({"finetune": {"hflip": "yes"}}, "key 'finetune.hflip': value 'yes' is not a boolean (true or false)"),
        ({"model": {"context_length": 48}}, "key 'data.tokenizer.context_length': value 40 is not allowed"),
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


# Every value below stops the configuration before any stage does work, with one line that names
# the key, the value and what is allowed. The first six are the ones a user met in the download
# stage: a deleted download, 1x1-pixel images, an endless retry loop, nothing downloaded at all.
BAD_VALUES = [
    ("data.download.number_sample_per_shard", 0, "an integer >= 1"),
    ("data.download.image_size", -5, "an integer >= 1"),
    ("data.download.retries", -1, "an integer >= 0"),
    ("data.download.timeout", 0, "an integer >= 1"),
    ("data.download.thread_count", 0, "an integer >= 1"),
    ("data.download.processes_count", -1, "an integer >= 1"),
    ("data.download.encode_quality", 101, "an integer in [1, 100]"),
    ("data.download.retry_failed_passes", -2, "an integer >= 0"),
    ("data.demo.captions_per_image", 0, "an integer >= 1"),
    ("data.demo.max_side", 20, "an integer >= 48"),
    ("data.sources.cc12m_tsv", "", "a non-empty string"),
    ("data.split.cc12m_val_fraction", 1.0, "a finite number > 0 and < 1"),
    ("data.tokenizer.context_length", 3, "an integer >= 4"),
    ("data.tokenizer.batch_size", 0, "an integer >= 1"),
    ("data.shard.samples_per_shard", 0, "an integer >= 1"),
    ("data.shard.jpeg_quality", 0, "an integer in [1, 100]"),
    ("data.shard.workers", 0, "an integer >= 1"),
    ("model.patch_size", 0, "an integer >= 1"),
    ("model.mlp_ratio", -1.0, "a finite number > 0"),
    ("train.micro_batch_size", 0, "an integer >= 1"),
    ("train.grad_clip", 0.0, "a finite number > 0"),
    ("train.betas", [0.9], "two numbers in [0, 1)"),
    ("train.decode_on", "gpu", "workers, device"),
    ("pretrain.lr_min", 0.5, "a finite number > 0 and <= 0.001"),
    ("pretrain.dropout", 1.5, "a finite number >= 0 and < 1"),
    ("finetune.lr_divisor", 1.0, "a finite number > 1"),
    ("pretrain.lr_max", float("inf"), "a finite number > 0"),
    ("finetune.lambda_cap", float("nan"), "a finite number >= 0"),
    ("finetune.patience", 0, "an integer >= 1"),
    ("evaluate.num_beams", 0, "an integer >= 1"),
    ("evaluate.max_images", -1, "an integer >= 0"),
    ("evaluate.batch_size", 0, "an integer >= 1"),
    ("data.shard.resize_mode", "squash", "naive, letterbox, crop"),
    ("data.shard.resize_at", "gpu", "shard, load"),
    ("finetune.crop_scale", [0.9, 0.5], "null or [low, high] with 0 < low <= high <= 1 (fractions of the image's area)"),
    ("finetune.crop_scale", [0.0, 1.0], "null or [low, high] with 0 < low <= high <= 1 (fractions of the image's area)"),
]


def _params(dotted: str, value) -> dict:
    params: dict = {"preset": "demo"}
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return params


@pytest.mark.parametrize("key, value, allowed", BAD_VALUES, ids=[k for k, _, _ in BAD_VALUES])
def test_each_section_rejects_bad_values_in_one_line(key, value, allowed):
    with pytest.raises(ConfigError) as error:
        build_config(_params(key, value))
    message = str(error.value)
    assert message == f"key '{key}': value {value!r} is not allowed; allowed: {allowed}"


@pytest.mark.parametrize("params, message", [
    ({"train": {"data_streams": 3}}, "key 'train.data_streams': value 3 is not allowed; allowed: 0 or a multiple "
                                     "of train.nproc_per_node (2)"),
    ({"train": {"data_streams": 2, "num_workers": 2}}, "streams per process split evenly over train.num_workers (2)"),
    ({"train": {"data_streams": 4, "micro_batch_size": 3}},
     "key 'train.micro_batch_size': value 3 is not allowed; allowed: a multiple of the data streams per process (2)"),
    ({"model": {"vocab_size": 2048}}, "key 'data.tokenizer.vocab_size': value 1024 is not allowed; allowed: the "
                                      "value of 'model.vocab_size' (2048)"),
])
def test_cross_section_rules(params, message):
    with pytest.raises(ConfigError) as error:
        build_config({"preset": "demo", **params})
    assert message in str(error.value)


def test_a_key_the_preset_must_set_is_reported_missing(tmp_path, monkeypatch):
    import pipeline.config as config

    preset = yaml.safe_load((config.PRESETS_DIR / "smoke.yaml").read_text())
    del preset["data"]["download"]["retries"]
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump(preset))
    monkeypatch.setattr(config, "PRESETS_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"missing key 'data.download.retries': the preset"):
        build_config({"preset": "partial"})


def test_the_dead_key_model_dropout_is_gone():
    with pytest.raises(ConfigError, match=r"unknown key 'model.dropout'"):
        build_config({"preset": "demo", "model": {"dropout": 0.1}})


def test_reading_the_configuration_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, pipeline.config as c; c.load_config('params.yaml'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("key, value", [("number_sample_per_shard", 0), ("image_size", -5), ("retries", -1),
                                        ("timeout", 0), ("thread_count", 0), ("processes_count", -1)])
def test_the_download_stage_stops_before_any_work_with_one_line(tmp_path, key, value):
    """The values that once deleted a finished download, wrote 1x1 images, hung or downloaded nothing:
    the stage exits 1 with one line naming the key, the value and what is allowed; the existing
    download is untouched."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"preset": "smoke", "data": {"download": {key: value}}}))
    out = tmp_path / "download"
    out.mkdir()
    (out / "finished.tar").write_bytes(b"a finished download")
    result = subprocess.run([sys.executable, str(root / "stages/download.py"), "cc12m", "--params",
                             str(tmp_path / "params.yaml"), "--out", str(out), "--report", str(tmp_path / "r.json")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: key 'data.download.{key}': value {value!r} is not allowed; allowed: "
        + ("an integer >= 0" if key == "retries" else "an integer >= 1")]
    assert [p.name for p in out.iterdir()] == ["finished.tar"] and not (tmp_path / "r.json").exists()
