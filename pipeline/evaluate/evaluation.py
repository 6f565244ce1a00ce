"""Evaluation of a trained checkpoint on a validation split, beyond the paper's losses:

- captions generated (beam search by default; evaluate.method) for every validation image, scored with BLEU-4 and CIDEr against
  all reference captions of that image;
- image->text and text->image recall@1/5/10 over the whole split (an image's hit is any of its
  captions; a caption's single correct image is its own).

The stage sends the results through pipeline.tracking to the checkpoint's own MLflow run (`eval/...`)
and to a metrics JSON, with a sample of generated captions beside their references as an artifact.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.data.loader import CorruptSample, Manifest, decode_sample, read_shards
from pipeline.data.preprocess import normalize
from pipeline.evaluate.inference import LoadedModel, caption_images
from pipeline.evaluate.metrics import caption_scores, retrieval_recall
from pipeline.progress import Pace


@dataclass
class ValidationSet:
    """A validation split grouped by image: each image once, all of its captions."""

    image_ids: list[str] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)  # uint8 (3, S, S)
    references: dict[str, list[str]] = field(default_factory=dict)
    caption_tokens: list[torch.Tensor] = field(default_factory=list)  # int64 (context_length + 1,)
    caption_image: list[int] = field(default_factory=list)  # index into image_ids
    corrupt: int = 0


def read_validation_set(shard_dir: str | Path, max_images: int = 0, vocab_size: int | None = None) -> ValidationSet:
    """Every usable sample of a split's shards, decoded and checked as training decodes them
    (pipeline.data.loader.decode_sample); an unusable one is skipped and counted."""
    manifest = Manifest.load(shard_dir)
    errors = [0]
    out, index = ValidationSet(), {}
    files = [name for name, _ in manifest.shards]
    for sample in read_shards([manifest.root / name for name in files], errors, manifest.counts(files)):
        try:
            image_id = str(json.loads(sample["json"])["image_id"])
            caption = sample["txt"].decode()
            if image_id not in index and max_images and len(index) >= max_images:
                continue
            pixels, tokens = decode_sample(sample, manifest, vocab_size)
        except (CorruptSample, KeyError, ValueError):  # a corrupt sample is skipped and counted, as in training
            out.corrupt += 1
            continue
        if image_id not in index:
            index[image_id] = len(out.image_ids)
            out.image_ids.append(image_id)
            out.images.append(pixels)
            out.references[image_id] = []
        out.references[image_id].append(caption)
        out.caption_tokens.append(tokens)
        out.caption_image.append(index[image_id])
    out.corrupt += errors[0]
    if not out.image_ids:
        raise ValueError(f"{shard_dir}: no readable validation samples")
    return out


@torch.no_grad()
def evaluate(loaded: LoadedModel, val: ValidationSet, num_beams: int = 3, batch_size: int = 32,
             samples_to_show: int = 20, generation: dict | None = None) -> tuple[dict[str, float], list[dict]]:
    """-> (metrics named as the report expects: bleu4, cider, i2t_r1..., t2i_r10; caption samples).
    Runs on the loaded model's device, `batch_size` images per generation call; `generation` is
    EvaluateConfig.generation() (default: beam search with `num_beams`)."""
    generation = generation or {"method": "beam", "num_beams": num_beams}
    model, device = loaded.model, loaded.device
    image_embeds, predictions = [], {}
    batches, pace = math.ceil(len(val.images) / batch_size), Pace(0)
    for batch, start in enumerate(range(0, len(val.images), batch_size), 1):
        images = normalize(torch.stack(val.images[start : start + batch_size]).to(device))
        image_embeds.append(model.encode_image(images).cpu())
        captions = caption_images(loaded, images, **generation)
        predictions.update(zip(val.image_ids[start : start + batch_size], captions))
        if batch % 10 == 0 or batch == batches:
            print(f"captioned {len(predictions)}/{len(val.images)} images ({pace.line(batch, batches)})", flush=True)
    tokens = torch.stack(val.caption_tokens)
    text_embeds = torch.cat([model.encode_text(tokens[i : i + batch_size, :-1].to(device)).cpu()
                             for i in range(0, len(tokens), batch_size)])
    metrics = {**caption_scores(predictions, val.references),
               **retrieval_recall(torch.cat(image_embeds), text_embeds, torch.tensor(val.caption_image))}
    metrics.update(images=len(val.image_ids), captions=len(tokens), corrupt_samples=val.corrupt)
    shown = [{"image_id": i, "generated": predictions[i], "references": val.references[i]}
             for i in val.image_ids[:samples_to_show]]
    return {k: float(v) for k, v in metrics.items()}, shown
