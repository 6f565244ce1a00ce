"""The one place where the pipeline's configuration is defined and validated.

`params.yaml` names a preset (`demo`, `paper` or `smoke`, files in `pipeline/presets/`) and holds
overrides. `load_config()` deep-merges the overrides into the preset and builds one typed `Config`:
every key and value is checked before a stage does any work, each section's ranges by the section
itself (`__post_init__`, pipeline/checks.py's one error style) and the rules that join sections in
`_check_cross_section` below. The presets are the only source of values: a key every preset sets has
no default here, so a missing one is reported as missing rather than silently filled in.

This module imports no torch: `grr-coca config` and the data stages read the configuration cheaply.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.checks import (ConfigError, check_bool, check_choice, check_ints, check_number, check_text,
                             fail)
from pipeline.model.config import ModelConfig
from pipeline.names import RESIZE_AT
from pipeline.tokens import TokenLayout
from pipeline.train.config import FinetuneConfig, JointConfig, PretrainConfig, TrainConfig

__all__ = ["Config", "ConfigError", "build_config", "load_config", "model_preset", "preset_names"]

PRESETS_DIR = Path(__file__).parent / "presets"


# --------------------------------------------------------------------------------------------
# Data sections
# --------------------------------------------------------------------------------------------


@dataclass
class DemoDataConfig:
    """Sizes of the embedded demo datasets that stand in for CC12M, MSCOCO, Flickr30K and ROCO."""

    seed: int
    cc12m_rows: int  # url<TAB>caption rows (good ones; bad rows are added on top)
    mscoco_train_images: int
    mscoco_val_images: int
    captions_per_image: int  # MSCOCO and Flickr30K
    flickr30k_train_images: int
    flickr30k_val_images: int
    flickr30k_test_images: int
    roco_train: int
    roco_valid: int
    roco_test: int
    min_side: int  # generated images have random sizes and aspect ratios in [min_side, max_side]
    max_side: int
    bad_rows_per_kind: int  # per URL list: missing file, not-an-image bytes, truncated JPEG
    mscoco_karpathy_test_images: int  # Karpathy's dataset_coco.json test split (val2014 layout)
    classify_classes: int  # the classification set (ImageNet's folder-per-class layout): colour-shape classes
    classify_images_per_class: int

    def __post_init__(self) -> None:
        p = "data.demo"
        check_ints(self, p, ("seed", "flickr30k_test_images", "roco_test", "bad_rows_per_kind"), minimum=0)
        check_ints(self, p, ("mscoco_karpathy_test_images",), minimum=0)
        check_ints(self, p, ("classify_classes",), minimum=2, maximum=96)  # 12 colours x 8 shapes
        check_ints(self, p, ("classify_images_per_class",), minimum=2)  # the probe trains and tests on each class
        check_ints(self, p, ("cc12m_rows", "mscoco_train_images", "mscoco_val_images", "captions_per_image",
                             "flickr30k_train_images", "flickr30k_val_images", "roco_train", "roco_valid"))
        check_ints(self, p, ("min_side",), minimum=16)
        check_ints(self, p, ("max_side",), minimum=self.min_side)


@dataclass
class SourcesConfig:
    """Where each dataset's raw files live, in the real datasets' own layouts."""

    cc12m_tsv: str  # url<TAB>caption, no header
    mscoco_annotations: str  # captions_{train,val}2017.json
    flickr30k_json: str  # Karpathy's dataset_flickr30k.json
    flickr30k_images: str
    roco_root: str  # {train,valid,test}_captions.csv + {train,valid,test}/
    # The standard benchmarks (the benchmark stage; pipeline/data/classify.py, pipeline/evaluate/karpathy.py):
    coco_karpathy_json: str  # Karpathy's dataset_coco.json (its test split: the MSCOCO 5K test)
    coco_images: str  # the folder holding val2014/ (and train2014/), as dataset_coco.json's filepath says
    imagenet_val: str  # ImageNet-1k validation images: a folder per synset, or flat with imagenet_val_labels
    imagenet_classes: str  # class names, one per line in class-index (sorted synset) order
    imagenet_val_labels: str | None = None  # flat layout: LOC_val_solution.csv or the devkit's ground truth

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "imagenet_val_labels" or self.imagenet_val_labels is not None:
                check_text(self, "data.sources", f.name)


@dataclass
class DownloadConfig:
    """img2dataset's options, named as there, plus our retry passes."""

    image_size: int
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"]
    resize_only_if_bigger: bool
    encode_format: Literal["jpg", "png", "webp"]
    encode_quality: int  # JPEG/WebP quality 1-100; PNG compression level 0-9
    processes_count: int
    thread_count: int
    number_sample_per_shard: int
    timeout: int  # seconds per request
    retries: int  # img2dataset's retries per URL
    distributor: Literal["multiprocessing", "pyspark", "ray"]
    # pyspark: Spark's driver memory (local mode runs the executors in the driver's JVM); img2dataset
    # would start a 16g one. A JVM size: digits and k, m, g or t.
    spark_driver_memory: str
    retry_failed_passes: int  # after the main pass, re-download only the rows that failed, N times

    def __post_init__(self) -> None:
        p = "data.download"
        check_ints(self, p, ("image_size", "processes_count", "thread_count", "number_sample_per_shard", "timeout"))
        check_ints(self, p, ("retries", "retry_failed_passes"), minimum=0)
        check_choice(self, p, "resize_mode", ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"))
        check_bool(self, p, "resize_only_if_bigger")
        check_choice(self, p, "encode_format", ("jpg", "png", "webp"))
        check_choice(self, p, "distributor", ("multiprocessing", "pyspark", "ray"))
        if not isinstance(self.spark_driver_memory, str) or not re.fullmatch(r"[1-9][0-9]*[kmgt]",
                                                                             self.spark_driver_memory.lower()):
            fail(f"{p}.spark_driver_memory", self.spark_driver_memory, "a JVM memory size such as 2g or 512m")
        if self.encode_format == "png":
            check_ints(self, p, ("encode_quality",), minimum=0, maximum=9)
        else:
            check_ints(self, p, ("encode_quality",), minimum=1, maximum=100)


@dataclass
class SplitConfig:
    cc12m_val_fraction: float  # the paper's 95/5 split
    hash_salt: str  # a sample's split is a hash of salt + URL: stable across reruns (ours)

    def __post_init__(self) -> None:
        check_number(self, "data.split", "cc12m_val_fraction", above=0, below=1)
        if not isinstance(self.hash_salt, str):
            fail("data.split.hash_salt", self.hash_salt, "a string")


@dataclass
class TokenizerConfig:
    # A Hugging Face tokenizer name or path (`t5-base` in the paper), or `train` to train a small
    # tokenizer with T5's special-token layout on the training captions (the offline demo).
    name: str
    vocab_size: int  # final size including BOS and CLS; must equal model.vocab_size
    context_length: int  # model input tokens; must equal model.context_length
    batch_size: int = 4096  # captions per tokenizer call (speed only: a library constant)

    def __post_init__(self) -> None:
        p = "data.tokenizer"
        check_text(self, p, "name")
        check_ints(self, p, ("vocab_size",), minimum=TokenLayout(0).first_caption_id + 3)
        check_ints(self, p, ("context_length",), minimum=TokenLayout.MIN_CONTEXT)
        check_ints(self, p, ("batch_size",))


@dataclass
class ShardConfig:
    image_size: int  # square side; bilinear resize, RGB (docs/paper.md §Image preprocessing)
    # How a non-square image becomes the square (pipeline/data/preprocess.py): naive squashes it (the
    # paper's), letterbox pads it with the mean colour first, crop keeps the centre (Prismatic's three)
    resize_mode: Literal["naive", "letterbox", "crop"]
    # Where the square is made (pipeline/data/shard.py): shard stores it as JPEG; load stores the
    # downloaded file and the loader makes it, as inference does (no second JPEG compression, and
    # the shard stage decodes nothing)
    resize_at: Literal["shard", "load"]
    samples_per_shard: int
    jpeg_quality: int  # resize_at shard only
    workers: int  # processes decoding and resizing
    seed: int  # the within-tar shuffle of pairs

    def __post_init__(self) -> None:
        p = "data.shard"
        check_ints(self, p, ("image_size", "samples_per_shard", "workers"))
        check_ints(self, p, ("jpeg_quality",), minimum=1, maximum=100)
        check_ints(self, p, ("seed",), minimum=0)
        check_choice(self, p, "resize_mode", ("naive", "letterbox", "crop"))
        check_choice(self, p, "resize_at", RESIZE_AT)


@dataclass
class DataConfig:
    demo: DemoDataConfig | None  # null: no demo data (the paper preset reads the real datasets)
    sources: SourcesConfig
    download: DownloadConfig
    split: SplitConfig
    tokenizer: TokenizerConfig
    shard: ShardConfig


@dataclass
class EvaluateConfig:
    """Evaluation beyond the paper's losses: beam-search captions (BLEU-4, CIDEr) and recall@K."""

    num_beams: int
    batch_size: int  # images per beam search
    max_images: int  # 0 = every validation image; CC12M's 550k in the paper are subsampled
    samples_to_show: int  # generated captions beside their references, as an MLflow artifact
    # How captions are generated (pipeline/model/generate.py): beam search (the scores' default),
    # greedy, or sampling with temperature, top-k and top-p; the length and repetition rules apply to all.
    method: Literal["beam", "greedy", "sample"]
    temperature: float  # sample: logits divided by it
    top_k: int  # sample: only the k likeliest tokens (0: all)
    top_p: float  # sample: the smallest set of likeliest tokens whose probability reaches p (1.0: all)
    min_length: int  # no end of caption before this many tokens
    max_length: int  # tokens per caption at most, end included (0: the model's context length - 1)
    repetition_penalty: float  # > 1 makes tokens already in the caption less likely (CTRL's rule); 1: off
    seed: int  # sample: the random draws, so the same seed gives the same captions

    def __post_init__(self) -> None:
        p = "evaluate"
        check_ints(self, p, ("num_beams", "batch_size"))
        check_ints(self, p, ("max_images", "samples_to_show", "top_k", "min_length", "max_length", "seed"), minimum=0)
        check_choice(self, p, "method", ("beam", "greedy", "sample"))
        check_number(self, p, "temperature", above=0)
        check_number(self, p, "top_p", above=0, at_most=1)
        check_number(self, p, "repetition_penalty", at_least=1)
        if self.max_length and self.min_length >= self.max_length:
            fail("evaluate.min_length", self.min_length, f"less than evaluate.max_length ({self.max_length})")

    def describe(self) -> str:
        """The generation settings in a few words, for titles: "beam 3", "sample, T 0.7, top-p 0.9, seed 0"."""
        if self.method == "beam":
            words = [f"beam {self.num_beams}"]
        elif self.method == "greedy":
            words = ["greedy"]
        else:
            words = ["sample", f"T {self.temperature:g}"] + ([f"top-k {self.top_k}"] if self.top_k else []) + (
                [f"top-p {self.top_p:g}"] if self.top_p < 1 else []) + [f"seed {self.seed}"]
        words += [f"min length {self.min_length}"] if self.min_length else []
        words += [f"max length {self.max_length}"] if self.max_length else []
        words += [f"repetition penalty {self.repetition_penalty:g}"] if self.repetition_penalty != 1 else []
        return ", ".join(words)

    def generation(self) -> dict[str, Any]:
        """The keyword arguments of pipeline.model.generate.generate for these settings."""
        return {"method": self.method, "num_beams": self.num_beams, "temperature": self.temperature,
                "top_k": self.top_k, "top_p": self.top_p, "min_length": self.min_length,
                "max_length": self.max_length + 1 if self.max_length else None,  # generate counts BOS
                "repetition_penalty": self.repetition_penalty, "seed": self.seed}


@dataclass
class BenchmarkConfig:
    """The field's standard benchmarks of a trained checkpoint (the benchmark stage): zero-shot
    classification, the frozen-feature linear probe, Karpathy-test retrieval and captioning."""

    templates: str  # zero-shot prompt templates, one per line with `{}` (pipeline/data/templates/)
    max_images: int  # classification images used (0: all), the first in file order, for a quick look
    karpathy_max_images: int  # Karpathy test images per dataset (0: all: 5,000 MSCOCO, 1,000 Flickr30K)
    batch_size: int  # images per forward pass
    probe_test_fraction: float  # linear probe: the share of each class's images it is scored on
    probe_c: float  # scikit-learn LogisticRegression's C (inverse L2 strength)
    probe_max_iter: int

    def __post_init__(self) -> None:
        p = "benchmark"
        check_text(self, p, "templates")
        check_ints(self, p, ("max_images", "karpathy_max_images"), minimum=0)
        check_ints(self, p, ("batch_size", "probe_max_iter"))
        check_number(self, p, "probe_test_fraction", above=0, below=1)
        check_number(self, p, "probe_c", above=0)


# --------------------------------------------------------------------------------------------
# The whole configuration
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    preset: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig  # what both training phases share
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    joint: JointConfig  # the joint fine-tune over the three fine-tuning sets
    evaluate: EvaluateConfig
    benchmark: BenchmarkConfig

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
        raise ConfigError(f"key 'preset': value {name!r} is not allowed; allowed: {', '.join(preset_names())}")
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


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """The `model:` section of a preset, with some fields changed (tests, benchmarks, `grr-coca params`)."""
    return build_config({"preset": name}).model.replace(**overrides)


def _check_cross_section(cfg: Config) -> None:
    """The rules that join two sections (each section checks its own ranges on creation)."""
    tok, model, shard, train = cfg.data.tokenizer, cfg.model, cfg.data.shard, cfg.train
    for key, value, model_key in (("data.shard.image_size", shard.image_size, "image_size"),
                                  ("data.tokenizer.context_length", tok.context_length, "context_length"),
                                  ("data.tokenizer.vocab_size", tok.vocab_size, "vocab_size")):
        if value != getattr(model, model_key):
            fail(key, value, f"the value of 'model.{model_key}' ({getattr(model, model_key)})")
    # The loader deals data streams to processes and their workers, and each micro-batch takes the
    # same number of samples from every stream: checked here for one node of train.nproc_per_node
    # processes (the loader checks the world size of a run over several nodes when it starts).
    workers = max(1, train.num_workers)
    streams = train.data_streams or train.nproc_per_node * workers
    if streams % train.nproc_per_node:
        fail("train.data_streams", train.data_streams,
             f"0 or a multiple of train.nproc_per_node ({train.nproc_per_node})")
    per_process = streams // train.nproc_per_node
    if per_process % workers:
        fail("train.data_streams", train.data_streams,
             f"0 or a value whose {per_process} streams per process split evenly over "
             f"train.num_workers ({train.num_workers})")
    if train.micro_batch_size % per_process:
        fail("train.micro_batch_size", train.micro_batch_size,
             f"a multiple of the data streams per process ({per_process})")


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
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [_join(path, key) for key in required if key not in data]
    if missing:
        raise ConfigError(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}: "
                          "the preset (pipeline/presets/<preset>.yaml) must set it")
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
