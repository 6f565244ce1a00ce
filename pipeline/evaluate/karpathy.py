"""The field's standard captioning and retrieval benchmarks: Karpathy's test splits of MSCOCO (5,000
images) and Flickr30K (1,000 images), five captions each (CoCa Table 3 and §4.3).

Unlike the evaluate stage, which scores the validation shards a model was checkpointed on, this reads
the original test images through Karpathy's split files (pipeline/data/sources.py), prepares them as
the model's training images were (the checkpoint's size and resize mode) and scores:

- image->text and text->image recall@1/5/10 (metrics.retrieval_recall: an image's hit is any of its
  captions), zero-shot for the pre-trained model, in-domain for one fine-tuned on the same data;
- BLEU-4 and CIDEr of one generated caption per image against its references (metrics.caption_scores).

MSCOCO's Karpathy test images come from val2014, which the 2017 split folds into train2017: a model
fine-tuned on train2017 (the paper's MSCOCO fine-tuning) has seen them, so its MSCOCO numbers are not
held out (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch

from pipeline.data.sources import KarpathySplit
from pipeline.evaluate.inference import LoadedModel, caption_images, embed_texts
from pipeline.evaluate.metrics import caption_scores, retrieval_recall
from pipeline.progress import Pace


def first_images(split: KarpathySplit, max_images: int) -> KarpathySplit:
    """The first `max_images` images of a split in file order (0: all), for a quick look."""
    if not max_images or max_images >= len(split.paths):
        return split
    return KarpathySplit(split.image_ids[:max_images], split.paths[:max_images], split.captions[:max_images],
                         split.missing)


@torch.no_grad()
def evaluate_karpathy(loaded: LoadedModel, split: KarpathySplit, generation: dict, batch_size: int = 32,
                      what: str = "test") -> dict[str, float]:
    """Recall@1/5/10 both ways, BLEU-4 and CIDEr on one Karpathy split; `generation` is
    EvaluateConfig.generation() (beam search by default)."""
    image_embeds, predictions = [], {}
    batches, pace = math.ceil(len(split.paths) / batch_size), Pace(0)
    for batch, start in enumerate(range(0, len(split.paths), batch_size), 1):
        images = loaded.load_images(split.paths[start : start + batch_size]).to(loaded.device)
        image_embeds.append(loaded.model.encode_image(images).float().cpu())
        predictions.update(zip(split.image_ids[start : start + batch_size], caption_images(loaded, images, **generation)))
        if batch % 10 == 0 or batch == batches:
            print(f"{what}: {len(predictions)}/{len(split.paths)} images ({pace.line(batch, batches)})", flush=True)
    texts = [caption for captions in split.captions for caption in captions]
    owner = torch.tensor([i for i, captions in enumerate(split.captions) for _ in captions])
    text_embeds = torch.cat([embed_texts(loaded, texts[i : i + 256]).float().cpu() for i in range(0, len(texts), 256)])
    references = dict(zip(split.image_ids, split.captions))
    return {**retrieval_recall(torch.cat(image_embeds), text_embeds, owner),
            **caption_scores(predictions, references),
            "images": float(len(split.paths)), "captions": float(len(texts)), "missing_images": float(split.missing)}
