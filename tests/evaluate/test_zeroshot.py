"""Zero-shot classification (pipeline/evaluate/zeroshot.py) on hand-made embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.data.classify import ClassificationSet
from pipeline.data.sources import SourceError
from pipeline.evaluate import zeroshot
from pipeline.evaluate.zeroshot import read_templates, topk_accuracy


def test_topk_accuracy_on_a_known_score_matrix():
    scores = torch.tensor([[0.9, 0.1, 0.0],    # true 0: rank 1
                           [0.5, 0.4, 0.6],    # true 1: rank 3
                           [0.2, 0.7, 0.3],    # true 2: rank 2
                           [0.3, 0.3, 0.1]])   # true 1: tied with class 0, counted against
    labels = torch.tensor([0, 1, 2, 1])
    acc = topk_accuracy(scores, labels, ks=(1, 2))
    assert acc["top1"] == pytest.approx(25.0)
    assert acc["top2"] == pytest.approx(75.0)  # image 1 (rank 3) is the only miss
    # per class top-1: class 0 1/1, class 1 0/2, class 2 0/1 -> mean 1/3
    assert acc["mean_per_class"] == pytest.approx(100 / 3)


def test_class_embedding_is_the_normalised_mean_of_normalised_prompts(monkeypatch):
    prompt_vectors = {"a cat": [2.0, 0.0, 0.0], "the cat": [0.0, 3.0, 0.0],
                      "a dog": [0.0, 0.0, 1.0], "the dog": [0.0, 0.0, 5.0]}
    monkeypatch.setattr(zeroshot, "embed_texts", lambda loaded, texts: torch.tensor([prompt_vectors[t] for t in texts]))
    classes = zeroshot.class_embeddings(None, ["cat", "dog"], ["a {}", "the {}"])
    s = 2 ** -0.5
    assert torch.allclose(classes, torch.tensor([[s, s, 0.0], [0.0, 0.0, 1.0]]))


def test_zeroshot_classify_scores_images_against_class_embeddings(monkeypatch):
    # Class embeddings along the axes; image embeddings near their class, except image 3, which is
    # closest to class 2 although labelled 0 (second closest: top-5 still counts it).
    prompt_vectors = {f"a {n}": F.one_hot(torch.tensor(i), 4).float() for i, n in enumerate("wxyz")}
    images = F.normalize(torch.tensor([[1.0, 0.1, 0, 0], [0.1, 1.0, 0, 0], [0, 0, 1.0, 0.2], [0.5, 0, 0.9, 0],
                                       [0, 0.1, 0, 1.0]]), dim=-1)
    monkeypatch.setattr(zeroshot, "embed_texts", lambda loaded, texts: torch.stack([prompt_vectors[t] for t in texts]))
    monkeypatch.setattr(zeroshot, "image_embeddings", lambda loaded, paths, batch_size, what: images)
    data = ClassificationSet([Path(f"{i}.jpg") for i in range(5)], [0, 1, 2, 0, 3], list("wxyz"), "folders")
    scores = zeroshot.zeroshot_classify(None, data, ["a {}"])
    assert scores["top1"] == pytest.approx(80.0)
    assert scores["top5"] == pytest.approx(100.0)
    assert scores["mean_per_class"] == pytest.approx((0.5 + 1 + 1 + 1) / 4 * 100)
    assert (scores["images"], scores["classes"], scores["templates"]) == (5, 4, 1)


def test_templates_file_skips_comments_and_names_a_bad_line(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("# prompts\na photo of a {}.\n\nart of the {}.\n")
    assert read_templates(path) == ["a photo of a {}.", "art of the {}."]
    path.write_text("a photo of a {}.\na photo of a {name}.\n")
    with pytest.raises(SourceError, match=r"templates.txt: line 2: .* exactly once"):
        read_templates(path)
    path.write_text("a {} and a {}\n")
    with pytest.raises(SourceError, match=r"line 1"):
        read_templates(path)


@pytest.mark.parametrize("name", ["imagenet.txt", "demo.txt"])
def test_shipped_templates_read(name):
    root = Path(zeroshot.__file__).parents[1] / "data" / "templates"
    assert len(read_templates(root / name)) == 7
