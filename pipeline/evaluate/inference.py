"""Using a trained checkpoint: load it (model + its own tokenizer), caption images, rank images for a text.

A stage's `final.pt` / `best.pt` holds the weights, the model configuration and the tokenizer's files,
so nothing else is needed. A checkpoint whose pieces disagree (weights vs configuration, tokenizer vs
vocabulary or special ids) is refused with a message saying what differs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data.loader import normalize
from pipeline.data.tokenizer import SpecialIds, decode_tokens, encode_captions
from pipeline.model import CoCa, ModelConfig, generate


class CheckpointError(ValueError):
    pass


@dataclass
class LoadedModel:
    model: CoCa
    tokenizer: object  # a transformers fast tokenizer
    checkpoint: dict
    path: str


def load_checkpoint(path: str | Path, tokenizer_dir: str | Path | None = None) -> LoadedModel:
    """The model in eval mode with its tokenizer; `tokenizer_dir` only for checkpoints saved without one."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "model_config"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: not a grr-coca model checkpoint (no {key!r} entry)")
    try:
        cfg = ModelConfig(**{**ckpt["model_config"], "dropout": 0.0})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model configuration is not valid here: {e}") from None
    model = CoCa(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match its model configuration: {e}") from None
    model.eval()

    files = ckpt.get("tokenizer_files") or {}
    if files:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                (Path(tmp) / name).write_text(text)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
    elif tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        raise CheckpointError(f"{path}: holds no tokenizer; pass the tokenizer directory (e.g. data/tokenizer)")
    check_tokenizer(tokenizer, cfg, str(path))
    return LoadedModel(model, tokenizer, ckpt, str(path))


def check_tokenizer(tokenizer, cfg: ModelConfig, where: str) -> None:
    ids = SpecialIds.of(tokenizer)
    expected = {"vocab_size": cfg.vocab_size, "pad": cfg.pad_id, "eos": cfg.eos_id, "bos": cfg.bos_id,
                "cls": cfg.cls_id}
    actual = {"vocab_size": len(tokenizer), "pad": ids.pad, "eos": ids.eos, "bos": ids.bos, "cls": ids.cls}
    diff = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    if diff:
        raise CheckpointError(f"{where}: tokenizer does not match the model configuration (model, tokenizer): {diff}")


def load_images(paths: list[str | Path], image_size: int) -> torch.Tensor:
    """Images as the shard stage and loader prepare them: RGB, bilinear square resize, ImageNet-normalised."""
    pixels = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                pixels.append(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot read as an image: {e}") from None
    return normalize(torch.stack(pixels))


@torch.no_grad()
def caption_images(loaded: LoadedModel, images: torch.Tensor, method: str = "beam", num_beams: int = 3) -> list[str]:
    tokens = generate(loaded.model, images, method=method, num_beams=num_beams)
    return [decode_tokens(loaded.tokenizer, row) for row in tokens.tolist()]


@torch.no_grad()
def embed_texts(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    ids, _ = encode_captions(loaded.tokenizer, texts, loaded.model.cfg.context_length)
    return loaded.model.encode_text(torch.from_numpy(ids[:, :-1]).long())


@torch.no_grad()
def rank_images(loaded: LoadedModel, images: torch.Tensor, query: str) -> list[tuple[int, float]]:
    """(image index, cosine similarity) from best to worst match of the query."""
    image_embeds = loaded.model.encode_image(images)
    scores = (image_embeds @ embed_texts(loaded, [query]).T).squeeze(1)
    order = scores.argsort(descending=True)
    return [(int(i), float(scores[i])) for i in order]
