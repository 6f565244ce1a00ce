"""The model checkpoint format, written and read here only: a training stage's `final.pt` / `best.pt`.

    format          FORMAT below; a file of another format is refused with a message
    model           the weights (state_dict)
    model_config    ModelConfig as a dict: the architecture, enough to rebuild the model
    model_options   CoCa's options beyond its configuration, which the training setup chooses
                    (`CoCa.options`: the contrastive loss's learnable bias, the fine-tuning adapter);
                    absent in older files, which are models without either
    tokenizer_files the tokenizer's saved files by name, so inference needs nothing else
    phase, dataset, mlflow_run_id, epoch, step, val, train_config   where the weights come from
    resize_mode     how its training images were made square (data.shard.resize_mode); inference
                    prepares images the same way (absent in older files: naive)

Files are written atomically and read with `torch.load(weights_only=True)`: everything in them is
tensors or plain Python values, so loading one runs no code. The trainer writes them (`save_model`),
fine-tuning starts from one (`load_init`), inference and evaluation load one (`load_model`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.checks import UserError
from pipeline.io import atomic_write
from pipeline.model.coca import CoCa
from pipeline.model.config import ModelConfig

FORMAT = 2
# Keys of format 1's model_config that are no longer part of the architecture: dropout belongs to
# the training phase, the special ids follow from vocab_size (pipeline/tokens.py).
_FORMAT1_KEYS = ("dropout", "pad_id", "eos_id", "bos_id", "cls_id")
# The keyword options of CoCa a checkpoint may record (CoCa.options).
MODEL_OPTIONS = ("contrastive_loss", "adapter")


class CheckpointError(UserError, ValueError):
    """A file that is not a usable grr-coca model checkpoint."""


@dataclass
class ModelCheckpoint:
    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    options: dict[str, Any]  # CoCa(config, **options)
    tokenizer_files: dict[str, str]
    meta: dict[str, Any]  # phase, dataset, mlflow_run_id, epoch, step, val, train_config, weights_of (best | last)

    @property
    def resize_mode(self) -> str:
        return self.meta.get("resize_mode", "naive")

    def build(self, dropout: float = 0.0, device: torch.device | str = "cpu") -> CoCa:
        """The model with these weights; a mismatch between weights and configuration is refused."""
        model = CoCa(self.config, dropout=dropout, **self.options)
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as e:
            raise CheckpointError(f"{self.path}: weights do not match its model configuration: {e}") from None
        return model.to(device)


def save_model(path: str | Path, weights: dict[str, torch.Tensor], config: ModelConfig, *,
               options: dict[str, Any] | None = None, tokenizer_dir: str | Path | None = None, **meta: Any) -> Path:
    """`options`: the model's `CoCa.options` (default: none, i.e. CoCa(config)'s)."""
    payload = {"format": FORMAT, "model": weights, "model_config": config.to_dict(), "model_options": options or {},
               "tokenizer_files": tokenizer_files(tokenizer_dir), **_plain(meta)}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> ModelCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and weights_only errors all mean: not ours
        raise CheckpointError(f"{path}: not a readable checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(payload, dict) or "model" not in payload or "model_config" not in payload:
        raise CheckpointError(f"{path}: not a grr-coca model checkpoint (no 'model' and 'model_config' entries)")
    version = payload.pop("format", 1)
    if version not in (1, FORMAT):
        raise CheckpointError(f"{path}: checkpoint format {version!r}; this version reads formats 1 and {FORMAT}")
    saved = {k: v for k, v in payload.pop("model_config").items() if not (version == 1 and k in _FORMAT1_KEYS)}
    try:
        config = ModelConfig(**saved)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model configuration is not valid here: {e}") from None
    options = payload.pop("model_options", None) or {}
    if not isinstance(options, dict) or not set(options) <= set(MODEL_OPTIONS):
        raise CheckpointError(f"{path}: model_options must be a mapping with keys from {', '.join(MODEL_OPTIONS)}; "
                              f"found {options!r}")
    files = payload.pop("tokenizer_files", None) or {}
    if not isinstance(files, dict) or not all(_plain_file_name(name) and isinstance(text, str)
                                              for name, text in files.items()):
        bad = [name for name in files if not _plain_file_name(name)] if isinstance(files, dict) else files
        raise CheckpointError(f"{path}: tokenizer_files must map plain file names to text; refused: {bad!r}")
    return ModelCheckpoint(path, config, payload.pop("model"), options, files, payload)


def _plain_file_name(name: object) -> bool:
    """A name that stays inside the folder it is written to: no separators, no '..', not absolute.
    A checkpoint's contents never choose a filesystem path."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and Path(name).name == name)


def load_init(path: str | Path, model: CoCa) -> dict[str, Any]:
    """Load pre-trained weights into `model` (fine-tuning's start), refusing another architecture.
    Returns where they come from (path, MLflow run id, step, phase)."""
    ckpt = load_model(path)
    if ckpt.config != model.cfg:
        ours = model.cfg.to_dict()
        diff = {k: (v, ours.get(k)) for k, v in ckpt.config.to_dict().items() if ours.get(k) != v}
        raise CheckpointError(f"{path}: pre-trained with another model configuration (saved, now): {diff}")
    saved_loss, ours_loss = ckpt.options.get("contrastive_loss", "softmax"), model.options["contrastive_loss"]
    if saved_loss != ours_loss:
        raise CheckpointError(f"{path}: pre-trained with contrastive_loss {saved_loss!r}, this run uses {ours_loss!r} "
                              "(train.contrastive_loss must be the same in both phases)")
    # An adapter fine-tune starts from a model without the adapter: its fresh (identity) adapter stays.
    missing, unexpected = model.load_state_dict(ckpt.weights, strict=False)
    if unexpected or any(not (model.adapter is not None and key.startswith("adapter.")) for key in missing):
        raise CheckpointError(f"{path}: its weights do not fit this model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return {"path": str(path), "run_id": ckpt.meta.get("mlflow_run_id"), "step": ckpt.meta.get("step"),
            "phase": ckpt.meta.get("phase")}


def tokenizer_files(directory: str | Path | None) -> dict[str, str]:
    """A saved tokenizer's files (save_pretrained's JSON and text files), by name."""
    if directory is None or not Path(directory).is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(Path(directory).iterdir()) if p.is_file()}


def _plain(value: Any) -> Any:
    """Tuples -> lists, dataclasses -> dicts (weights_only checkpoints hold plain types)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
