"""Zero-shot image classification with the contrastive embeddings (CoCa §3.3 and §4.2.1, after CLIP).

Each class name is put into every prompt template ("a photo of the large {}."), each prompt is
embedded with the unimodal text decoder and L2-normalised, and a class's embedding is the mean of
its prompts' embeddings, normalised again. An image's class is the class embedding closest (cosine)
to its normalised image embedding. No weight is trained: the model meets these classes only through
their names.

Templates are a text file, one per line with `{}` for the class name (pipeline/data/templates/), so a
user can replace them without touching code. Scores: top-1 and top-5 accuracy over images, and the
mean over classes of each class's top-1 accuracy (the per-class average that long-tailed sets report),
all in percent.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.data.classify import ClassificationSet, read_lines
from pipeline.data.sources import SourceError
from pipeline.evaluate.inference import LoadedModel, embed_texts
from pipeline.progress import Pace


TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "data" / "templates"


def templates_path(name: str | Path) -> Path:
    """A templates file: the path itself when it exists, else a shipped set by name (imagenet, demo),
    else the path inside this repository (the presets' pipeline/data/templates/...)."""
    path = Path(name)
    for candidate in (path, TEMPLATES_DIR / f"{name}.txt", TEMPLATES_DIR.parents[2] / path):  # as given, by name, in the repository
        if candidate.is_file():
            return candidate
    return path


def read_templates(path: str | Path) -> list[str]:
    """The prompt templates of a file: one per line, each with exactly one `{}`; `#` lines and blank
    lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"prompt templates: {path} not found (one template per line, `{{}}` for the class name)")
    templates = []
    for number, text in read_lines(path):
        if text.count("{}") != 1 or text.replace("{}", "").count("{") or text.replace("{}", "").count("}"):
            raise SourceError(f"{path}: line {number}: {text!r} must hold `{{}}` exactly once and no other braces")
        templates.append(text)
    if not templates:
        raise SourceError(f"{path}: no templates")
    return templates


@torch.no_grad()
def class_embeddings(loaded: LoadedModel, class_names: list[str], templates: list[str],
                     batch_size: int = 256) -> torch.Tensor:
    """(C, D): for each class, the normalised mean of its normalised prompt embeddings."""
    prompts = [t.format(name) for name in class_names for t in templates]
    embeds = torch.cat([embed_texts(loaded, prompts[i : i + batch_size]).float().cpu()
                        for i in range(0, len(prompts), batch_size)])
    per_class = F.normalize(embeds, dim=-1).reshape(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


@torch.no_grad()
def image_embeddings(loaded: LoadedModel, paths: list[Path], batch_size: int = 32, what: str = "images") -> torch.Tensor:
    """(N, D) normalised image embeddings of image files, prepared as the model's training images."""
    out, batches, pace = [], math.ceil(len(paths) / batch_size), Pace(0)
    for batch, start in enumerate(range(0, len(paths), batch_size), 1):
        images = loaded.load_images(paths[start : start + batch_size]).to(loaded.device)
        out.append(loaded.model.encode_image(images).float().cpu())
        if batch % 20 == 0 or batch == batches:
            print(f"embedded {min(start + batch_size, len(paths))}/{len(paths)} {what} "
                  f"({pace.line(batch, batches)})", flush=True)
    return torch.cat(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """scores (N, C), labels (N,) -> `top{k}` for each k and `mean_per_class` (of top-1), in percent.

    As in retrieval_recall, a tie counts against the model: the true class is within the top k when
    fewer than k other classes score at least as much. Classes without images are left out of the
    per-class mean."""
    if scores.ndim != 2 or labels.shape != (scores.shape[0],) or not len(labels):
        raise ValueError(f"topk_accuracy: scores (N, C) and labels (N,), got {tuple(scores.shape)}, {tuple(labels.shape)}")
    true = scores.gather(1, labels[:, None])
    ahead = (scores >= true).sum(dim=1) - 1  # other classes scoring at least the true class's score
    out = {f"top{k}": 100.0 * float((ahead < k).float().mean()) for k in ks}
    hit = (ahead < 1).float()
    present = labels.unique()
    out["mean_per_class"] = 100.0 * float(torch.stack([hit[labels == c].mean() for c in present]).mean())
    return out


def zeroshot_classify(loaded: LoadedModel, data: ClassificationSet, templates: list[str],
                      batch_size: int = 32, image_embeds: torch.Tensor | None = None) -> dict[str, float]:
    """Zero-shot top-1 / top-5 / mean per-class accuracy of `loaded` on a classification set
    (`image_embeds`: the set's normalised image embeddings, when already computed)."""
    classes = class_embeddings(loaded, data.class_names, templates)
    images = image_embeds if image_embeds is not None else image_embeddings(loaded, data.paths, batch_size,
                                                                           "images to classify")
    scores = topk_accuracy(images @ classes.T, torch.tensor(data.labels), ks=(1, min(5, len(data.class_names))))
    if "top5" not in scores:  # fewer than 5 classes: top-5 is certain
        scores["top5"] = 100.0
    return {**scores, "images": float(len(data.paths)), "classes": float(len(data.class_names)),
            "templates": float(len(templates))}


@torch.no_grad()
def classify_images(loaded: LoadedModel, images: torch.Tensor, class_names: list[str],
                    templates: list[str]) -> torch.Tensor:
    """(N, C) class probabilities of normalised images (N, 3, S, S): softmax of the cosine
    similarities scaled by the model's learned temperature, as CLIP's zero-shot classifier."""
    classes = class_embeddings(loaded, class_names, templates).to(loaded.device)
    similarity = loaded.model.encode_image(images.to(loaded.device)).float() @ classes.T
    scale = loaded.model._capped_logit_scale().exp().float()
    return (scale * similarity).softmax(dim=-1).cpu()
