"""Evaluation metrics beyond the paper's losses (docs/paper.md §Choices where the paper is silent).

- `caption_scores`: BLEU-4 and CIDEr with pycocoevalcap's own scorers. Their usual front end, the
  Stanford PTB tokenizer, needs Java; `ptb_tokenize` stands in for it in Python.
- `retrieval_recall`: image->text and text->image recall@K, in percent, with several captions per image.
- `coca_loss_consistency`: does a (CoCa loss, contrastive loss, perplexity) triple satisfy
  CoCa = lambda_con * L_con + lambda_cap * ln(perplexity)?
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# ------------------------------------------------------------------------------------------------
# Caption scores
# ------------------------------------------------------------------------------------------------

# The tokens pycocoevalcap's PTBTokenizer drops after tokenising (its PUNCTUATIONS), plus what the
# PTB tokenizer turns into one of them: brackets become -LRB-/-RRB-/-LCB-/-RCB-, double quotes `` or ''.
PTB_DROPPED = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                         ".", "?", "!", ",", ":", "-", "--", "...", ";",
                         "(", ")", "[", "]", "{", "}", '"', "-lrb-", "-rrb-", "-lcb-", "-rcb-"])

_CONTRACTION = re.compile(r"(?<=[^\W_])(n't|'(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # contraction suffixes split off by the rule above ("do n't", "dog 's")
    r"|\d+(?:[.,:]\d+)+"  # numbers with inner separators: 3.5, 1,000, 10:30
    r"|(?:[^\W\d_]\.){2,}"  # dotted abbreviations: u.s., a.m.
    r"|[^\W_]+(?:[-'/&][^\W_]+)*"  # words, with inner hyphens, apostrophes, slashes: t-shirt, o'clock
    r"|\.\.\.|--|``|''"  # multi-character punctuation
    r"|[^\w\s]|_",  # any other symbol, one character each
)


def ptb_tokenize(caption: str) -> str:
    """A Python stand-in for pycocoevalcap's PTBTokenizer (Stanford PTBTokenizer, `-lowerCase`, then its
    punctuation removed): lowercase; split off punctuation and the clitics n't 's 're 've 'll 'd 'm;
    keep inner hyphens, apostrophes and slashes of words, separators inside numbers and dotted
    abbreviations (u.s.); drop the punctuation the COCO evaluation drops (. , ? ! : ; - -- ... quotes,
    brackets). Returns the tokens joined by single spaces, as pycocoevalcap's scorers expect.

    >>> ptb_tokenize("A man's T-shirt, (red)... isn't it?")
    "a man 's t-shirt red is n't it"
    """
    text = caption.replace("\n", " ").lower()
    text = _CONTRACTION.sub(r" \1", text)
    return " ".join(t for t in _TOKEN.findall(text) if t not in PTB_DROPPED)


def caption_scores(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr (CIDEr-D as pycocoevalcap computes it: n = 1..4, sigma 6) of one predicted
    caption per image against that image's reference captions. Scores are fractions as pycocoevalcap
    returns them (BLEU-4 in [0, 1]; CIDEr in [0, 10], about 1 for good COCO captions).

    Every image with a prediction must have at least one reference; images with references but no
    prediction are ignored (score a subset by passing a subset of predictions).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if not predictions:
        raise ValueError("caption_scores: no predictions")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise ValueError(f"caption_scores: {len(missing)} predicted images have no reference caption, e.g. {missing[:3]}")
    res = {k: [ptb_tokenize(v)] for k, v in predictions.items()}
    gts = {k: [ptb_tokenize(r) for r in references[k]] for k in predictions}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its statistics
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


# ------------------------------------------------------------------------------------------------
# Retrieval
# ------------------------------------------------------------------------------------------------


def retrieval_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_image: torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10), normalize: bool = True, chunk: int = 1024) -> dict[str, float]:
    """Image<->text retrieval recall@K, in percent (0-100), over a whole validation set.

    image_embeds [N_img, D], text_embeds [N_txt, D]; text_to_image [N_txt] (long) gives each caption's
    image index. Similarity is the dot product (cosine when `normalize`, the default, as in CoCa).
    - image->text: a hit at K when ANY of the image's captions is among the K best captions;
    - text->image: a hit at K when the caption's image is among the K best images.
    Ties count against the model: a wrong candidate scoring exactly as much as the best right one is
    ranked ahead of it. So the result does not depend on the order of images or captions, and a
    collapsed model (all embeddings equal) gets no credit. Returns `i2t_r{K}` and `t2i_r{K}` for each K.
    """
    import torch
    import torch.nn.functional as F

    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"retrieval_recall: embeddings must be [N_img, D] and [N_txt, D], got "
                         f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    n_img, n_txt = image_embeds.shape[0], text_embeds.shape[0]
    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=image_embeds.device).reshape(-1)
    if t2i.numel() != n_txt:
        raise ValueError(f"retrieval_recall: text_to_image has {t2i.numel()} entries for {n_txt} captions")
    if n_txt and (t2i.min() < 0 or t2i.max() >= n_img):
        raise ValueError(f"retrieval_recall: text_to_image holds indices outside [0, {n_img})")
    captions_per_image = torch.bincount(t2i, minlength=n_img)
    if n_img == 0 or (captions_per_image == 0).any():
        raise ValueError(f"retrieval_recall: every image needs at least one caption; "
                         f"{int((captions_per_image == 0).sum())} of {n_img} have none")
    if any(k < 1 for k in ks):
        raise ValueError(f"retrieval_recall: ks must be >= 1, got {tuple(ks)}")
    img, txt = image_embeds.float(), text_embeds.float()
    if normalize:
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)

    # Rank of the best right answer = number of wrong candidates scoring >= it (0 = first).
    i2t_rank = torch.empty(n_img, dtype=torch.long)
    for s in range(0, n_img, chunk):
        scores = img[s:s + chunk] @ txt.T  # [c, N_txt]
        right = t2i.unsqueeze(0) == torch.arange(s, s + scores.shape[0], device=t2i.device).unsqueeze(1)
        best = scores.masked_fill(~right, -math.inf).amax(dim=1, keepdim=True)
        i2t_rank[s:s + chunk] = ((scores >= best) & ~right).sum(dim=1).cpu()
    t2i_rank = torch.empty(n_txt, dtype=torch.long)
    for s in range(0, n_txt, chunk):
        scores = txt[s:s + chunk] @ img.T  # [c, N_img]
        target = t2i[s:s + chunk].unsqueeze(1)
        mine = scores.gather(1, target)
        t2i_rank[s:s + chunk] = ((scores >= mine).sum(dim=1) - 1).cpu()  # minus the right image itself

    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * (i2t_rank < k).float().mean().item()
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * (t2i_rank < k).float().mean().item()
    return out


# ------------------------------------------------------------------------------------------------
# CoCa-loss consistency
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Consistency:
    """CoCa = lambda_con * L_con + lambda_cap * ln(perplexity), checked: residual = CoCa - that sum."""

    predicted: float
    residual: float
    tolerance: float
    ok: bool

    def __bool__(self) -> bool:
        return self.ok


def rounding_tolerance(perplexity: float, lambda_con: float, lambda_cap: float, decimals: int = 4) -> float:
    """Largest |residual| that rounding CoCa loss, contrastive loss and perplexity to `decimals` places
    can produce: each is off by at most h = 0.5e-decimals, and ln(p) moves by at most h / p, so
    |residual| <= h * (1 + lambda_con + lambda_cap / perplexity)."""
    h = 0.5 * 10.0 ** -decimals
    return h * (1.0 + lambda_con + lambda_cap / perplexity)


def coca_loss_consistency(coca: float, contrastive: float, perplexity: float, lambda_con: float,
                          lambda_cap: float, tol: float | None = None, decimals: int = 4) -> Consistency:
    """Check CoCa = lambda_con * contrastive + lambda_cap * ln(perplexity) within `tol`; tol None means the
    tolerance that rounding every value to `decimals` places implies (`rounding_tolerance`). For values
    logged at full precision pass a small tol (e.g. 1e-6 * coca)."""
    if perplexity <= 0:
        raise ValueError(f"coca_loss_consistency: perplexity must be > 0, got {perplexity}")
    predicted = lambda_con * contrastive + lambda_cap * math.log(perplexity)
    residual = coca - predicted
    if tol is None:
        tol = rounding_tolerance(perplexity, lambda_con, lambda_cap, decimals)
    return Consistency(predicted=predicted, residual=residual, tolerance=tol, ok=abs(residual) <= tol)
