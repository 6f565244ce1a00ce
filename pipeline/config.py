"""The one place where the pipeline's configuration is defined and validated.

`params.yaml` names a preset (`demo`, `paper` or `smoke`, files in `pipeline/presets/`) and holds
overrides. `load_config()` deep-merges the overrides into the preset and builds one typed `Config`,
checking every key and value once, before a stage does any work: an unknown key or a bad value
raises `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.model.config import ModelConfig
from pipeline.train.config import FinetuneConfig, PretrainConfig, TrainConfig

PRESETS_DIR = Path(__file__).parent / "presets"
DATASETS = ("cc12m", "mscoco", "flickr30k", "roco")
Dataset = Literal["cc12m", "mscoco", "flickr30k", "roco"]


class ConfigError(ValueError):
    """A configuration key or value that the pipeline cannot accept."""


# --------------------------------------------------------------------------------------------
# Data sections
# --------------------------------------------------------------------------------------------


@dataclass
class DemoDataConfig:
    """Sizes of the embedded demo datasets that stand in for CC12M, MSCOCO, Flickr30K and ROCO."""

    seed: int = 0
    cc12m_rows: int = 800  # url<TAB>caption rows (good ones; bad rows are added on top)
    mscoco_train_images: int = 120
    mscoco_val_images: int = 30
    captions_per_image: int = 5  # MSCOCO and Flickr30K
    flickr30k_train_images: int = 100
    flickr30k_val_images: int = 25
    flickr30k_test_images: int = 10
    roco_train: int = 150
    roco_valid: int = 40
    roco_test: int = 10
    min_side: int = 48  # generated images have random sizes and aspect ratios in [min_side, max_side]
    max_side: int = 160
    bad_rows_per_kind: int = 1  # per URL list: missing file, not-an-image bytes, truncated JPEG


@dataclass
class SourcesConfig:
    """Where each dataset's raw files live (the real datasets' own layouts)."""

    cc12m_tsv: str = "data/raw/demo/cc12m/cc12m.tsv"  # url<TAB>caption, no header
    mscoco_annotations: str = "data/raw/demo/mscoco/annotations"  # captions_{train,val}2017.json
    flickr30k_json: str = "data/raw/demo/flickr30k/dataset_flickr30k.json"  # Karpathy split file
    flickr30k_images: str = "data/raw/demo/flickr30k/flickr30k-images"
    roco_root: str = "data/raw/demo/roco"  # {train,valid,test}_captions.csv + {train,valid,test}/


@dataclass
class DownloadConfig:
    """img2dataset options, passed through as they are named there."""

    image_size: int = 384
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio"
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = 95
    processes_count: int = 16
    thread_count: int = 64
    number_sample_per_shard: int = 10000
    timeout: int = 10
    retries: int = 0
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    retry_failed_passes: int = 0  # after the main pass, re-download only the rows that failed, N times


@dataclass
class SplitConfig:
    cc12m_val_fraction: float = 0.05
    hash_salt: str = "grr-coca"  # a sample's split is a hash of salt + URL: stable across reruns


@dataclass
class TokenizerConfig:
    # A Hugging Face tokenizer name or path (`t5-base` in the paper), or `train` to train a small
    # tokenizer with T5's special-token layout on the training captions (the offline demo).
    name: str = "t5-base"
    vocab_size: int = 32102  # final size including BOS and CLS; must equal model.vocab_size
    context_length: int = 64  # model input tokens; must equal model.context_length
    batch_size: int = 4096


@dataclass
class ShardConfig:
    image_size: int = 288  # square side; bilinear resize, RGB
    samples_per_shard: int = 2000
    jpeg_quality: int = 95
    workers: int = 2
    seed: int = 0


@dataclass
class DataConfig:
    demo: DemoDataConfig | None = None  # None: no demo data (the paper preset)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)


@dataclass
class EvaluateConfig:
    """Evaluation beyond the paper's losses: beam-search captions (BLEU-4, CIDEr) and recall@K."""

    num_beams: int = 3
    batch_size: int = 32
    max_images: int = 0  # 0 = every validation image; CC12M's 550k in the paper are subsampled
    samples_to_show: int = 20  # generated captions beside their references, as an MLflow artifact


# --------------------------------------------------------------------------------------------
# The whole configuration
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    preset: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # what both training phases share
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every resolved parameter as `section.key: value` (for experiment tracking)."""
        return _flatten(self.to_dict())


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset: unknown value {name!r}; allowed: {', '.join(preset_names())}")
    return path


def load_config(params_path: str | Path = "params.yaml", **set_overrides: Any) -> Config:
    """Read params.yaml, merge its overrides into its preset, and validate the result.

    `set_overrides` take dotted keys with `__` for dots, e.g. `model__encoder="baseline"`.
    """
    params_path = Path(params_path)
    try:
        params = yaml.safe_load(params_path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{params_path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{params_path}: not valid YAML: {e}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{params_path}: expected a mapping at top level, got {type(params).__name__}")
    for dotted, value in set_overrides.items():
        _set_dotted(params, dotted.split("__"), value)
    return build_config(params, source=str(params_path))


def build_config(params: dict[str, Any], source: str = "params") -> Config:
    params = dict(params)
    name = params.pop("preset", "demo")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: key 'preset': value {name!r} is not a string")
    path = preset_path(name)
    preset = yaml.safe_load(path.read_text()) or {}
    merged = _deep_merge(preset, params)
    merged["preset"] = name
    cfg = _build(Config, merged, "")
    _check_cross_section(cfg)
    return cfg


def _check_cross_section(cfg: Config) -> None:
    tok, model = cfg.data.tokenizer, cfg.model
    if cfg.data.shard.image_size != model.image_size:
        raise ConfigError(
            f"key 'data.shard.image_size' ({cfg.data.shard.image_size}) must equal "
            f"'model.image_size' ({model.image_size})"
        )
    if tok.context_length != model.context_length:
        raise ConfigError(
            f"key 'data.tokenizer.context_length' ({tok.context_length}) must equal "
            f"'model.context_length' ({model.context_length})"
        )
    if tok.vocab_size != model.vocab_size:
        raise ConfigError(
            f"key 'data.tokenizer.vocab_size' ({tok.vocab_size}) must equal 'model.vocab_size' ({model.vocab_size})"
        )


# --------------------------------------------------------------------------------------------
# Typed building: dict -> dataclass, with errors that name the key
# --------------------------------------------------------------------------------------------


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"key '{path}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"unknown key '{_join(path, key)}'; allowed keys here: {', '.join(sorted(names))}"
            )
    kwargs = {key: _coerce(hints[key], value, _join(path, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"key '{path or cls.__name__}': {e}") from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"key '{path}': value {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, path)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"key '{path}': expected a mapping, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"key '{path}': expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"key '{path}': value {value!r} is not a boolean (true or false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"key '{path}': value {value!r} is not an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value):
            return float(value)  # PyYAML reads `1e-4` (no dot) as a string: YAML 1.1's float rule
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"key '{path}': value {value!r} is not a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"key '{path}': value {value!r} is not a string")
        return value
    raise TypeError(f"config type {tp!r} at {path} is not supported")  # a bug in this file


_YAML11_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if value == {}:  # params.yaml lists every section as `{}`: an empty mapping overrides nothing
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(d: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        d = d.setdefault(key, {})
    d[keys[-1]] = value


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = _join(prefix, key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out
