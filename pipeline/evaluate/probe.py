"""The frozen-feature linear probe (CoCa §4.2.1, after CLIP): a multinomial logistic regression
(scikit-learn) trained on a model's frozen, L2-normalised image embeddings, scored on held-out
images of the same classes. It measures what the image encoder's embedding holds, free of the text
side and of prompt wording (zero-shot, zeroshot.py, needs both).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.evaluate.zeroshot import topk_accuracy


def linear_probe(train_x: torch.Tensor, train_y: list[int], test_x: torch.Tensor, test_y: list[int],
                 c: float = 1.0, max_iter: int = 1000) -> dict[str, float]:
    """Fit on (train_x, train_y), score on (test_x, test_y): top-1, top-5 (when there are more than
    5 classes) and mean per-class accuracy in percent. Features are used as given (pass normalised
    embeddings); classes absent from the training images cannot be predicted and count as misses."""
    from sklearn.linear_model import LogisticRegression

    if len(set(train_y)) < 2:
        raise ValueError(f"linear_probe: the training images hold {len(set(train_y))} class(es); need 2 or more")
    classifier = LogisticRegression(C=c, max_iter=max_iter)
    classifier.fit(train_x.float().numpy(), np.asarray(train_y))
    probs = torch.from_numpy(classifier.predict_proba(test_x.float().numpy()))
    # Columns follow classifier.classes_; a test class it never saw gets a column of -inf (never ranked).
    classes = int(max(max(train_y), max(test_y))) + 1
    scores = torch.full((len(test_y), classes), float("-inf"), dtype=probs.dtype)
    scores[:, torch.from_numpy(classifier.classes_).long()] = probs
    ks = (1, 5) if classes > 5 else (1,)
    return {**topk_accuracy(scores, torch.tensor(test_y), ks), "train_images": float(len(train_y)),
            "test_images": float(len(test_y))}
