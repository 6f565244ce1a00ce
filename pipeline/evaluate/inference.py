"""Using a trained checkpoint: load it (model + its own tokenizer), caption images, rank images for a text.

A stage's `final.pt` / `best.pt` holds the weights, the model configuration and the tokenizer's files,
so nothing else is needed. A checkpoint whose pieces disagree (weights vs configuration, tokenizer vs
vocabulary or special ids) is refused with a message saying what differs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.checkpoint import CheckpointError, ModelCheckpoint, load_model
from pipeline.data.preprocess import decode_image, normalize, prepare_image
from pipeline.data.tokenizer import decode_tokens, encode_captions, layout_of
from pipeline.model.coca import CoCa
from pipeline.model.generate import generate

__all__ = ["CheckpointError", "LoadedModel", "load_checkpoint", "load_images", "caption_images", "rank_images"]


@dataclass
class LoadedModel:
    model: CoCa
    tokenizer: object  # a transformers fast tokenizer
    checkpoint: ModelCheckpoint

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_images(self, paths: list[str | Path]) -> torch.Tensor:
        """Images prepared as this model's training images were (its size and resize mode)."""
        return load_images(paths, self.model.cfg.image_size, self.checkpoint.resize_mode)

    def describe(self) -> str:
        """Which model this is, for every command that uses one to say: its ViT design, phase and data,
        epoch and step, MLflow run and file (so a workspace switched to another experiment cannot
        caption silently with the other encoder)."""
        c, meta = self.checkpoint.config, self.checkpoint.meta
        done = {"pretrain": "pre-trained", "finetune": "fine-tuned"}.get(meta.get("phase"), "trained")
        phase = f"{done} on {meta.get('dataset', '?')}"
        weights = {"best": "the best epoch's weights", "last": "the last epoch's weights"}.get(meta.get("weights_of"), "weights")
        if self.checkpoint.options.get("adapter"):
            phase += " (cross-modal adapter)"
        return (f"model: {c.variant} ({'/'.join(c.vit_design)}), {phase}, {weights} (epoch {meta.get('epoch', '?')}, "
                f"step {meta.get('step', '?')}), MLflow run {meta.get('mlflow_run_id') or 'none'}, from {self.checkpoint.path}")


def pick_device(name: str = "auto") -> torch.device:
    """`train.device`: "auto" is the GPU when there is one."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available (use auto or cpu)")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def load_checkpoint(path: str | Path, tokenizer_dir: str | Path | None = None,
                    device: torch.device | str = "cpu") -> LoadedModel:
    """The model in eval mode on `device`, with its tokenizer; `tokenizer_dir` only for checkpoints
    saved without one."""
    from transformers import AutoTokenizer

    ckpt = load_model(path)
    model = ckpt.build(device=device).eval()
    if ckpt.tokenizer_files:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in ckpt.tokenizer_files.items():
                (Path(tmp) / name).write_text(text)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
    elif tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        raise CheckpointError(f"{path}: holds no tokenizer; pass the tokenizer directory (e.g. data/tokenizer)")
    try:
        layout = layout_of(tokenizer)
    except ValueError as e:
        raise CheckpointError(f"{path}: its tokenizer does not have the pipeline's token layout: {e}") from None
    if layout != ckpt.config.tokens:
        raise CheckpointError(f"{path}: tokenizer does not match the model configuration (model, tokenizer): "
                              f"{ckpt.config.tokens}, {layout}")
    return LoadedModel(model, tokenizer, ckpt)


def load_images(paths: list[str | Path], image_size: int, resize_mode: str = "naive") -> torch.Tensor:
    """Images as the shard stage and loader prepare them (pipeline/data/preprocess.py), normalised;
    pass the checkpoint's `resize_mode` (LoadedModel.load_images does)."""
    pixels = []
    for path in paths:
        try:
            pixels.append(prepare_image(decode_image(Path(path).read_bytes()), image_size, resize_mode))
        except (OSError, ValueError, RuntimeError) as e:  # unreadable file, or not a decodable image
            raise CheckpointError(f"{path}: cannot read as an image: {e}") from None
    return normalize(torch.stack(pixels))


@torch.no_grad()
def caption_images(loaded: LoadedModel, images: torch.Tensor, method: str = "beam", num_beams: int = 3,
                   **options) -> list[str]:
    """Captions of normalised images; `options` are generate's (sampling, min/max length, repetition penalty)."""
    tokens = generate(loaded.model, images.to(loaded.device), method=method, num_beams=num_beams, **options)
    return [decode_tokens(loaded.tokenizer, row) for row in tokens.tolist()]


@torch.no_grad()
def embed_texts(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    ids, _ = encode_captions(loaded.tokenizer, texts, loaded.model.cfg.context_length)
    return loaded.model.encode_text(torch.from_numpy(ids[:, :-1]).long().to(loaded.device))


@torch.no_grad()
def rank_images(loaded: LoadedModel, images: torch.Tensor, query: str) -> list[tuple[int, float]]:
    """(image index, cosine similarity) from best to worst match of the query."""
    image_embeds = loaded.model.encode_image(images.to(loaded.device))
    scores = (image_embeds @ embed_texts(loaded, [query]).T).squeeze(1)
    order = scores.argsort(descending=True)
    return [(int(i), float(scores[i])) for i in order]
