"""Evaluation of a trained checkpoint on a validation split, beyond the paper's losses:

- captions generated (beam search) for every validation image, scored with BLEU-4 and CIDEr against
  all reference captions of that image;
- image->text and text->image recall@1/5/10 over the whole split (an image's hit is any of its
  captions; a caption's single correct image is its own).

The results go to the checkpoint's own MLflow run (`eval/...`), to a metrics JSON and, as a sample
of generated captions beside their references, to a Markdown artifact.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data.loader import Manifest, normalize, read_shards
from pipeline.evaluate.inference import LoadedModel, caption_images
from pipeline.evaluate.metrics import caption_scores, retrieval_recall


@dataclass
class ValidationSet:
    """A validation split grouped by image: each image once, all of its captions."""

    image_ids: list[str] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)  # uint8 (3, S, S)
    references: dict[str, list[str]] = field(default_factory=dict)
    caption_tokens: list[np.ndarray] = field(default_factory=list)
    caption_image: list[int] = field(default_factory=list)  # index into image_ids
    corrupt: int = 0


def read_validation_set(shard_dir: str | Path, max_images: int = 0) -> ValidationSet:
    manifest = Manifest.load(shard_dir)
    errors = [0]
    out, index = ValidationSet(), {}
    for sample in read_shards([manifest.root / name for name, _ in manifest.shards], errors):
        try:
            meta = json.loads(sample["json"])
            tokens = np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)
            caption = sample["txt"].decode()
            image_id = str(meta["image_id"])
            if image_id not in index:
                if max_images and len(index) >= max_images:
                    continue
                with Image.open(io.BytesIO(sample["jpg"])) as image:
                    pixels = np.array(image.convert("RGB"), dtype=np.uint8)
                index[image_id] = len(out.image_ids)
                out.image_ids.append(image_id)
                out.images.append(torch.from_numpy(pixels).permute(2, 0, 1))
                out.references[image_id] = []
        except Exception:  # noqa: BLE001 - a corrupt sample is skipped and counted, as in training
            out.corrupt += 1
            continue
        out.references[image_id].append(caption)
        out.caption_tokens.append(tokens)
        out.caption_image.append(index[image_id])
    out.corrupt += errors[0]
    if not out.image_ids:
        raise ValueError(f"{shard_dir}: no readable validation samples")
    return out


@torch.no_grad()
def evaluate(loaded: LoadedModel, val: ValidationSet, num_beams: int = 3, batch_size: int = 32,
             samples_to_show: int = 20) -> tuple[dict[str, float], list[dict]]:
    """-> (metrics named as the report expects: bleu4, cider, i2t_r1..., t2i_r10; caption samples)."""
    model = loaded.model
    image_embeds, predictions = [], {}
    for start in range(0, len(val.images), batch_size):
        images = normalize(torch.stack(val.images[start : start + batch_size]))
        image_embeds.append(model.encode_image(images))
        captions = caption_images(loaded, images, method="beam", num_beams=num_beams)
        predictions.update(zip(val.image_ids[start : start + batch_size], captions))
    tokens = torch.from_numpy(np.stack(val.caption_tokens)).long()
    text_embeds = torch.cat([model.encode_text(tokens[i : i + batch_size, :-1])
                             for i in range(0, len(tokens), batch_size)])
    metrics = {**caption_scores(predictions, val.references),
               **retrieval_recall(torch.cat(image_embeds), text_embeds, torch.tensor(val.caption_image))}
    metrics.update(images=len(val.image_ids), captions=len(tokens), corrupt_samples=val.corrupt)
    shown = [{"image_id": i, "generated": predictions[i], "references": val.references[i]}
             for i in val.image_ids[:samples_to_show]]
    return {k: float(v) for k, v in metrics.items()}, shown


def samples_markdown(title: str, samples: list[dict]) -> str:
    lines = [f"# {title}", "", "| image | generated | references |", "| --- | --- | --- |"]
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    for s in samples:
        refs = "<br>".join(cell(r) for r in s["references"])
        lines.append(f"| {s['image_id']} | {cell(s['generated'])} | {refs} |")
    return "\n".join(lines) + "\n"


def log_to_run(tracking_uri: str, run_id: str, metrics: dict[str, float], artifact: Path) -> None:
    """Add the evaluation to the training run it belongs to (a finished run accepts more metrics)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"eval/{k}", v, now, 0) for k, v in metrics.items()])
    client.log_artifact(run_id, str(artifact), "eval")
